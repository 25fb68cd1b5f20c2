"""Accounting for a data run: per source, per stage and reason, per language; JSON, Markdown and a chart."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from data.stages import Record

# Annotation columns that count edits made inside kept text; their totals go in the report.
EDIT_COLUMNS = ("ocr_lines_removed", "asr_segments_dropped", "asr_tags_removed", "asr_fillers_removed",
                "asr_loop_words_removed")


def reason_group(reason: str) -> str:
    """``duplicate_of:<id>`` names one record; the report counts them together."""
    return "duplicate" if reason.startswith("duplicate_of:") else reason


class Tally:
    def __init__(self, stages: list[str]):
        self.stages = ["read", *stages]
        self.sources: dict[str, Counter] = defaultdict(Counter)
        self.rejected: dict[str, Counter] = defaultdict(Counter)
        self.languages: dict[str, Counter] = defaultdict(Counter)
        self.pii: Counter = Counter()
        self.edits: Counter = Counter()

    def add(self, source: str, n_input: int, kept: list[Record], rejected: list[Record]) -> None:
        if n_input != len(kept) + len(rejected):
            raise AssertionError(f"source {source}: {n_input} records in, {len(kept)} kept + {len(rejected)} rejected")
        self.sources[source].update(input=n_input, kept=len(kept), rejected=len(rejected))
        for record in rejected:
            self.rejected[record["stage"]][reason_group(record["reason"])] += 1
            self.languages[record["lang"] or "unknown"]["rejected"] += 1
        for record in kept:
            language = self.languages[record["lang"] or "unknown"]
            language.update(kept=1, characters=len(record["text"]), words=len(record["text"].split()))
            self.pii.update({k[4:]: record[k] for k in record if k.startswith("pii_") and record[k]})
            self.edits.update({k: record[k] for k in EDIT_COLUMNS if record.get(k)})

    def report(self) -> dict[str, Any]:
        totals = Counter()
        for counts in self.sources.values():
            totals.update(counts)
        return {
            "totals": {k: totals[k] for k in ("input", "kept", "rejected")},
            "sources": {name: {k: c[k] for k in ("input", "kept", "rejected")} for name, c in self.sources.items()},
            "rejected": {stage: dict(self.rejected[stage].most_common()) for stage in self.stages if self.rejected[stage]},
            "languages": {
                lang: {k: c[k] for k in ("kept", "rejected", "words", "characters")}
                for lang, c in sorted(self.languages.items())
            },
            "pii_redacted": dict(self.pii),
            "edits": dict(self.edits),
        }


def to_markdown(report: dict[str, Any]) -> str:
    t = report["totals"]
    lines = [
        "# Data preparation report",
        "",
        f"{t['input']} records in: {t['kept']} kept + {t['rejected']} rejected.",
        "",
        "## Sources",
        "",
        "| source | input | kept | rejected |",
        "|---|---:|---:|---:|",
        *(f"| {name} | {c['input']} | {c['kept']} | {c['rejected']} |" for name, c in report["sources"].items()),
        "",
        "## Rejected, by stage and reason",
        "",
        "| stage | reason | records |",
        "|---|---|---:|",
        *(f"| {stage} | {reason} | {n} |" for stage, reasons in report["rejected"].items() for reason, n in reasons.items()),
        "",
        "## Languages",
        "",
        "| language | kept | rejected | words kept | characters kept |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {lang} | {c['kept']} | {c['rejected']} | {c['words']} | {c['characters']} |"
            for lang, c in report["languages"].items()
        ),
        "",
        "## Personal identifiers replaced",
        "",
        "| type | count |",
        "|---|---:|",
        *(f"| {kind} | {n} |" for kind, n in sorted(report["pii_redacted"].items())),
        "",
        "## Edits inside kept records",
        "",
        "| edit | count |",
        "|---|---:|",
        *(f"| {name} | {n} |" for name, n in sorted(report["edits"].items())),
        "",
    ]
    return "\n".join(lines)


def to_png(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reasons = [(f"{stage}: {reason}", n) for stage, rs in report["rejected"].items() for reason, n in rs.items()]
    langs = [(lang, c["kept"]) for lang, c in report["languages"].items()]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, max(3, 0.35 * max(len(reasons), len(langs), 1) + 1.5)))
    left.barh([r for r, _ in reasons] or ["none"], [n for _, n in reasons] or [0], color="#c0504d")
    left.invert_yaxis()
    left.set_title("rejected records by stage and reason")
    right.barh([lang for lang, _ in langs] or ["none"], [n for _, n in langs] or [0], color="#4f81bd")
    right.invert_yaxis()
    right.set_title("kept records by language")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(report: dict[str, Any], directory: Path) -> None:
    (directory / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    (directory / "report.md").write_text(to_markdown(report))
    to_png(report, directory / "report.png")

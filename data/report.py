"""Accounting for a data run: per source, per stage and reason, per language; JSON, Markdown and a chart."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from indictune.data.stages import Record

# Annotation columns that count edits made inside kept text; their totals go in the report.
EDIT_COLUMNS = (
    "ocr_lines_removed",
    "ocr_confusions_repaired",
    "asr_segments_dropped",
    "asr_tags_removed",
    "asr_fillers_removed",
    "asr_loop_words_removed",
    "repeated_lines_removed",
)
# Boolean annotations whose kept counts the report gives.
FLAG_COLUMNS = ("romanized", "code_mixed")


class UnaccountedRecords(AssertionError):
    """Input records that ended up neither kept nor rejected: a bug in a stage or the pipeline, not bad input."""


class Tally:
    """Counts as records come in, are rejected and are kept; ``report`` checks that every input is accounted for."""

    def __init__(self, stages: list[str]):
        self.stages = ["read", *stages]
        self.sources: dict[str, Counter] = defaultdict(Counter)
        self.rejected: dict[str, Counter] = defaultdict(Counter)
        self.languages: dict[str, Counter] = defaultdict(Counter)
        self.characters: dict[str, Counter] = defaultdict(Counter)  # language -> kind -> characters kept
        self.pii: Counter = Counter()
        self.edits: Counter = Counter()
        self.flags: Counter = Counter()

    def count_input(self, source: str, n: int) -> None:
        self.sources[source]["input"] += n

    def reject(self, records: list[Record]) -> None:
        for record in records:
            self.sources[record["source"]]["rejected"] += 1
            self.rejected[record["stage"]][record["reason"]] += 1
            self.languages[record["lang"] or "unknown"]["rejected"] += 1

    def keep(self, records: list[Record]) -> None:
        for record in records:
            self.sources[record["source"]]["kept"] += 1
            language = self.languages[record["lang"] or "unknown"]
            language.update(kept=1, characters=len(record["text"]), words=len(record["text"].split()))
            self.characters[record["lang"] or "unknown"][record["kind"]] += len(record["text"])
            self.pii.update({k[4:]: record[k] for k in record if k.startswith("pii_") and record[k]})
            self.edits.update({k: record[k] for k in EDIT_COLUMNS if record.get(k)})
            self.flags.update(k for k in FLAG_COLUMNS if record.get(k))

    def merge(self, other: Tally) -> None:
        """Add the counts of `other` (a part of the run counted elsewhere, as a Ray task does) to these."""
        for mine, theirs in (
            (self.sources, other.sources),
            (self.rejected, other.rejected),
            (self.languages, other.languages),
            (self.characters, other.characters),
        ):
            for key, counts in theirs.items():
                mine[key].update(counts)
        self.pii.update(other.pii)
        self.edits.update(other.edits)
        self.flags.update(other.flags)

    def report(self) -> dict[str, Any]:
        for source, c in self.sources.items():
            if c["input"] != c["kept"] + c["rejected"]:
                raise UnaccountedRecords(
                    f"source {source}: {c['input']} records in, {c['kept']} kept + {c['rejected']} rejected"
                )
        totals = Counter()
        for counts in self.sources.values():
            totals.update(counts)
        return {
            "totals": {k: totals[k] for k in ("input", "kept", "rejected")},
            "sources": {name: {k: c[k] for k in ("input", "kept", "rejected")} for name, c in self.sources.items()},
            "rejected": {
                stage: dict(sorted(self.rejected[stage].items(), key=lambda kv: (-kv[1], kv[0])))
                for stage in self.stages
                if self.rejected[stage]
            },
            "languages": {
                lang: {k: c[k] for k in ("kept", "rejected", "words", "characters")}
                for lang, c in sorted(self.languages.items())
            },
            "characters_by_kind": {lang: dict(sorted(c.items())) for lang, c in sorted(self.characters.items())},
            "pii_redacted": dict(sorted(self.pii.items())),
            "edits": dict(sorted(self.edits.items())),
            "flags": {k: self.flags[k] for k in FLAG_COLUMNS},
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
        *(
            f"| {stage} | {reason} | {n} |"
            for stage, reasons in report["rejected"].items()
            for reason, n in reasons.items()
        ),
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
        "## Characters kept, by language and kind",
        "",
        "| language | web | ocr | asr |",
        "|---|---:|---:|---:|",
        *(
            f"| {lang} | {c.get('web', 0)} | {c.get('ocr', 0)} | {c.get('asr', 0)} |"
            for lang, c in report["characters_by_kind"].items()
        ),
        "",
        "## Personal identifiers replaced",
        "",
        "| type | count |",
        "|---|---:|",
        *(f"| {kind} | {n} |" for kind, n in sorted(report["pii_redacted"].items())),
        "",
        "## Flags on kept records",
        "",
        "| flag | records |",
        "|---|---:|",
        *(f"| {name} | {n} |" for name, n in report["flags"].items()),
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
    by_kind = report["characters_by_kind"]
    langs = list(by_kind) or ["none"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, max(3, 0.35 * max(len(reasons), len(langs), 1) + 1.5)))
    left.barh([r for r, _ in reasons] or ["none"], [n for _, n in reasons] or [0], color="#c0504d")
    left.invert_yaxis()
    left.set_title("rejected records by stage and reason")
    start = [0] * len(langs)
    for kind, color in (("web", "#4f81bd"), ("ocr", "#9bbb59"), ("asr", "#f79646")):
        sizes = [by_kind.get(lang, {}).get(kind, 0) for lang in langs]
        right.barh(langs, sizes, left=start, color=color, label=kind)
        start = [a + b for a, b in zip(start, sizes)]
    right.invert_yaxis()
    right.legend()
    right.set_title("characters kept by language and kind")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(report: dict[str, Any], directory: Path) -> None:
    (directory / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    (directory / "report.md").write_text(to_markdown(report))
    to_png(report, directory / "report.png")

"""Render the leaderboard store: ``leaderboard.md``, a self-contained ``leaderboard.html`` and PNG charts.

One table per task and metric: a row per model (its newest run), a column per language, and for
every model evaluated against a base its delta with the 95% paired bootstrap interval (and McNemar's
p for right/wrong outcomes). Then, per candidate, a heat map of its changes vs its base: task and
metric by language, green where it is better beyond the interval, red where worse. A candidate whose
English score got worse beyond its interval is flagged: adapting to Indic languages must not cost
the English it started with. Raw and byte-normalised accuracies are separate metrics, never mixed.
A score whose items moved beyond the tolerance when a sample was rescored one at a time (batch-dependent
numerics) carries ‡, with the largest move and the tolerance under its table.
"""

from __future__ import annotations

import base64
import html
import io
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from indictune.core.io import atomic_write_text
from indictune.core.recipe import field
from indictune.eval import store

METRIC_NAMES = {
    "bits_per_character": "bits per character",
    "bits_per_byte": "bits per byte",
    "tokens_per_word": "tokens per word",
    "accuracy": "accuracy (raw log-likelihood), %",
    "accuracy_bytes": "accuracy (log-likelihood per byte), %",
    "chrf++": "chrF++",
    "exact_match": "exact match, %",
    "f1": "token F1, %",
}
LOWER_IS_BETTER = {"bits_per_character", "bits_per_byte", "tokens_per_word"}
# Counted from the tokenizer alone: no batch can move them, so a batch-dependent entry leaves them unmarked.
TOKENIZER_METRICS = {"tokens_per_word"}
BATCH_MARK = "‡"
BATCH_NOTE = (
    f"{BATCH_MARK} Depends on the batch: a sample of the items, rescored one at a time, moved beyond the tolerance "
    "(in nats per byte for texts, in log-likelihood for choices, 1 where a generated answer changed), so the score "
    "is not to be trusted blindly."
)


class LeaderboardError(ValueError):
    """Nothing to render, with what to run first."""


def improvement(score: dict) -> tuple[float | None, float | None]:
    """The interval of the change as 'better' (positive) whatever the metric's direction."""
    if score.get("delta_low") is None:
        return None, None
    low, high = score["delta_low"], score["delta_high"]
    return (-high, -low) if score["metric"] in LOWER_IS_BETTER else (low, high)


@dataclass
class LeaderboardConfig:
    db: str = field("runs/leaderboard.sqlite", help="the store evaluations write to")
    out: str = field("runs/leaderboard", help="folder for leaderboard.md, leaderboard.html and the charts")
    metrics: list[str] = field(
        default_factory=lambda: [
            "bits_per_character",
            "tokens_per_word",
            "accuracy",
            "accuracy_bytes",
            "chrf++",
            "exact_match",
            "f1",
        ],
        help="tables to show, in this order",
    )


def batch_dependent(run: dict) -> dict[tuple[str, str], dict]:
    """The run's entries whose scores moved beyond the tolerance when rescored alone, by (task, lang)."""
    return {(entry["task"], entry["lang"]): entry for entry in run.get("batch_dependent") or [] if entry["flagged"]}


def _batch_entry(flagged: dict[tuple[str, str], dict], task: str, metric: str, lang: str) -> dict | None:
    return None if metric in TOKENIZER_METRICS else flagged.get((task, lang))


def tables(runs: list[dict], metrics: list[str]) -> list[dict]:
    """[{task, metric, langs, rows: [{label, base_label, cells: {lang: score row}, batch_dependent: {lang: entry}}]}]
    for rendering."""
    grouped: dict[tuple[str, str], dict[str, dict[str, dict]]] = defaultdict(lambda: defaultdict(dict))
    for run in runs:
        for score in run["scores"]:
            if score["metric"] in metrics:
                grouped[score["task"], score["metric"]][run["label"]][score["lang"]] = score
    result = []
    for (task, metric), by_label in sorted(grouped.items(), key=lambda kv: (kv[0][0], metrics.index(kv[0][1]))):
        langs = sorted({lang for cells in by_label.values() for lang in cells}, key=lambda code: (code == "en", code))
        rows = [
            {
                "label": run["label"],
                "base_label": run["base_label"],
                "cells": by_label[run["label"]],
                "base_mismatch": run.get("base_mismatch"),
                "batch_dependent": {
                    lang: entry
                    for lang in by_label[run["label"]]
                    if (entry := _batch_entry(batch_dependent(run), task, metric, lang))
                },
            }
            for run in runs
            if run["label"] in by_label
        ]
        origins = {score.get("origin") for cells in by_label.values() for score in cells.values()} - {None}
        result.append(
            {"task": task, "metric": metric, "langs": langs, "rows": rows, "origin": ", ".join(sorted(origins))}
        )
    return result


def title(table: dict) -> str:
    direction = "lower is better" if table["metric"] in LOWER_IS_BETTER else "higher is better"
    data = f"; {table['origin']} data" if table.get("origin") else ""
    return f"{table['task']}: {METRIC_NAMES.get(table['metric'], table['metric'])} ({direction}{data})"


def english_regressed(row: dict) -> bool:
    english = row["cells"].get("en")
    if not english:
        return False
    english = {"metric": english.get("metric", "bits_per_character"), **english}
    _, better_high = improvement(english)
    return better_high is not None and better_high < 0


def _delta_text(score: dict) -> str:
    """The change vs the base with its interval and p, then the items behind the score."""
    parts = []
    if score.get("delta") is not None:
        parts.append(f"{score['delta']:+.3f}")
        if score.get("delta_low") is not None:
            parts.append(f"[{score['delta_low']:+.3f}, {score['delta_high']:+.3f}]")
        if score.get("p_value") is not None:
            parts.append(f"p={score['p_value']:.2g}")
    if score.get("n") is not None:
        parts.append(f"n={score['n']}")
    return " ".join(parts)


def _cell_text(score: dict | None) -> str:
    if score is None:
        return "–"
    detail = _delta_text(score)
    return f"{score['value']:.3f}" + (f" ({detail})" if detail else "")


def _batch_figures(entry: dict) -> str:
    return (
        f"largest move {entry['largest_move']:.3g} (tolerance {entry['tolerance']:.3g}) over "
        f"{len(entry['items'])} items rescored alone"
    )


def _batch_footnotes(label: str, entries: list[dict]) -> list[str]:
    """One line per flagged (task, lang) of the run, however many of the table's cells it marks."""
    unique = {(entry["task"], entry["lang"]): entry for entry in entries}
    return [f"{BATCH_MARK} {label}, {task} {lang}: {_batch_figures(entry)}" for (task, lang), entry in unique.items()]


def _table_footnotes(table: dict) -> list[str]:
    return [
        line for row in table["rows"] for line in _batch_footnotes(row["label"], list(row["batch_dependent"].values()))
    ]


def _change_footnotes(change: dict) -> list[str]:
    return _batch_footnotes(change["label"], list(change["batch_dependent"].values()))


def _html_mark(entry: dict | None) -> str:
    if entry is None:
        return ""
    tip = f"depends on the batch: {_batch_figures(entry)}"
    return f" <span class='flag' title='{html.escape(tip)}'>{BATCH_MARK}</span>"


def _html_footnotes(footnotes: list[str]) -> str:
    if not footnotes:
        return ""
    return f"<p><small>{'<br>'.join(html.escape(line) for line in [BATCH_NOTE, *footnotes])}</small></p>"


def _markdown_footnotes(footnotes: list[str]) -> list[str]:
    return [BATCH_NOTE, "", *(f"- {line}" for line in footnotes), ""] if footnotes else []


def _flags(run: dict) -> str:
    return " ⚠ base mismatch" if run.get("base_mismatch") else ""


def _entry_name(entry: dict) -> str:
    return f"{entry['task']} {entry['lang']}" + (f" ({entry['shots']} shots)" if entry.get("shots") else "")


def coverage(run: dict) -> tuple[list[str], list[str]]:
    """What a run scored (task: language (items), ...) and what it skipped, with why."""
    items: dict[str, dict[str, int]] = defaultdict(dict)
    for score in run["scores"]:  # the first metric of a task counts its items (chunks, questions)
        items[score["task"]].setdefault(score["lang"], score.get("n"))
    scored = [f"{task}: " + ", ".join(f"{lang} ({n})" for lang, n in langs.items()) for task, langs in items.items()]
    return scored, [f"{_entry_name(entry)}: {_first_sentence(entry['reason'])}" for entry in run.get("skipped") or []]


def _first_sentence(reason: str) -> str:
    """What went wrong, without the instructions that follow it (results.json keeps the whole message)."""
    return reason.split(". ", 1)[0]


def candidates(runs: list[dict]) -> list[dict]:
    """Runs compared with a base, each with {(task, metric): {lang: score}} of its changes and
    {(task, metric, lang): entry} of the changes that depend on the batch."""
    result = []
    for run in runs:
        if not run.get("base_label"):
            continue
        grid: dict[tuple[str, str], dict[str, dict]] = defaultdict(dict)
        for score in run["scores"]:
            if score.get("delta") is not None:
                grid[score["task"], score["metric"]][score["lang"]] = score
        langs = sorted({lang for cells in grid.values() for lang in cells}, key=lambda code: (code == "en", code))
        # Only changes with an interval can show a regression beyond it.
        controls = [
            f"{task} {metric} (n={cells['en'].get('n')})"
            for (task, metric), cells in sorted(grid.items())
            if cells.get("en", {}).get("delta_low") is not None
        ]
        skipped_controls = [
            f"{_entry_name(e)}: {_first_sentence(e['reason'])}" for e in run.get("skipped") or [] if e["lang"] == "en"
        ]
        result.append(
            {
                "label": run["label"],
                "base_label": run["base_label"],
                "grid": dict(sorted(grid.items())),
                "langs": langs,
                "english_regressed": english_regressed_anywhere(grid),
                "english_verdict": english_verdict(grid, controls, skipped_controls),
                "base_mismatch": run.get("base_mismatch"),
                "batch_dependent": {
                    (task, metric, lang): entry
                    for (task, metric), cells in grid.items()
                    for lang in cells
                    if (entry := _batch_entry(batch_dependent(run), task, metric, lang))
                },
            }
        )
    return result


def english_verdict(grid: dict, controls: list[str], skipped_controls: list[str]) -> tuple[bool, str]:
    """(whether to warn, the English-control finding with the rows it rests on and the controls not scored)."""
    skipped = f" Not scored: {'; '.join(skipped_controls)}." if skipped_controls else ""
    if not controls:
        return True, f"No English control was scored, so an English regression cannot be ruled out.{skipped}"
    regressed = english_regressed_anywhere(grid)
    finding = (
        "English regressed beyond the interval in: " + ", ".join(regressed)
        if regressed
        else "No English regression beyond the interval"
    )
    return bool(regressed), f"{finding}; English control rows: {', '.join(controls)}.{skipped}"


def english_regressed_anywhere(grid: dict) -> list[str]:
    """The (task, metric) rows where English got worse beyond the interval."""
    return [
        f"{task} {metric}"
        for (task, metric), cells in grid.items()
        if english_regressed({"cells": {"en": cells["en"]}} if "en" in cells else {"cells": {}})
    ]


def _cell_style(score: dict | None) -> str:
    """Green where the candidate is better beyond the interval, red where worse, pale where unsure."""
    if not score or score.get("delta") is None:
        return ""
    low, high = improvement(score)
    if low is not None and low > 0:
        return "background:#d4f4d4"
    if high is not None and high < 0:
        return "background:#f8d0d0"
    return "background:#f6f6dc"


def to_markdown(all_tables: list[dict], changes: list[dict], runs: list[dict]) -> str:
    lines = [
        "# Leaderboard",
        "",
        "In brackets: change vs the base model, its 95% paired bootstrap interval, McNemar's p "
        "where outcomes are right or wrong, and n, the items behind the score. Bits and tokens per word: lower is "
        "better; the rest: higher.",
        "",
        "## Runs",
        "",
        "| model | base | backend | scored (items) | skipped |",
        "|---|---|---|---|---|",
    ]
    for run in runs:
        scored, skipped = coverage(run)
        lines.append(
            f"| {run['label']}{_flags(run)} | {run['base_label'] or '–'} | {run['backend']} | "
            f"{'; '.join(scored) or '–'} | {'; '.join(skipped) or '–'} |"
        )
    lines.append("")
    for run in runs:
        if run.get("base_mismatch"):
            lines += [
                f"⚠ {run['label']}: scored on another base than it was trained on, as allowed: {run['base_mismatch']}",
                "",
            ]
    for table in all_tables:
        lines += [f"## {title(table)}", ""]
        lines.append("| model | base | " + " | ".join(table["langs"]) + " |")
        lines.append("|---|---|" + "---:|" * len(table["langs"]))
        for row in table["rows"]:
            flag = (" ⚠ English regressed" if english_regressed(row) else "") + _flags(row)
            cells = " | ".join(
                _cell_text(row["cells"].get(lang)) + (f" {BATCH_MARK}" if lang in row["batch_dependent"] else "")
                for lang in table["langs"]
            )
            lines.append(f"| {row['label']}{flag} | {row['base_label'] or '–'} | {cells} |")
        lines.append("")
        lines += _markdown_footnotes(_table_footnotes(table))
    for change in changes:
        lines += [f"## Changes of {change['label']} vs {change['base_label']}", ""]
        warn, verdict = change["english_verdict"]
        lines += [("⚠ " if warn else "") + verdict, ""]
        lines.append("| task | metric | " + " | ".join(change["langs"]) + " |")
        lines.append("|---|---|" + "---:|" * len(change["langs"]))
        for (task, metric), cells in change["grid"].items():
            texts = []
            for lang in change["langs"]:
                score = cells.get(lang)
                if score is None:
                    texts.append("–")
                    continue
                low, high = improvement(score)
                mark = "▲ " if low is not None and low > 0 else "▼ " if high is not None and high < 0 else ""
                batch = f" {BATCH_MARK}" if (task, metric, lang) in change["batch_dependent"] else ""
                texts.append(mark + _delta_text(score) + batch)
            lines.append(f"| {task} | {metric} | " + " | ".join(texts) + " |")
        lines.append("")
        lines += _markdown_footnotes(_change_footnotes(change))
    return "\n".join(lines)


def chart_png(table: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    langs, rows = table["langs"], table["rows"]
    width = 0.8 / max(len(rows), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(langs) + 2), 4))
    for i, row in enumerate(rows):
        values = [row["cells"].get(lang, {}).get("value", float("nan")) for lang in langs]
        ax.bar([x + i * width for x in range(len(langs))], values, width, label=row["label"])
    ax.set_xticks([x + width * (len(rows) - 1) / 2 for x in range(len(langs))], langs)
    direction = "lower" if table["metric"] in LOWER_IS_BETTER else "higher"
    ax.set_ylabel(f"{METRIC_NAMES.get(table['metric'], table['metric'])} ({direction} is better)")
    ax.set_title(table["task"])
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def heatmap_png(change: dict) -> bytes:
    """Changes vs base as colours: the interval's nearer end to zero, in units of 'better', per cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = list(change["grid"])
    values = np.full((len(rows), len(change["langs"])), np.nan)
    for i, key in enumerate(rows):
        for j, lang in enumerate(change["langs"]):
            score = change["grid"][key].get(lang)
            if score is None or score.get("delta") is None:
                continue
            low, high = improvement(score)
            better = -score["delta"] if score["metric"] in LOWER_IS_BETTER else score["delta"]
            scale = max(abs(better), 1e-9)
            # +1 surely better, -1 surely worse, in between: the interval crosses zero.
            values[i, j] = (
                1.0 if low is not None and low > 0 else -1.0 if high is not None and high < 0 else better / scale * 0.3
            )
    fig, ax = plt.subplots(figsize=(max(5, 0.8 * len(change["langs"]) + 3), max(2.5, 0.4 * len(rows) + 1.5)))
    ax.imshow(values, cmap="RdYlGn", vmin=-1, vmax=1, aspect="auto")
    for i, (task, metric) in enumerate(rows):
        for j, lang in enumerate(change["langs"]):
            if (task, metric, lang) in change["batch_dependent"]:
                ax.text(j, i, BATCH_MARK, ha="center", va="center", fontsize=12, fontweight="bold")
    ax.set_xticks(range(len(change["langs"])), change["langs"])
    ax.set_yticks(range(len(rows)), [f"{t} {m}" for t, m in rows], fontsize=8)
    batch = f"\n{BATCH_MARK}: depends on the batch" if change["batch_dependent"] else ""
    ax.set_title(f"{change['label']} vs base: green better, red worse (95% interval){batch}", fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f3f3f3;cursor:pointer}
td:first-child,td:nth-child(2){text-align:left}.flag{color:#b00;font-weight:bold}small{color:#555}
"""
_SORT = """
document.querySelectorAll('th').forEach(th=>th.onclick=()=>{const t=th.closest('table'),i=[...th.parentNode.children]
.indexOf(th),rows=[...t.tBodies[0].rows],asc=th.dataset.asc!=='1';rows.sort((a,b)=>{const x=a.cells[i].dataset.v,
y=b.cells[i].dataset.v;return (x===undefined||y===undefined)?0:(asc?x-y:y-x)});rows.forEach(r=>t.tBodies[0]
.appendChild(r));th.dataset.asc=asc?'1':'0'});
"""


def to_html(all_tables: list[dict], changes: list[dict], runs: list[dict]) -> str:
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>indictune leaderboard</title>"
        f"<style>{_STYLE}</style></head><body><h1>Leaderboard</h1>",
        "<p>Cells: score, change vs base with its 95% paired bootstrap interval (and McNemar's p for right/wrong "
        "outcomes), and n, the items behind the score; green: better beyond the interval, red: worse beyond it. "
        "Click a column to sort.</p>",
        "<h2>Runs</h2><table><thead><tr><th>model</th><th>base</th><th>backend</th><th>scored (items)</th>"
        "<th>skipped</th></tr></thead><tbody>",
    ]
    for run in runs:
        scored, skipped = coverage(run)
        mismatch = (
            f"<br><span class='flag'>base mismatch: {html.escape(run['base_mismatch'])}</span>"
            if run.get("base_mismatch")
            else ""
        )
        parts.append(
            f"<tr><td>{html.escape(run['label'])}{mismatch}</td><td>{html.escape(run['base_label'] or '–')}</td>"
            f"<td>{html.escape(run['backend'])}</td><td>{'<br>'.join(map(html.escape, scored)) or '–'}</td>"
            f"<td>{'<br>'.join(map(html.escape, skipped)) or '–'}</td></tr>"
        )
    parts.append("</tbody></table>")
    for change in changes:
        caption = f"Changes of {change['label']} vs {change['base_label']}"
        parts.append(f"<h2>{html.escape(caption)}</h2>")
        warn, verdict = change["english_verdict"]
        parts.append(f"<p{' class=flag' if warn else ''}>{html.escape(verdict)}</p>")
        parts.append(
            "<table><thead><tr><th>task</th><th>metric</th>"
            + "".join(f"<th>{html.escape(code)}</th>" for code in change["langs"])
            + "</tr></thead><tbody>"
        )
        for (task, metric), cells in change["grid"].items():
            parts.append(f"<tr><td>{html.escape(task)}</td><td>{html.escape(metric)}</td>")
            for lang in change["langs"]:
                score = cells.get(lang)
                if score is None:
                    parts.append("<td>–</td>")
                    continue
                mark = _html_mark(change["batch_dependent"].get((task, metric, lang)))
                parts.append(
                    f"<td data-v='{score['delta']}' style='{_cell_style(score)}'>{html.escape(_delta_text(score))}"
                    f"{mark}</td>"
                )
            parts.append("</tr>")
        parts.append("</tbody></table>")
        parts.append(_html_footnotes(_change_footnotes(change)))
        png = base64.b64encode(heatmap_png(change)).decode()
        parts.append(f"<img alt='{html.escape(caption)}' src='data:image/png;base64,{png}'>")
    for table in all_tables:
        heading = title(table)
        parts.append(f"<h2>{html.escape(heading)}</h2><table><thead><tr><th>model</th><th>base</th>")
        parts += [f"<th>{html.escape(lang)}</th>" for lang in table["langs"]]
        parts.append("</tr></thead><tbody>")
        for row in table["rows"]:
            flag = " <span class='flag'>English regressed</span>" if english_regressed(row) else ""
            flag += f" <span class='flag'>{html.escape(_flags(row).strip())}</span>" if _flags(row) else ""
            parts.append(
                f"<tr><td>{html.escape(row['label'])}{flag}</td><td>{html.escape(row['base_label'] or '–')}</td>"
            )
            for lang in table["langs"]:
                score = row["cells"].get(lang)
                if score is None:
                    parts.append("<td>–</td>")
                    continue
                sub = _delta_text(score)
                parts.append(
                    f"<td data-v='{score['value']}' style='{_cell_style(score)}'>{score['value']:.3f}"
                    f"{_html_mark(row['batch_dependent'].get(lang))}<br><small>{html.escape(sub)}</small></td>"
                )
            parts.append("</tr>")
        parts.append("</tbody></table>")
        parts.append(_html_footnotes(_table_footnotes(table)))
        png = base64.b64encode(chart_png(table)).decode()
        parts.append(f"<img alt='{html.escape(heading)}' src='data:image/png;base64,{png}'>")
    parts.append(f"<script>{_SORT}</script></body></html>")
    return "".join(parts)


def render(config: LeaderboardConfig) -> list[dict]:
    runs = store.latest_runs(config.db)
    if not runs:
        raise LeaderboardError(f"{config.db} holds no evaluation yet; run scripts/evaluate.py first")
    all_tables = tables(runs, config.metrics)
    changes = candidates(runs)
    out = Path(config.out)
    atomic_write_text(out / "leaderboard.md", to_markdown(all_tables, changes, runs))
    atomic_write_text(out / "leaderboard.html", to_html(all_tables, changes, runs))
    for table in all_tables:
        (out / f"{table['task']}-{table['metric']}.png").write_bytes(chart_png(table))
    for change in changes:
        (out / f"changes-{store.slug(change['label'])}.png").write_bytes(heatmap_png(change))
    return all_tables

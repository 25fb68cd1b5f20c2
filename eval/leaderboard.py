"""Render the leaderboard store: ``leaderboard.md``, a self-contained ``leaderboard.html`` and PNG charts.

One table per task and metric: a row per model (its newest run), a column per language, and for
every model evaluated against a base its delta with the 95% paired bootstrap interval. For every
metric here lower is better. A candidate whose English score got worse beyond its interval is
flagged: adapting to Indic languages must not cost the English it started with.
"""

from __future__ import annotations

import base64
import html
import io
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from data.io import atomic_write_text
from data.recipe import field
from eval import store

METRIC_NAMES = {
    "bits_per_character": "bits per character",
    "bits_per_byte": "bits per byte",
    "tokens_per_word": "tokens per word",
}


@dataclass
class LeaderboardConfig:
    db: str = field("runs/leaderboard.sqlite", help="the store evaluations write to")
    out: str = field("runs/leaderboard", help="folder for leaderboard.md, leaderboard.html and the charts")
    metrics: list[str] = field(default_factory=lambda: ["bits_per_character", "tokens_per_word"], help="tables to show")


def tables(runs: list[dict], metrics: list[str]) -> list[dict]:
    """[{task, metric, langs, rows: [{label, base_label, cells: {lang: score row}}]}] for rendering."""
    grouped: dict[tuple[str, str], dict[str, dict[str, dict]]] = defaultdict(lambda: defaultdict(dict))
    for run in runs:
        for score in run["scores"]:
            if score["metric"] in metrics:
                grouped[score["task"], score["metric"]][run["label"]][score["lang"]] = score
    result = []
    for (task, metric), by_label in sorted(grouped.items(), key=lambda kv: (kv[0][0], metrics.index(kv[0][1]))):
        langs = sorted({lang for cells in by_label.values() for lang in cells}, key=lambda l: (l == "en", l))
        rows = [
            {"label": run["label"], "base_label": run["base_label"], "cells": by_label[run["label"]]}
            for run in runs
            if run["label"] in by_label
        ]
        result.append({"task": task, "metric": metric, "langs": langs, "rows": rows})
    return result


def english_regressed(row: dict) -> bool:
    english = row["cells"].get("en")
    return bool(english and english.get("delta_low") is not None and english["delta_low"] > 0)


def _cell_text(score: dict | None) -> str:
    if score is None:
        return "–"
    text = f"{score['value']:.3f}"
    if score.get("delta") is not None:
        text += f" ({score['delta']:+.3f}"
        if score.get("delta_low") is not None:
            text += f" [{score['delta_low']:+.3f}, {score['delta_high']:+.3f}]"
        text += ")"
    return text


def to_markdown(all_tables: list[dict]) -> str:
    lines = ["# Leaderboard", "", "Lower is better. In brackets: change vs the base model and its 95% paired bootstrap interval.", ""]
    for table in all_tables:
        lines += [f"## {table['task']}: {METRIC_NAMES.get(table['metric'], table['metric'])}", ""]
        lines.append("| model | base | " + " | ".join(table["langs"]) + " |")
        lines.append("|---|---|" + "---:|" * len(table["langs"]))
        for row in table["rows"]:
            flag = " ⚠ English regressed" if english_regressed(row) else ""
            cells = " | ".join(_cell_text(row["cells"].get(lang)) for lang in table["langs"])
            lines.append(f"| {row['label']}{flag} | {row['base_label'] or '–'} | {cells} |")
        lines.append("")
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
    ax.set_ylabel(METRIC_NAMES.get(table["metric"], table["metric"]) + " (lower is better)")
    ax.set_title(table["task"])
    ax.legend(fontsize=8)
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


def _heat(delta: float | None, low: float | None, high: float | None) -> str:
    """Green where the candidate is surely better (interval below 0), red where surely worse."""
    if delta is None:
        return ""
    if high is not None and high < 0:
        return "background:#d4f4d4"
    if low is not None and low > 0:
        return "background:#f8d0d0"
    return "background:#f6f6dc"


def to_html(all_tables: list[dict]) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>indictune leaderboard</title>"
             f"<style>{_STYLE}</style></head><body><h1>Leaderboard</h1>",
             "<p>Lower is better. Cells: score, change vs base and its 95% paired bootstrap interval; "
             "green: better beyond the interval, red: worse beyond it. Click a column to sort.</p>"]
    for table in all_tables:
        title = f"{table['task']}: {METRIC_NAMES.get(table['metric'], table['metric'])}"
        parts.append(f"<h2>{html.escape(title)}</h2><table><thead><tr><th>model</th><th>base</th>")
        parts += [f"<th>{html.escape(lang)}</th>" for lang in table["langs"]]
        parts.append("</tr></thead><tbody>")
        for row in table["rows"]:
            flag = " <span class='flag'>English regressed</span>" if english_regressed(row) else ""
            parts.append(f"<tr><td>{html.escape(row['label'])}{flag}</td><td>{html.escape(row['base_label'] or '–')}</td>")
            for lang in table["langs"]:
                score = row["cells"].get(lang)
                if score is None:
                    parts.append("<td>–</td>")
                    continue
                style = _heat(score.get("delta"), score.get("delta_low"), score.get("delta_high"))
                sub = _cell_text(score)[len(f"{score['value']:.3f}"):]
                parts.append(f"<td data-v='{score['value']}' style='{style}'>{score['value']:.3f}"
                             f"<br><small>{html.escape(sub)}</small></td>")
            parts.append("</tr>")
        parts.append("</tbody></table>")
        png = base64.b64encode(chart_png(table)).decode()
        parts.append(f"<img alt='{html.escape(title)}' src='data:image/png;base64,{png}'>")
    parts.append(f"<script>{_SORT}</script></body></html>")
    return "".join(parts)


def render(config: LeaderboardConfig) -> list[dict]:
    runs = store.latest_runs(config.db)
    if not runs:
        raise SystemExit(f"error: {config.db} holds no evaluation yet; run scripts/evaluate.py first")
    all_tables = tables(runs, config.metrics)
    out = Path(config.out)
    atomic_write_text(out / "leaderboard.md", to_markdown(all_tables))
    atomic_write_text(out / "leaderboard.html", to_html(all_tables))
    for table in all_tables:
        (out / f"{table['task']}-{table['metric']}.png").write_bytes(chart_png(table))
    return all_tables

"""The leaderboard marks batch-dependent scores and shows each run's backend, from the store alone."""

import html
import sqlite3
from html.parser import HTMLParser

from indictune.eval import leaderboard, store

CANDIDATE = "cand <&> 'x'"  # characters the page must escape
FLAGGED = {"task": "heldout", "lang": "hi", "items": [0, 3, 7], "largest_move": 0.0123, "tolerance": 0.001}
FOOTNOTE = f"‡ {CANDIDATE}, heldout hi: largest move 0.0123 (tolerance 0.001) over 3 items rescored alone"


def _run(label: str, base_label: str | None = None) -> dict:
    return {"created": "2025-01-01T00:00:00", "label": label, "model": label, "base_label": base_label, "suite": "t"}


def _scores(offset: float, compared: bool) -> list[dict]:
    rows = []
    for task, metric, langs in (
        ("heldout", "bits_per_character", ("hi", "ta", "en")),
        ("heldout", "tokens_per_word", ("hi", "ta", "en")),  # the tokenizer's: no batch moves it
        ("copa", "accuracy", ("hi",)),  # another task in the flagged language
    ):
        for lang in langs:
            row = {"task": task, "lang": lang, "metric": metric, "value": 1.0 + offset, "n": 10}
            if compared:
                row.update(delta=offset, delta_low=offset - 0.5, delta_high=offset + 0.5, p_value=None)
            rows.append(row)
    return rows


def _write(db) -> None:
    store.add_run(db, _run("base"), _scores(0.0, compared=False))  # written as before the backend was recorded
    candidate = {
        **_run(CANDIDATE, "base"),
        "backend": "vllm",
        "batch_dependent": [
            {**FLAGGED, "flagged": True},
            {**FLAGGED, "lang": "ta", "flagged": False},  # checked and steady: no mark
        ],
    }
    store.add_run(db, candidate, _scores(0.1, compared=True))


class _Cells(HTMLParser):
    """Every table cell as (heading above its table, its row's first two cells, its column), with its text."""

    def __init__(self):
        super().__init__()
        self.cells: dict[tuple[str, tuple[str, str], str], str] = {}
        self.heading, self.columns, self.row, self.text, self.inside = "", [], [], "", None

    def handle_starttag(self, tag, attrs):
        if tag in ("h2", "th", "td"):
            self.inside, self.text = tag, ""
        if tag == "thead":
            self.columns = []
        if tag == "tr":
            self.row = []

    def handle_endtag(self, tag):
        if tag == "h2":
            self.heading = self.text
        elif tag == "th":
            self.columns.append(self.text)
        elif tag == "td":
            self.row.append(self.text)
            key = tuple(self.row[:2]) if len(self.row) > 2 else None
            if key is not None:
                self.cells[self.heading, key, self.columns[len(self.row) - 1]] = self.text
        if tag == self.inside:
            self.inside = None

    def handle_data(self, data):
        if self.inside:
            self.text += data


def _html_marked(page: str) -> set:
    parser = _Cells()
    parser.feed(page)
    return {(heading, row, column) for (heading, row, column), text in parser.cells.items() if "‡" in text}


def _markdown_marked(markdown: str) -> set:
    marked, heading, columns = set(), "", []
    for line in markdown.splitlines():
        if line.startswith("## "):
            heading = line[3:]
        elif line.startswith("| ") and not line.startswith("|---"):
            cells = line.strip("| ").split(" | ")
            if cells[0] in ("model", "task"):
                columns = cells
            else:
                marked |= {(heading, tuple(cells[:2]), columns[i]) for i, text in enumerate(cells) if "‡" in text}
    return marked


def test_batch_dependent_cells_are_marked_and_the_backend_shown(tmp_path):
    db, out = tmp_path / "lb.sqlite", tmp_path / "board"
    _write(db)
    runs = store.latest_runs(db)
    assert [(r["label"], r["backend"]) for r in runs] == [("base", "transformers"), (CANDIDATE, "vllm")]
    assert runs[1]["batch_dependent"][0] == {**FLAGGED, "flagged": True}
    leaderboard.render(leaderboard.LeaderboardConfig(db=str(db), out=str(out)))
    page, markdown = (out / "leaderboard.html").read_text(), (out / "leaderboard.md").read_text()

    bpc = "heldout: bits per character (lower is better)"
    score_cell = (bpc, (CANDIDATE, "base"), "hi")
    change_cell = (f"Changes of {CANDIDATE} vs base", ("heldout", "bits_per_character"), "hi")
    assert _html_marked(page) == {score_cell, change_cell}
    assert _markdown_marked(markdown) == {score_cell, change_cell}

    tip = "depends on the batch: largest move 0.0123 (tolerance 0.001) over 3 items rescored alone"
    assert page.count(f"<span class='flag' title='{html.escape(tip)}'>‡</span>") == 2
    assert page.count(html.escape(FOOTNOTE)) == 2 and markdown.count(f"- {FOOTNOTE}") == 2  # under each marked table
    assert page.count(html.escape(leaderboard.BATCH_NOTE)) == 2 and markdown.count(leaderboard.BATCH_NOTE) == 2
    assert CANDIDATE not in page  # escaped wherever it appears

    assert f"<td>{html.escape(CANDIDATE)}</td><td>base</td><td>vllm</td>" in page
    assert "<td>base</td><td>–</td><td>transformers</td>" in page
    assert f"| {CANDIDATE} | base | vllm |" in markdown and "| base | – | transformers |" in markdown

    (change,) = leaderboard.candidates(runs)
    assert set(change["batch_dependent"]) == {("heldout", "bits_per_character", "hi")}
    assert leaderboard.heatmap_png(change) != leaderboard.heatmap_png({**change, "batch_dependent": {}})


OLD_RUNS = """
CREATE TABLE runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, created TEXT NOT NULL, label TEXT NOT NULL, model TEXT NOT NULL,
    adapter TEXT, base_label TEXT, suite TEXT NOT NULL, tokenizer_sha256 TEXT, code_commit TEXT, lineage TEXT,
    weights_sha256 TEXT, adapter_sha256 TEXT, dtype TEXT, recipe TEXT, base_mismatch TEXT, skipped TEXT
);
"""


def test_a_store_from_before_the_flags_gains_them_and_renders(tmp_path):
    db, out = tmp_path / "old.sqlite", tmp_path / "board"
    connection = sqlite3.connect(db)
    with connection:
        connection.executescript(OLD_RUNS + store.SCHEMA)  # the scores table has not changed
        connection.execute(
            "INSERT INTO runs (created, label, model, suite, skipped) VALUES ('2024-01-01', 'old', 'old', 't', '[]')"
        )
        connection.executemany(
            "INSERT INTO scores (run_id, task, lang, metric, value, n) VALUES (1, ?, ?, 'bits_per_character', 1.5, 4)",
            [("heldout", "hi"), ("heldout", "en")],
        )
    connection.close()

    (run,) = store.latest_runs(db)
    assert (run["batch_dependent"], run["backend"]) == ([], "transformers")
    connection = sqlite3.connect(db)
    assert {"batch_dependent", "backend"} <= {row[1] for row in connection.execute("PRAGMA table_info(runs)")}
    connection.close()
    leaderboard.render(leaderboard.LeaderboardConfig(db=str(db), out=str(out)))
    page, markdown = (out / "leaderboard.html").read_text(), (out / "leaderboard.md").read_text()
    assert "<td>old</td><td>–</td><td>transformers</td>" in page and "| old | – | transformers |" in markdown
    assert "‡" not in page and "‡" not in markdown

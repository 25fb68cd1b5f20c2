"""The leaderboard store: every evaluation appends a run and its scores to one SQLite file.

Several evaluations may write at once: each opens the database with a generous busy timeout, in WAL
mode, and writes a run and its scores in a single transaction.
"""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created TEXT NOT NULL,
    label TEXT NOT NULL,            -- how the model is shown: its folder or hub id, plus the adapter
    model TEXT NOT NULL,            -- model id or folder the weights came from
    adapter TEXT,                   -- adapter folder, if any
    base_label TEXT,                -- the run's comparison base (label), NULL for a base itself
    suite TEXT NOT NULL,
    tokenizer_sha256 TEXT,
    code_commit TEXT,
    lineage TEXT,                   -- JSON: the training lineage.json of the model/adapter, if any
    weights_sha256 TEXT,            -- hash of the model folder's weight and config files
    adapter_sha256 TEXT,            -- the same for the adapter folder
    dtype TEXT,
    recipe TEXT,                    -- JSON: the resolved evaluation config
    base_mismatch TEXT,             -- why the adapter's recorded base is not the model it was scored on, if allowed
    skipped TEXT,                   -- JSON: [{task, lang, shots, reason}] of suite entries not scored
    batch_dependent TEXT,           -- JSON: [{task, lang, items, largest_move, tolerance, flagged}] of entries
                                    -- whose scores moved beyond the tolerance when rescored at batch size 1
    backend TEXT                    -- the engine that scored: transformers or vllm; NULL before it was recorded
);
CREATE TABLE IF NOT EXISTS scores (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    task TEXT NOT NULL,
    lang TEXT NOT NULL,
    metric TEXT NOT NULL,
    value REAL NOT NULL,
    n INTEGER,                      -- items (text chunks, questions) behind the value
    delta REAL,                     -- value minus the base's value on the same items
    delta_low REAL,                 -- 95% paired bootstrap interval of delta
    delta_high REAL,
    p_value REAL,                   -- McNemar's exact p for right/wrong outcomes vs the base
    shots INTEGER,
    origin TEXT,                    -- native, human-translated or machine-translated data
    detail TEXT                     -- e.g. the sacrebleu signature of a chrF++ score
);
CREATE INDEX IF NOT EXISTS scores_by_run ON scores(run_id);
"""


RUN_COLUMNS = (
    "created",
    "label",
    "model",
    "adapter",
    "base_label",
    "suite",
    "tokenizer_sha256",
    "code_commit",
    "lineage",
    "weights_sha256",
    "adapter_sha256",
    "dtype",
    "recipe",
    "base_mismatch",
    "skipped",
    "batch_dependent",
    "backend",
)
SCORE_COLUMNS = (
    "run_id",
    "task",
    "lang",
    "metric",
    "value",
    "n",
    "delta",
    "delta_low",
    "delta_high",
    "p_value",
    "shots",
    "origin",
    "detail",
)


def connect(path: str | Path) -> sqlite3.Connection:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path, timeout=120)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.executescript(SCHEMA)
    _add_missing_columns(connection)
    return connection


def _add_missing_columns(connection: sqlite3.Connection) -> None:
    """A store written by an older version gains the newer columns (empty for its old rows)."""
    for table, columns in (("runs", RUN_COLUMNS), ("scores", SCORE_COLUMNS)):
        present = {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}
        for column in columns:
            if column not in present:
                connection.execute(f"ALTER TABLE {table} ADD COLUMN {column}")


def add_run(path: str | Path, run: dict[str, Any], scores: list[dict[str, Any]]) -> int:
    connection = connect(path)
    try:
        with connection:  # one transaction: the run and all its scores, or nothing
            values = {c: run.get(c) for c in RUN_COLUMNS}
            values.update(
                lineage=json.dumps(run.get("lineage"), ensure_ascii=False),
                recipe=json.dumps(run.get("recipe"), ensure_ascii=False, default=str),
                skipped=json.dumps(run.get("skipped") or [], ensure_ascii=False),
                batch_dependent=json.dumps(run.get("batch_dependent") or [], ensure_ascii=False),
            )
            cursor = connection.execute(
                f"INSERT INTO runs ({', '.join(RUN_COLUMNS)}) VALUES ({', '.join(':' + c for c in RUN_COLUMNS)})",
                values,
            )
            run_id = cursor.lastrowid
            connection.executemany(
                f"INSERT INTO scores ({', '.join(SCORE_COLUMNS)}) VALUES ({', '.join(':' + c for c in SCORE_COLUMNS)})",
                [{**dict.fromkeys(SCORE_COLUMNS), **s, "run_id": run_id} for s in scores],
            )
    finally:
        connection.close()
    return run_id


def latest_runs(path: str | Path) -> list[dict[str, Any]]:
    """The newest run of each label, with its scores, oldest label first."""
    connection = connect(path)
    connection.row_factory = sqlite3.Row
    try:
        runs = connection.execute(
            "SELECT * FROM runs WHERE id IN (SELECT MAX(id) FROM runs GROUP BY label) ORDER BY id"
        ).fetchall()
        result = []
        for run in runs:
            scores = connection.execute("SELECT * FROM scores WHERE run_id = ?", (run["id"],)).fetchall()
            result.append(
                {
                    **dict(run),
                    "lineage": json.loads(run["lineage"] or "null"),
                    "recipe": json.loads(run["recipe"] or "null"),
                    "skipped": json.loads(run["skipped"] or "[]"),
                    "batch_dependent": json.loads(run["batch_dependent"] or "[]"),
                    # Runs stored before the backend was recorded were all scored by transformers.
                    "backend": run["backend"] or "transformers",
                    "scores": [dict(s) for s in scores],
                }
            )
        return result
    finally:
        connection.close()


def slug(label: str) -> str:
    """A run's label as a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_")[-80:]

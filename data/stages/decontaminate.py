"""decontaminate: drop documents that share a long word n-gram with an evaluation set, so nobody trains on the test.

The n-grams (13 words by default, as in GPT-3 and lm-evaluation-harness) are taken on comparison
keys (case, digits and spacing folded, vowel signs kept). An evaluation segment shorter than the
n-gram but at least ``min_words`` long (a short FLORES sentence) is matched whole.
"""

from __future__ import annotations

import csv
import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from indictune.core import text
from indictune.core.recipe import field
from indictune.data.stages import Record, Stage, StageConfig, StageError, stage


@dataclass
class DecontaminateConfig(StageConfig):
    paths: list[str] = field(
        default_factory=list,
        help="evaluation files or globs ($VARIABLES expanded): text (one segment per line), .jsonl, .parquet, "
        ".csv/.tsv",
    )
    ngram: int = field(
        13, minimum=1, maximum=text.MAX_NGRAM, help="words in a shared n-gram that marks a document as contaminated"
    )
    min_words: int = field(8, minimum=1, help="evaluation segments shorter than this are not matched (too common)")


def _segments(path: Path) -> list[str]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        strings = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            try:
                strings += _strings(json.loads(line)) if line.strip() else []
            except json.JSONDecodeError as err:
                raise StageError(
                    f"decontaminate: {path} line {number} is not JSON ({err.msg}); "
                    "evaluation .jsonl files need one JSON object per line"
                ) from err
        return strings
    if suffix == ".parquet":
        table = pq.read_table(path)
        return [
            v
            for name in table.column_names
            if pa.types.is_string(table.schema.field(name).type)
            for v in table[name].to_pylist()
            if v
        ]
    if suffix in (".csv", ".tsv"):
        with open(path, encoding="utf-8", newline="") as handle:
            rows = csv.reader(handle, delimiter="\t" if suffix == ".tsv" else ",")
            return [cell for row in rows for cell in row]
    return path.read_text(encoding="utf-8").splitlines()


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def eval_segments(config: DecontaminateConfig) -> dict[str, list[str]]:
    """Evaluation text by file."""
    sets: dict[str, list[str]] = {}
    for pattern in config.paths:
        expanded = os.path.expandvars(pattern)
        files = sorted(glob.glob(expanded, recursive=True)) if any(c in expanded for c in "*?[") else [expanded]
        if not files or not all(Path(f).is_file() for f in files):
            raise FileNotFoundError(
                f"decontaminate: no evaluation file at {expanded!r} (stages.decontaminate.paths: {pattern!r}); "
                "fix the path or set the variable it uses"
            )
        for file in files:
            sets[file] = _segments(Path(file))
    return sets


@stage("decontaminate", order=70, config=DecontaminateConfig, help="n-gram overlap with evaluation sets")
class Decontaminate(Stage):
    columns = {"eval_overlap": pa.string()}

    def setup(self) -> None:
        config = self.config
        by_size: dict[int, dict[int, int]] = {}
        self.set_names = list(eval_segments(config).items())
        for index, (_, segments) in enumerate(self.set_names):
            for segment in segments:
                hashes = text.text_word_hashes(text.key_words_text(segment))
                if len(hashes) < config.min_words:
                    continue
                size = min(config.ngram, len(hashes))
                table = by_size.setdefault(size, {})
                for gram in text.ngram_hashes(hashes, size).tolist():
                    table.setdefault(gram, index)
        self.tables = {size: (np.array(sorted(t), dtype=np.uint64), t) for size, t in sorted(by_size.items())}
        self.set_names = [name for name, _ in self.set_names]

    def process(self, record: Record) -> str | None:
        if not self.tables:
            return None
        hashes = text.text_word_hashes(text.key_words_text(record["text"]))
        for size, (sorted_grams, owner) in self.tables.items():
            if len(hashes) < size:
                continue
            grams = text.ngram_hashes(hashes, size)
            at = np.searchsorted(sorted_grams, grams).clip(max=len(sorted_grams) - 1)
            hits = grams[sorted_grams[at] == grams]
            if len(hits):
                record["eval_overlap"] = self.set_names[owner[int(hits[0])]]
                return "eval_overlap"
        return None

"""Build the stage list from a recipe, run every source through it, and write kept and rejected records.

Outputs in ``output_dir``: ``data/part-*.parquet`` (kept), ``rejected/part-*.parquet`` (with ``stage`` and
``reason``), ``report.json``, ``report.md``, ``report.png`` and the resolved ``recipe.yaml``, written through
``data.io.atomic_directory``: a crash leaves the previous result untouched, and the same recipe and inputs
give the same files.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import groupby, islice
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from tqdm.auto import tqdm

from data import report as reporting
from data.io import atomic_directory
from data.readers import Source, read
from data.recipe import field, to_dict
from data.stages import Record, Stage
from data.stages.asr import Asr, AsrConfig
from data.stages.dedup import DedupConfig, ExactDedup
from data.stages.identify import Identify, IdentifyConfig
from data.stages.normalize import Normalize, NormalizeConfig
from data.stages.ocr import Ocr, OcrConfig
from data.stages.pii import Pii, PiiConfig
from data.stages.quality import Quality, QualityConfig


@dataclass
class StagesConfig:
    """The stages run in this order; each can be configured or switched off with ``enabled: false``."""

    normalize: NormalizeConfig = field(default_factory=NormalizeConfig, help="NFC + indic-nlp-library")
    identify: IdentifyConfig = field(default_factory=IdentifyConfig, help="script and language")
    ocr: OcrConfig = field(default_factory=OcrConfig, help="running headers, page numbers, hyphens (kind: ocr)")
    asr: AsrConfig = field(default_factory=AsrConfig, help="timestamps, tags, fillers, loops (kind: asr)")
    pii: PiiConfig = field(default_factory=PiiConfig, help="emails, phones, Aadhaar, PAN -> placeholders")
    quality: QualityConfig = field(default_factory=QualityConfig, help="heuristic filters")
    dedup: DedupConfig = field(default_factory=DedupConfig, help="exact duplicates")


STAGES: dict[str, type[Stage]] = {
    "normalize": Normalize,
    "identify": Identify,
    "ocr": Ocr,
    "asr": Asr,
    "pii": Pii,
    "quality": Quality,
    "dedup": ExactDedup,
}


@dataclass
class PrepareConfig:
    sources: list[Source] = field(help="what to read: a list of {path, format, kind, lang, ...}")
    output_dir: str = field("runs/data", help="replaced as a whole by the new result")
    stages: StagesConfig = field(default_factory=StagesConfig, help="stage settings")
    batch_size: int = field(1000, help="records handed to the stages at a time (an OCR book must fit in one)")
    shard_records: int = field(100_000, help="records per output Parquet file")


def build_stages(config: StagesConfig) -> list[Stage]:
    return [cls(getattr(config, name)) for name, cls in STAGES.items() if getattr(config, name).enabled]


CORE_COLUMNS = {
    "id": pa.string(),
    "text": pa.string(),
    "lang": pa.string(),
    "script": pa.string(),
    "source": pa.string(),
    "kind": pa.string(),
    "meta": pa.string(),  # JSON: its keys differ from one source format to another
}
REJECT_COLUMNS = {"stage": pa.string(), "reason": pa.string()}


class ShardWriter:
    """Parquet files of at most `shard_records` rows, numbered in write order."""

    def __init__(self, directory: Path, schema: pa.Schema, shard_records: int):
        self.directory, self.schema, self.shard_records = directory, schema, shard_records
        self.pending: list[Record] = []
        self.shards = 0
        directory.mkdir(parents=True)

    def write(self, records: list[Record]) -> None:
        self.pending.extend(records)
        while len(self.pending) >= self.shard_records:
            self._flush(self.pending[: self.shard_records])
            self.pending = self.pending[self.shard_records :]

    def close(self) -> None:
        if self.pending or self.shards == 0:  # an empty result is still a readable (empty) file
            self._flush(self.pending)
        self.pending = []

    def _flush(self, records: list[Record]) -> None:
        columns = {
            name: [json.dumps(r["meta"], ensure_ascii=False) if name == "meta" else r.get(name) for r in records]
            for name in self.schema.names
        }
        table = pa.table(columns, schema=self.schema)
        pq.write_table(table, self.directory / f"part-{self.shards:05d}.parquet")
        self.shards += 1


def _batches(records: Iterator[Record], size: int) -> Iterator[list[Record]]:
    """Batches that never mix files, so the pages of one book stay together."""
    for _, same_file in groupby(records, key=lambda r: r["id"].rsplit("#", 1)[0]):
        while batch := list(islice(same_file, size)):
            yield batch


def run_stages(stages: list[Stage], batch: list[Record]) -> tuple[list[Record], list[Record]]:
    """(kept, rejected) for one batch; rejected records carry ``stage`` and ``reason``."""
    rejected = []
    alive = []
    for record in batch:
        if record.get("read_error"):
            record.update(stage="read", reason=record.pop("read_error"))
            rejected.append(record)
        else:
            alive.append(record)
    for stage in stages:
        mine = [r for r in alive if r["kind"] in stage.kinds]
        reasons = dict(zip(map(id, mine), stage.process_batch(mine))) if mine else {}
        survivors = []
        for record in alive:
            reason = reasons.get(id(record))
            if reason:
                record.update(stage=stage.name, reason=reason)
                rejected.append(record)
            else:
                survivors.append(record)
        alive = survivors
    return alive, rejected


def run(config: PrepareConfig) -> dict[str, Any]:
    """Run the recipe; return the report (also written to ``output_dir``)."""
    stages = build_stages(config.stages)
    stage_columns = {name: t for stage in stages for name, t in stage.columns.items()}
    kept_schema = pa.schema({**CORE_COLUMNS, **stage_columns})
    rejected_schema = pa.schema({**CORE_COLUMNS, **stage_columns, **REJECT_COLUMNS})

    tally = reporting.Tally([s.name for s in stages])
    with atomic_directory(config.output_dir) as partial:
        kept_writer = ShardWriter(partial / "data", kept_schema, config.shard_records)
        rejected_writer = ShardWriter(partial / "rejected", rejected_schema, config.shard_records)
        for source in config.sources:
            records = tqdm(read(source), desc=f"prepare {source.name}", unit=" records", leave=False, disable=None)
            for batch in _batches(records, config.batch_size):
                kept, rejected = run_stages(stages, batch)
                tally.add(source.name, len(batch), kept, rejected)
                kept_writer.write(kept)
                rejected_writer.write(rejected)
        kept_writer.close()
        rejected_writer.close()
        report = tally.report()
        (partial / "recipe.yaml").write_text(yaml.safe_dump(to_dict(config), allow_unicode=True, sort_keys=False))
        reporting.write(report, partial)
    return report

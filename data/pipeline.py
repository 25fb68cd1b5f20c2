"""Build the stage list from a recipe, run every source through it, and write kept and rejected records.

Two phases. The record stages (normalize ... decontaminate) judge each record, or each OCR'd book, on
its own: batches go to ``num_proc`` worker processes and come back in input order, so the output does
not depend on the number of workers. Survivors are spilled to Parquet in the output's ``.partial``
directory; the corpus stages (repeated lines, duplicates) then read them back, once to observe and once
to judge. Memory stays bounded by a few batches plus the corpus stages' indexes (about 0.5 KB per record
for near-duplicate detection).

Outputs in ``output_dir``: ``data/part-*.parquet`` (kept), ``rejected/part-*.parquet`` (with ``stage`` and
``reason``), ``report.json``, ``report.md``, ``report.png`` and the resolved ``recipe.yaml``, written through
``indictune.core.io.atomic_directory``: a crash leaves the previous result untouched, and the same recipe and inputs
give byte-identical files.
"""

from __future__ import annotations

import json
import multiprocessing
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import chain, groupby, islice
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from tqdm.auto import tqdm

from indictune.data import report as reporting
from indictune.core.io import atomic_directory
from indictune.data.readers import Source, read
from indictune.core.recipe import field, to_dict
from indictune.data.stages import CorpusStage, Record, Stage
from indictune.data.stages.asr import Asr, AsrConfig
from indictune.data.stages.decontaminate import Decontaminate, DecontaminateConfig
from indictune.data.stages.dedup import Dedup, DedupConfig, RepeatedLines, RepeatedLinesConfig
from indictune.data.stages.identify import Identify, IdentifyConfig
from indictune.data.stages.normalize import Normalize, NormalizeConfig
from indictune.data.stages.ocr import Ocr, OcrConfig
from indictune.data.stages.pii import Pii, PiiConfig
from indictune.data.stages.quality import Quality, QualityConfig


@dataclass
class StagesConfig:
    """The stages run in this order; each can be configured or switched off with ``enabled: false``."""

    normalize: NormalizeConfig = field(default_factory=NormalizeConfig, help="NFC + indic-nlp-library + policies")
    identify: IdentifyConfig = field(default_factory=IdentifyConfig, help="script fractions, language, romanized")
    ocr: OcrConfig = field(default_factory=OcrConfig, help="headers, page numbers, hyphens, confidences (kind: ocr)")
    asr: AsrConfig = field(default_factory=AsrConfig, help="timestamps, tags, fillers, loops (kind: asr)")
    pii: PiiConfig = field(default_factory=PiiConfig, help="emails, phones, Indian identifiers -> placeholders")
    quality: QualityConfig = field(default_factory=QualityConfig, help="heuristic filters")
    decontaminate: DecontaminateConfig = field(
        default_factory=DecontaminateConfig, help="n-gram overlap with evaluation sets"
    )
    repeated_lines: RepeatedLinesConfig = field(
        default_factory=RepeatedLinesConfig, help="lines repeated across many documents of a source"
    )
    dedup: DedupConfig = field(default_factory=DedupConfig, help="exact and MinHash near duplicates")


STAGES: dict[str, type[Stage]] = {
    "normalize": Normalize,
    "identify": Identify,
    "ocr": Ocr,
    "asr": Asr,
    "pii": Pii,
    "quality": Quality,
    "decontaminate": Decontaminate,
    "repeated_lines": RepeatedLines,
    "dedup": Dedup,
}


@dataclass
class PrepareConfig:
    sources: list[Source] = field(help="what to read: a list of {path, format, kind, lang, ...}")
    output_dir: str = field("runs/data", help="replaced as a whole by the new result")
    stages: StagesConfig = field(default_factory=StagesConfig, help="stage settings")
    num_proc: int = field(1, help="worker processes for the record stages; the output is the same for any number")
    batch_size: int = field(1000, help="records handed to a worker at a time (an OCR book is never split)")
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


def read_shards(directory: Path, batch_size: int) -> Iterator[list[Record]]:
    for path in sorted(directory.glob("part-*.parquet")):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
            records = batch.to_pylist()
            for record in records:
                record["meta"] = json.loads(record["meta"])
            yield records


def _group_key(record: Record) -> str:
    """The pages of one OCR'd book stay in one batch; otherwise batches never mix files."""
    return record["meta"].get("book") or record["id"].rsplit("#", 1)[0]


def _batches(records: Iterator[Record], size: int) -> Iterator[list[Record]]:
    """Batches of at most `size` records, except that a book is never split (its headers are found across pages)."""
    for _, same_group in groupby(records, key=_group_key):
        first = next(same_group)
        if "book" in first["meta"]:
            yield [first, *same_group]
            continue
        same_group = chain([first], same_group)
        while batch := list(islice(same_group, size)):
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
    order = {id(record): i for i, record in enumerate(batch)}
    return alive, sorted(rejected, key=lambda record: order[id(record)])  # input order, whatever the stage


_WORKER_STAGES: list[Stage] = []


def _start_worker(config: StagesConfig) -> None:
    _WORKER_STAGES[:] = [s for s in build_stages(config) if not isinstance(s, CorpusStage)]


def _run_in_worker(batch: list[Record]) -> tuple[list[Record], list[Record]]:
    return run_stages(_WORKER_STAGES, batch)


def ordered_map(fn: Callable, items: Iterable, num_proc: int, initializer: Callable, initargs: tuple) -> Iterator:
    """fn over items in `num_proc` processes, results in input order, at most 2 x num_proc items in flight
    (``Pool.imap`` would read the whole input ahead)."""
    context = multiprocessing.get_context("spawn")  # no fork of a parent holding threads or big indexes
    with ProcessPoolExecutor(num_proc, mp_context=context, initializer=initializer, initargs=initargs) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * num_proc:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _corpus_pass(stages: list[CorpusStage], survivors: Path, batch_size: int) -> Iterator[tuple[Record, str | None, CorpusStage | None]]:
    """Each survivor of the record stages through `stages` in order: (record, reason, stage that rejected)."""
    for batch in read_shards(survivors, batch_size):
        for record in batch:
            for stage in stages:
                if record["kind"] in stage.kinds:
                    reason = stage.process(record)
                    if reason:
                        yield record, reason, stage
                        break
            else:
                yield record, None, None


def run(config: PrepareConfig) -> dict[str, Any]:
    """Run the recipe; return the report (also written to ``output_dir``)."""
    stages = build_stages(config.stages)
    record_stages = [s for s in stages if not isinstance(s, CorpusStage)]
    corpus_stages = [s for s in stages if isinstance(s, CorpusStage)]
    stage_columns = {name: t for stage in stages for name, t in stage.columns.items()}
    record_columns = {name: t for stage in record_stages for name, t in stage.columns.items()}
    kept_schema = pa.schema({**CORE_COLUMNS, **stage_columns})
    rejected_schema = pa.schema({**CORE_COLUMNS, **stage_columns, **REJECT_COLUMNS})

    tally = reporting.Tally([s.name for s in stages])
    with atomic_directory(config.output_dir) as partial:
        rejected_writer = ShardWriter(partial / "rejected", rejected_schema, config.shard_records)
        survivors = partial / "survivors.tmp"
        survivor_writer = ShardWriter(survivors, pa.schema({**CORE_COLUMNS, **record_columns}), config.shard_records)
        for source in config.sources:
            records = tqdm(read(source), desc=f"prepare {source.name}", unit=" records", leave=False, disable=None)
            batches = _batches(records, config.batch_size)

            def counted(batches=batches, name=source.name):
                for batch in batches:
                    tally.count_input(name, len(batch))
                    yield batch

            if config.num_proc > 1:
                results = ordered_map(_run_in_worker, counted(), config.num_proc, _start_worker, (config.stages,))
            else:
                results = (run_stages(record_stages, batch) for batch in counted())
            for kept, rejected in results:
                tally.reject(rejected)
                rejected_writer.write(rejected)
                survivor_writer.write(kept)
        survivor_writer.close()

        for k, stage in enumerate(corpus_stages):
            progress = tqdm(desc=f"{stage.name}: observe", unit=" records", leave=False, disable=None)
            for record, reason, _ in _corpus_pass(corpus_stages[:k], survivors, config.batch_size):
                if reason is None and record["kind"] in stage.kinds:
                    stage.observe(record)
                progress.update()
            progress.close()
            stage.finish_observing()
        kept_writer = ShardWriter(partial / "data", kept_schema, config.shard_records)
        for record, reason, stage in _corpus_pass(corpus_stages, survivors, config.batch_size):
            if reason is None:
                tally.keep([record])
                kept_writer.write([record])
            else:
                record.update(stage=stage.name, reason=reason)
                tally.reject([record])
                rejected_writer.write([record])
        kept_writer.close()
        rejected_writer.close()
        for path in survivors.iterdir():
            path.unlink()
        survivors.rmdir()

        report = tally.report()
        (partial / "recipe.yaml").write_text(yaml.safe_dump(to_dict(config), allow_unicode=True, sort_keys=False))
        reporting.write(report, partial)
    return report

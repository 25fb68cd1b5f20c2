"""Build the stage list from a recipe, run every source through it, and write kept and rejected records.

Two phases. The record stages (normalize ... decontaminate) judge each record, or each OCR'd book, on
its own: batches go to ``num_proc`` worker processes and come back in input order, so the output does
not depend on the number of workers. The corpus stages (repeated lines, duplicates) must observe every
record before they judge one: each observes the records as they are spilled to Parquet in the output's
``.partial`` directory, and judges them as they are read back, which is when the next corpus stage
observes them. So every stage processes a record once and every spill is read once. A record a corpus
stage rejects travels on, marked, to the end, where kept and rejected records are written in input order.
Memory stays bounded by a few batches plus the corpus stages' indexes (about 0.5 KB per record for
near-duplicate detection).

Outputs in ``output_dir``: ``data/part-*.parquet`` (kept), ``rejected/part-*.parquet`` (with ``stage`` and
``reason``), ``report.json``, ``report.md``, ``report.png`` and the resolved ``recipe.yaml``, written through
``indictune.core.io.atomic_directory``: a crash leaves the previous result untouched, and the same recipe and inputs
give byte-identical files.
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
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

from indictune.core.io import atomic_directory
from indictune.core.recipe import field, to_dict
from indictune.data import report as reporting
from indictune.data.readers import Source, read
from indictune.data.stages import CorpusStage, Record, Stage, StagesConfig, build_stages


@dataclass
class PrepareConfig:
    sources: list[Source] = field(help="what to read: a list of {path, format, kind, lang, ...}")
    output_dir: str = field("runs/data", help="replaced as a whole by the new result")
    stages: StagesConfig = field(default_factory=StagesConfig, help="stage settings")
    num_proc: int = field(1, help="worker processes for the record stages; the output is the same for any number")
    batch_size: int = field(1000, help="records handed to a worker at a time (an OCR book is never split)")
    shard_records: int = field(100_000, help="records per output Parquet file")


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
    for _, group in groupby(records, key=_group_key):
        yield from _group_batches(group, size)


def _group_batches(group: Iterator[Record], size: int) -> Iterator[list[Record]]:
    """One group's records: a book whole, the records of a file in batches of at most `size`."""
    first = next(group)
    if "book" in first["meta"]:
        yield [first, *group]
        return
    rest = chain([first], group)
    while batch := list(islice(rest, size)):
        yield batch


def _judge(stage: Stage, records: list[Record]) -> None:
    """Mark the records `stage` drops with its name and reason; records already dropped, or of other kinds, pass."""
    mine = [r for r in records if not r.get("reason") and r["kind"] in stage.kinds]
    if mine:
        for record, reason in zip(mine, stage.process_batch(mine)):
            if reason:
                record.update(stage=stage.name, reason=reason)


def run_stages(stages: list[Stage], batch: list[Record]) -> tuple[list[Record], list[Record]]:
    """(kept, rejected) for one batch, both in input order; rejected records carry ``stage`` and ``reason``."""
    for record in batch:
        if record.get("read_error"):
            record.update(stage="read", reason=record.pop("read_error"))
    for stage in stages:
        _judge(stage, batch)
    return _split(batch)


def _split(batch: list[Record]) -> tuple[list[Record], list[Record]]:
    """(kept, rejected), each in input order."""
    return [r for r in batch if not r.get("reason")], [r for r in batch if r.get("reason")]


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


def _record_phase(
    config: PrepareConfig, stages: list[Stage], tally: reporting.Tally, rejected_writer: ShardWriter
) -> Iterator[list[Record]]:
    """Every source through the record stages: the surviving records, batch by batch in input order; the
    rejected ones are counted and written as they come."""
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
            results = (run_stages(stages, batch) for batch in counted())
        for kept, rejected in results:
            tally.reject(rejected)
            rejected_writer.write(rejected)
            yield kept


def _observe_and_spill(stage: CorpusStage, batches: Iterable[list[Record]], spill: ShardWriter) -> None:
    """Write the batches to `spill`, `stage` observing each record it will judge, then settle its index."""
    progress = tqdm(desc=f"{stage.name}: observe", unit=" records", leave=False, disable=None)
    for batch in batches:
        for record in batch:
            if not record.get("reason") and record["kind"] in stage.kinds:
                stage.observe(record)
        spill.write(batch)
        progress.update(len(batch))
    progress.close()
    spill.close()
    stage.finish_observing()


def _read_and_judge(stage: CorpusStage, spill: Path, batch_size: int) -> Iterator[list[Record]]:
    """The spilled records, batch by batch in the order they were observed, judged by `stage`; the spill is
    deleted once read."""
    for batch in read_shards(spill, batch_size):
        _judge(stage, batch)
        yield batch
    shutil.rmtree(spill)


def run(config: PrepareConfig) -> dict[str, Any]:
    """Run the recipe; return the report (also written to ``output_dir``)."""
    stages = build_stages(config.stages)
    record_stages = [s for s in stages if not isinstance(s, CorpusStage)]
    corpus_stages = [s for s in stages if isinstance(s, CorpusStage)]
    stage_columns = {name: t for stage in stages for name, t in stage.columns.items()}
    kept_schema = pa.schema({**CORE_COLUMNS, **stage_columns})
    rejected_schema = pa.schema({**CORE_COLUMNS, **stage_columns, **REJECT_COLUMNS})

    tally = reporting.Tally([s.name for s in stages])
    with atomic_directory(config.output_dir) as partial:
        rejected_writer = ShardWriter(partial / "rejected", rejected_schema, config.shard_records)
        batches = _record_phase(config, record_stages, tally, rejected_writer)
        spilled_columns = {
            **CORE_COLUMNS,
            **{name: t for s in record_stages for name, t in s.columns.items()},
            **REJECT_COLUMNS,
        }
        for stage in corpus_stages:
            spill = partial / f"{stage.name}.spill"
            _observe_and_spill(stage, batches, ShardWriter(spill, pa.schema(spilled_columns), config.batch_size))
            spilled_columns.update(stage.columns)
            batches = _read_and_judge(stage, spill, config.batch_size)

        kept_writer = ShardWriter(partial / "data", kept_schema, config.shard_records)
        for batch in batches:
            kept, rejected = _split(batch)
            tally.keep(kept)
            kept_writer.write(kept)
            tally.reject(rejected)
            rejected_writer.write(rejected)
        kept_writer.close()
        rejected_writer.close()

        report = tally.report()
        (partial / "recipe.yaml").write_text(yaml.safe_dump(to_dict(config), allow_unicode=True, sort_keys=False))
        reporting.write(report, partial)
    return report

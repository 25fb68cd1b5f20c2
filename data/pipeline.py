"""Build the stage list from a recipe, run every source through it, and write kept and rejected records.

Two executors share the stages, the schemas, the writers, the tally and the atomic output: ``local`` (below)
and ``ray`` (``ray_executor``: the same phases as tasks over shards of the input on a Ray cluster).

Two phases. The record stages (normalize ... decontaminate) judge each record, or each OCR'd book, on its own:
batches go to ``num_proc`` worker processes and come back in input order, so the output does not depend on the
number of workers. The corpus stages (repeated lines, duplicates) must observe every record before they judge
one: each observes the records as they are spilled to Parquet in the output's ``.partial`` directory, and judges
them as they are read back, which is when the next corpus stage observes them. So every stage processes a record
once and every spill is read once. A record a corpus stage rejects travels on, marked, to the end, where kept
and rejected records are written in input order. Memory stays bounded by a few batches, a few row groups per
writer (the writers spill by bytes), plus the corpus stages' in-memory indexes (repeated lines, duplicates).

Outputs in ``output_dir``: ``data/part-*.parquet`` (kept), ``rejected/part-*.parquet`` (with ``stage`` and
``reason``), ``report.json``, ``report.md``, ``report.png``, the resolved ``recipe.yaml`` and the manifest of the
files written, through ``indictune.core.io.atomic_directory``: a crash leaves the previous result untouched, the
same recipe and inputs give byte-identical files, and an output_dir that holds or lies inside the inputs, or
holds files the pipeline did not write, is refused before any work.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import shutil
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import chain, groupby, islice
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml
from tqdm.auto import tqdm

from indictune.core.io import atomic_directory
from indictune.core.recipe import check_ranges, field, to_dict
from indictune.data import report as reporting
from indictune.data.readers import Source, check_sources, read
from indictune.data.stages import CorpusStage, Record, Stage, StagesConfig, build_stages


@dataclass
class PrepareConfig:
    sources: list[Source] = field(help="what to read: a list of {path, format, kind, lang, ...}")
    output_dir: str = field(
        "runs/data", help="replaced as a whole by the new result; never an input's folder, nor one of the user's"
    )
    overwrite: bool = field(False, help="replace an output_dir that holds files the pipeline did not write")
    stages: StagesConfig = field(default_factory=StagesConfig, help="stage settings")
    num_proc: int = field(
        1, minimum=1, maximum=1024, help="worker processes for the record stages; the output is the same for any number"
    )
    batch_size: int = field(
        1000, minimum=1, maximum=1_000_000, help="records handed to a worker at a time (an OCR book is never split)"
    )
    shard_mb: int = field(
        256,
        minimum=1,
        maximum=65_536,
        help="an output Parquet file rolls over at this many MB of records (uncompressed)",
    )
    shard_records: int | None = field(None, minimum=1, help="also roll over at this many records (null: by size only)")
    executor: Literal["local", "ray"] = field(
        "local", help="local: this machine (num_proc processes); ray: a Ray cluster (pip install -e '.[ray]')"
    )
    ray_address: str | None = field(
        None, help="ray: auto (the cluster this machine belongs to), HOST:PORT, or null (start Ray on this machine)"
    )
    split_mb: int = field(
        64,
        minimum=1,
        maximum=65_536,
        help="ray: the bytes of input one task reads: small files are grouped up to it, a larger file is read by "
        "several tasks (byte ranges of an uncompressed jsonl or txt line file, row groups of a Parquet file)",
    )


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


# A row group is written once the pending records reach this many bytes: row groups of a few MB read
# efficiently, and the two or three writers open at once hold only tens of MB between them.
ROW_GROUP_BYTES = 8 * 2**20


class RowLayout:
    """Where the writers end row groups and files, from the rows' sizes alone, in order: a row group ends with
    the row that brings it to ``ROW_GROUP_BYTES`` (or to the file's `shard_bytes`), a file with the row group
    that brings it to `shard_bytes` (or to `shard_records` rows)."""

    def __init__(self, shard_bytes: int, shard_records: int | None = None):
        self.shard_bytes, self.shard_records = shard_bytes, shard_records or sys.maxsize
        self.file_bytes = self.file_rows = self.pending_bytes = self.pending_rows = 0

    def place(self, sizes: np.ndarray) -> list[tuple[int, bool]]:
        """Place rows of these sizes after the rows placed before. Returns the row groups they complete, each as
        (the index in `sizes` just after its last row, whether it also completes its file); the rows after the
        last one wait for more rows, or for ``finish``."""
        ends = np.cumsum(sizes)  # ends[i]: bytes of rows 0..i
        groups, start = [], 0
        while start < len(sizes):
            before = int(ends[start - 1]) if start else 0
            room = min(ROW_GROUP_BYTES, self.shard_bytes - self.file_bytes) - self.pending_bytes
            fills = int(np.searchsorted(ends, before + room)) + 1  # the row that reaches `room` ends the group
            caps = start + self.shard_records - self.file_rows - self.pending_rows
            end = min(fills, caps, len(sizes))
            self.pending_bytes += int(ends[end - 1]) - before
            self.pending_rows += end - start
            if end in (fills, caps):
                groups.append((end, self.finish()))
            start = end
        return groups

    def finish(self) -> bool:
        """End a row group with the waiting rows; whether it completes its file."""
        self.file_bytes += self.pending_bytes
        self.file_rows += self.pending_rows
        self.pending_bytes = self.pending_rows = 0
        if self.file_bytes >= self.shard_bytes or self.file_rows >= self.shard_records:
            self.file_bytes = self.file_rows = 0
            return True
        return False


class ShardWriter:
    """Parquet files ``part-NNNNN.parquet``, each rolled over at `shard_bytes` of records (and `shard_records`
    rows, when given), written a row group at a time where ``RowLayout`` says: where the records alone decide,
    never where the batches handed in end, so the bytes are the same for any batch size or number of workers."""

    def __init__(self, directory: Path, schema: pa.Schema, shard_bytes: int, shard_records: int | None = None):
        self.directory, self.schema = directory, schema
        self.layout = RowLayout(shard_bytes, shard_records)
        self.pending: list[pa.RecordBatch] = []
        self.shards = 0
        self.file: pq.ParquetWriter | None = None
        directory.mkdir(parents=True)

    def write(self, records: list[Record]) -> None:
        self.write_batch(self.to_batch(records))

    def to_batch(self, records: list[Record]) -> pa.RecordBatch:
        """Records as this writer stores them (``meta`` as its JSON string)."""
        columns = {
            name: [json.dumps(r["meta"], ensure_ascii=False) if name == "meta" else r.get(name) for r in records]
            for name in self.schema.names
        }
        return pa.RecordBatch.from_pydict(columns, schema=self.schema)

    def write_batch(self, batch: pa.RecordBatch) -> None:
        """Records already in Arrow form, with this writer's schema (``meta`` as its JSON string)."""
        start = 0
        for end, ends_file in self.layout.place(row_bytes(batch)):
            self.pending.append(batch.slice(start, end - start))
            self._write_row_group(ends_file)
            start = end
        if start < batch.num_rows:
            self.pending.append(batch.slice(start))

    def close(self) -> None:
        if self.pending:
            self._write_row_group(self.layout.finish())
        if self.file is not None:
            self._close_file()
        if self.shards == 0:  # an empty result is still a readable (empty) file
            pq.write_table(self.schema.empty_table(), self.path(0))
            self.shards = 1

    def written_elsewhere(self, files: int) -> None:
        """Count `files` part files that other processes wrote into this writer's folder, laid out as it would
        have laid them out; nothing may have been written here before."""
        assert self.shards == 0 and self.file is None and not self.pending
        self.shards = files

    def _write_row_group(self, ends_file: bool) -> None:
        table = row_group(self.pending, self.schema)
        if self.file is None:
            self.file = pq.ParquetWriter(self.path(self.shards), self.schema)
        self.file.write_table(table, row_group_size=table.num_rows)
        self.pending = []
        if ends_file:
            self._close_file()

    def _close_file(self) -> None:
        self.file.close()
        self.file = None
        self.shards += 1

    def path(self, index: int) -> Path:
        return self.directory / f"part-{index:05d}.parquet"


def row_group(pieces: list[pa.RecordBatch | pa.Table], schema: pa.Schema) -> pa.Table:
    """The rows of one row group as the writers write it: one chunk per column, so Parquet pages break where
    the values alone decide."""
    tables = [p if isinstance(p, pa.Table) else pa.Table.from_batches([p], schema) for p in pieces]
    return pa.concat_tables([t.cast(schema) for t in tables]).combine_chunks()


def row_bytes(batch: pa.RecordBatch | pa.Table) -> np.ndarray:
    """Each row's size as the writers count it: the bytes of its strings plus 8 for every other value."""
    sizes = np.zeros(batch.num_rows, dtype=np.int64)
    for column in batch.columns:
        if pa.types.is_string(column.type):
            sizes += pc.binary_length(column).fill_null(0).to_numpy(zero_copy_only=False)
        else:
            sizes += 8
    return sizes


def read_shards(directory: Path, batch_size: int) -> Iterator[list[Record]]:
    for path in sorted(directory.glob("part-*.parquet")):
        with pq.ParquetFile(path, pre_buffer=False) as shard:  # pre-buffering would hold the whole spill
            for batch in shard.iter_batches(batch_size=batch_size):
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


def _start_orphan_proof_worker(parent: int, initializer: Callable, initargs: tuple) -> None:
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    initializer(*initargs)


def _exit_with_parent(parent: int) -> None:
    """End the worker once its parent is gone, killed with -9 included: the parent pid then changes. (The
    system's parent-death signal fires when the spawning thread ends, not the process, so it cannot do this.)"""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def ordered_map(fn: Callable, items: Iterable, num_proc: int, initializer: Callable, initargs: tuple) -> Iterator:
    """fn over items in `num_proc` processes, results in input order, at most 2 x num_proc items in flight
    (``Pool.imap`` would read the whole input ahead). The workers end with this process, however it ends."""
    context = multiprocessing.get_context("spawn")  # no fork of a parent holding threads or big indexes
    with ProcessPoolExecutor(
        num_proc,
        mp_context=context,
        initializer=_start_orphan_proof_worker,
        initargs=(os.getpid(), initializer, initargs),
    ) as pool:
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


@dataclass
class Job:
    """What both executors share in one run: the stages, the output schemas, the tally and the writers."""

    config: PrepareConfig
    partial: Path
    record_stages: list[Stage]
    corpus_stages: list[CorpusStage]
    kept_schema: pa.Schema
    rejected_schema: pa.Schema
    tally: reporting.Tally
    rejected: ShardWriter = dataclasses.field(init=False)
    kept: ShardWriter | None = None

    def __post_init__(self) -> None:
        self.rejected = self._writer("rejected", self.rejected_schema)

    @property
    def shard_bytes(self) -> int:
        return self.config.shard_mb * 2**20

    def spilled_columns(self) -> dict[str, pa.DataType]:
        """The columns of a record leaving the record stages: the core ones, theirs, and stage/reason."""
        return {**CORE_COLUMNS, **{n: t for s in self.record_stages for n, t in s.columns.items()}, **REJECT_COLUMNS}

    def open_kept(self) -> ShardWriter:
        self.kept = self._writer("data", self.kept_schema)
        return self.kept

    def _writer(self, name: str, schema: pa.Schema) -> ShardWriter:
        return ShardWriter(self.partial / name, schema, self.shard_bytes, self.config.shard_records)


def run(config: PrepareConfig) -> dict[str, Any]:
    """Run the recipe; return the report (also written to ``output_dir``). Bad settings, sources and output
    folders are refused with a typed error before any work."""
    check_ranges(config)
    check_sources(config.sources)
    stages = build_stages(config.stages)
    stage_columns = {name: t for stage in stages for name, t in stage.columns.items()}
    inputs = [path for source in config.sources for path in source.reads_from()]
    with atomic_directory(config.output_dir, overwrite=config.overwrite, protected=inputs) as partial:
        job = Job(
            config=config,
            partial=partial,
            record_stages=[s for s in stages if not isinstance(s, CorpusStage)],
            corpus_stages=[s for s in stages if isinstance(s, CorpusStage)],
            kept_schema=pa.schema({**CORE_COLUMNS, **stage_columns}),
            rejected_schema=pa.schema({**CORE_COLUMNS, **stage_columns, **REJECT_COLUMNS}),
            tally=reporting.Tally([s.name for s in stages]),
        )
        if config.executor == "ray":
            from indictune.data import ray_executor  # Ray is needed only here

            ray_executor.run(job)
        else:
            _run_local(job)
        job.kept.close()
        job.rejected.close()

        report = job.tally.report()
        (partial / "recipe.yaml").write_text(yaml.safe_dump(to_dict(config), allow_unicode=True, sort_keys=False))
        reporting.write(report, partial)
    return report


def _run_local(job: Job) -> None:
    config = job.config
    batches = _record_phase(config, job.record_stages, job.tally, job.rejected)
    spilled_columns = job.spilled_columns()
    for stage in job.corpus_stages:
        spill = job.partial / f"{stage.name}.spill"
        _observe_and_spill(stage, batches, ShardWriter(spill, pa.schema(spilled_columns), job.shard_bytes))
        spilled_columns.update(stage.columns)
        batches = _read_and_judge(stage, spill, config.batch_size)

    kept_writer = job.open_kept()
    for batch in batches:
        kept, rejected = _split(batch)
        job.tally.keep(kept)
        kept_writer.write(kept)
        job.tally.reject(rejected)
        job.rejected.write(rejected)

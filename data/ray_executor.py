"""The Ray executor: the pipeline's phases as Ray tasks over shards of the input, with the local output.

Shards, planned on the driver from each source's files, in input order: whole files (consecutive small files
of a source together, up to ``split_mb``); a set of row groups of a Parquet file; a byte range of a large
uncompressed UTF-8 ``jsonl`` or ``txt`` (``unit: line``) file, cut just after a line end. A source with
``limit`` is one shard (the limit counts across its files), an OCR source gives one shard per folder (a book is
a multi-page file or a folder of page files, and is never split), and compressed files, ``hf`` datasets and
other formats are read whole.

Records keep their local ids (``path#position``, the position as the reader numbers records in the file):
a byte range is read by the format's reader from a window holding only its bytes, and its positions and line
numbers are shifted by the records and lines before it, which a counting pass over every range (tasks too,
through the same ``text_lines`` the readers number records with) gives, summed on the driver.

A record task reads its shard, runs the record stages (built once on the driver, so decontamination's n-gram
index is built once, and shared through the object store; each worker process deserializes them once), and
writes its survivors and its rejects as two Parquet files, returning its part of the tally. It writes under a
name unique to the attempt and renames when complete, so a retried task (a worker killed: Ray's
``max_retries``) replaces, never duplicates, and a half-written file is never read. At most twice the
cluster's CPUs tasks are in flight, so memory stays bounded whatever the corpus size.

Then each corpus stage (``ray_corpus.judge_corpus_stage``) turns the survivor files into files of the same
rows, judged. Tasks cut each judged file into its kept and its corpus-rejected records, tallied, returning the
size of every row as the writers count it. The output streams are the record-phase rejects then the corpus
rejects (``rejected/``), and the kept records (``data/``), in input order. From the sizes alone, fetched one
file's worth at a time, the driver lays each stream out into files and row groups exactly as the local
executor's writers do (``pipeline.RowLayout``); one task per output file then writes it from the rows it holds,
so the output files equal the local executor's byte for byte and no process handles every record.
All files between phases live in ``<output_dir>.partial/ray``, which every node must see (a shared filesystem,
as for the inputs), and are deleted before the output is committed.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from tqdm.auto import tqdm

from indictune.data import pipeline
from indictune.data import report as reporting
from indictune.data.readers import (
    READERS,
    Source,
    decompressor,
    file_records,
    make_record,
    read,
    sniff,
    text_lines,
)
from indictune.data.readers.web import record_from_row
from indictune.data.stages import Record, Stage

NEWLINE_SEARCH = 1 << 20  # bytes read at a time when looking for the line end after a cut


@dataclass
class Shard:
    """A piece of one source that one task reads; shards in planning order are the input order."""

    source: Source
    paths: list[Path]  # the files read whole, in order; for a range, its one file
    row_groups: tuple[int, int] | None = None  # Parquet row groups [first, last)
    span: tuple[int, int] | None = None  # bytes [start, end) of a line-oriented file
    position: int = 0  # records of the file before this shard
    line: int = 0  # lines of the file before this byte range


def run(job: pipeline.Job) -> None:
    """The phases of ``pipeline.run`` on the Ray cluster at ``job.config.ray_address``, into `job`'s writers; a
    process already connected to Ray (a notebook, a test) uses its cluster, and stays connected."""
    from indictune.data.ray_corpus import judge_corpus_stage

    started = not ray.is_initialized()
    if started:
        # null is a new instance on this machine, whatever RAY_ADDRESS or a `ray start` here would pick
        ray.init(address=job.config.ray_address or "local", include_dashboard=False, logging_level="WARNING")
    work = job.partial / "ray"
    try:
        shards = plan(job.config.sources, job.config.split_mb * 2**20)
        survivors, record_rejects = _record_phase(job, shards, work / "records")
        for stage in job.corpus_stages:
            survivors = judge_corpus_stage(stage, survivors, work / stage.name)
        kept, corpus_rejects = _split_phase(job, survivors, work / "final")
        _write_phase(job.rejected, record_rejects + corpus_rejects, work / "write", "write rejected")
        _write_phase(job.open_kept(), kept, work / "write", "write data")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if started:
            ray.shutdown()


# Planning --------------------------------------------------------------------------------------------------------


def plan(sources: list[Source], split_bytes: int) -> list[Shard]:
    """The shards of every source, in input order, with every byte range's position and line offsets."""
    shards: list[Shard] = []
    for source in sources:
        files = source.files()
        if source.limit is not None:
            shards.append(Shard(source, files))
        elif source.kind == "ocr":
            shards += [Shard(source, list(group)) for _, group in groupby(files, key=lambda p: p.parent)]
        else:
            pieces = [piece for path in files for piece in _split_file(source, path, split_bytes)]
            shards += _group_small_files(pieces, split_bytes)
    _number_ranges(shards)
    return shards


def _group_small_files(shards: list[Shard], split_bytes: int) -> list[Shard]:
    """Consecutive whole files of one source read by one task while their bytes stay within `split_bytes`: a
    corpus of many small files costs a few tasks per `split_mb`, not several per file."""
    grouped: list[Shard] = []
    size = 0
    for shard in shards:
        whole = not (shard.row_groups or shard.span)
        here = shard.paths[0].stat().st_size if whole else 0
        last = grouped[-1] if grouped else None
        if whole and last is not None and not (last.row_groups or last.span) and size + here <= split_bytes:
            last.paths.append(shard.paths[0])
            size += here
        else:
            grouped.append(shard)
            size = here
    return grouped


def _split_file(source: Source, path: Path, split_bytes: int) -> list[Shard]:
    whole = [Shard(source, [path])]
    if source.format == "parquet":
        return _row_group_shards(source, path, split_bytes) or whole
    size = path.stat().st_size
    # jsonl and txt lines are numbered by text_lines, one per non-blank line: they can be read from any line on
    if not (source.format == "jsonl" or (source.format, source.unit) == ("txt", "line")) or size <= split_bytes:
        return whole
    with open(path, "rb") as handle:
        if decompressor(handle.read(10)) is not None:
            return whole  # a compressed stream cannot be entered in the middle
    if sniff(path) != "utf-8":
        return whole  # UTF-16/32 lines do not end at a b"\n" byte
    cuts = _line_cuts(path, size, split_bytes)
    return [Shard(source, [path], span=span) for span in zip([0, *cuts], [*cuts, size])]


def _line_cuts(path: Path, size: int, split_bytes: int) -> list[int]:
    """Offsets just after a line end, about `split_bytes` apart; never before a BOM (which a first line loses)."""
    cuts = []
    with open(path, "rb") as handle:
        target = split_bytes
        while target < size:
            handle.seek(target)
            cut = None
            while (chunk := handle.read(NEWLINE_SEARCH)) and cut is None:
                end = chunk.find(b"\n")
                if end >= 0:
                    cut = handle.tell() - len(chunk) + end + 1
            if cut is None or cut >= size:
                break
            handle.seek(cut)
            if handle.read(3) == b"\xef\xbb\xbf":
                target = cut + 1  # the next line end
                continue
            cuts.append(cut)
            target = cut + split_bytes
    return cuts


def _row_group_shards(source: Source, path: Path, split_bytes: int) -> list[Shard]:
    """Runs of row groups of about `split_bytes` (uncompressed); none for a file of one row group, or one that is
    not Parquet (the reader then rejects it whole)."""
    try:
        metadata = pq.read_metadata(path)
    except (pa.ArrowException, OSError):
        return []
    if metadata.num_row_groups < 2:
        return []
    shards, first, size, position, start = [], 0, 0, 0, 0
    for group in range(metadata.num_row_groups):
        size += metadata.row_group(group).total_byte_size
        position += metadata.row_group(group).num_rows
        if size >= split_bytes or group == metadata.num_row_groups - 1:
            shards.append(Shard(source, [path], row_groups=(first, group + 1), position=start))
            first, size, start = group + 1, 0, position
    return shards


def _number_ranges(shards: list[Shard]) -> None:
    """Set each byte range's position and line offsets from counts of the ranges before it in its file. A file
    whose ranges hold no record is read whole instead, so it gets its one ``no_records`` reject as locally."""
    ranges = [shard for shard in shards if shard.span]
    counts = _map(_count_range, [(shard, os.getcwd()) for shard in ranges], "count lines")
    dropped = set()
    for _, group in groupby(zip(ranges, counts), key=lambda pair: pair[0].paths[0]):
        group = list(group)
        position = line = 0
        for shard, (records, lines) in group:
            shard.position, shard.line = position, line
            position, line = position + records, line + lines
        if position == 0:
            group[0][0].span = None
            dropped |= {id(shard) for shard, _ in group[1:]}
    shards[:] = [shard for shard in shards if id(shard) not in dropped]


# Tasks -----------------------------------------------------------------------------------------------------------


def _map(task: Callable, calls: list[tuple], desc: str) -> list[Any]:
    """`task` over `calls`, results in call order, with at most twice the cluster's CPUs calls in flight."""
    limit = 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))
    results: list[Any] = [None] * len(calls)
    pending: dict[ray.ObjectRef, int] = {}
    with tqdm(total=len(calls), desc=desc, unit=" shards", leave=False, disable=None) as progress:
        for index, args in enumerate(calls):
            while len(pending) >= limit:
                _collect(pending, results, progress)
            pending[task.remote(*args)] = index
        while pending:
            _collect(pending, results, progress)
    return results


def _collect(pending: dict, results: list, progress: tqdm) -> None:
    [done], _ = ray.wait(list(pending), num_returns=1)
    results[pending.pop(done)] = ray.get(done)
    progress.update()


def _enter(cwd: str) -> None:
    """Work where the driver works: recipes name inputs relative to it, and ids keep the paths as written."""
    if os.getcwd() != cwd:
        os.chdir(cwd)


# Each worker process deserializes the record stages once (by object id), not once per task.
_STAGES: dict[str, list[Stage]] = {}


def _stages(ref: ray.ObjectRef) -> list[Stage]:
    if ref.hex() not in _STAGES:
        _STAGES.clear()
        _STAGES[ref.hex()] = ray.get(ref)
    return _STAGES[ref.hex()]


class _TaskFile:
    """One Parquet file, written under a name unique to this attempt and renamed into place when complete, with
    the size of every row as the output writers count it beside it (``sizes``)."""

    def __init__(self, path: Path, schema: pa.Schema):
        self.path, self.folder = path, path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
        self.writer = pipeline.ShardWriter(self.folder, schema, shard_bytes=sys.maxsize)
        self.sizes: list[np.ndarray] = []

    def write(self, records: list[Record]) -> None:
        self.write_batch(self.writer.to_batch(records))

    def write_batch(self, batch: pa.RecordBatch) -> None:
        self.sizes.append(pipeline.row_bytes(batch))
        self.writer.write_batch(batch)

    def close(self) -> None:
        self.writer.close()
        np.save(self.folder / "sizes.npy", np.concatenate([np.zeros(0, dtype=np.int64), *self.sizes]))
        os.replace(self.folder / "sizes.npy", sizes(self.path))
        os.replace(self.writer.path(0), self.path)
        shutil.rmtree(self.folder)


def sizes(path: Path) -> Path:
    """Where the row sizes of a task's Parquet file are: the driver lays the output out from them alone."""
    return path.with_name(path.name + ".sizes.npy")


# A worker killed mid-task (out of memory, a node lost) makes Ray run the task again, up to this many times.
RETRIES = 3


@ray.remote(max_retries=RETRIES)
def _count_range(shard: Shard, cwd: str) -> tuple[int, int]:
    """(records, lines) of a byte range, numbered as the reader numbers them."""
    _enter(cwd)
    with _window(shard) as window:
        records = sum(1 for _ in text_lines(shard.source, window, lambda position, where, line: None))
        with open(window, "rb") as handle:
            lines = sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 24), b""))
    return records, lines


@ray.remote(max_retries=RETRIES)
def _record_task(
    shard: Shard,
    stages: list[ray.ObjectRef],
    cwd: str,
    batch_size: int,
    schemas: tuple[pa.Schema, pa.Schema],
    out: Path,
) -> reporting.Tally:
    """The shard through the record stages: survivors to ``<out>.kept.parquet``, rejects to ``.rejected.parquet``
    (`stages` holds the stages' object ref in a list, so that Ray does not deserialize them for every task).
    Returns its tally."""
    _enter(cwd)
    record_stages = _stages(stages[0])
    tally = reporting.Tally([])
    survivors, rejects = _task_files(out, schemas)
    for batch in pipeline._batches(_records(shard), batch_size):
        tally.count_input(shard.source.name, len(batch))
        kept, rejected = pipeline.run_stages(record_stages, batch)
        tally.reject(rejected)
        survivors.write(kept)
        rejects.write(rejected)
    survivors.close()
    rejects.close()
    return tally


def _record_phase(job: pipeline.Job, shards: list[Shard], out: Path) -> tuple[list[Path], list[Path]]:
    """Every shard through the record stages; (survivor files, reject files), in input order."""
    stages = ray.put(job.record_stages)  # built once, decontamination's index included
    schemas = (pa.schema(job.spilled_columns()), job.rejected_schema)
    return _phase(
        job, _record_task, shards, ([stages], os.getcwd(), job.config.batch_size, schemas), out, "record stages"
    )


def _task_files(out: Path, schemas: tuple[pa.Schema, pa.Schema]) -> tuple[_TaskFile, _TaskFile]:
    """A task's two outputs, ``<out>.kept.parquet`` and ``<out>.rejected.parquet``, in those schemas."""
    return _TaskFile(_kept(out), schemas[0]), _TaskFile(_rejected(out), schemas[1])


def _kept(out: Path) -> Path:
    return out.with_name(out.name + ".kept.parquet")


def _rejected(out: Path) -> Path:
    return out.with_name(out.name + ".rejected.parquet")


def _phase(
    job: pipeline.Job, task: Callable, inputs: list, args: tuple, out: Path, desc: str
) -> tuple[list[Path], list[Path]]:
    """``task(input, *args, name)`` for every input, each writing its ``_task_files(name)`` and returning its
    tally, merged here; (kept files, rejected files), in input order."""
    names = [out / f"{index:06d}" for index in range(len(inputs))]
    for part in _map(task, [(item, *args, name) for item, name in zip(inputs, names)], desc):
        job.tally.merge(part)
    return [_kept(name) for name in names], [_rejected(name) for name in names]


@ray.remote(max_retries=RETRIES)
def _split_task(path: Path, schemas: tuple[pa.Schema, pa.Schema], out: Path) -> reporting.Tally:
    """A judged file cut in two, each in its writer's schema: the kept records (``<out>.kept.parquet``) and the
    ones a corpus stage rejected (``.rejected.parquet``); returns their tally."""
    tally = reporting.Tally([])
    kept, rejects = _task_files(out, schemas)
    with pq.ParquetFile(path, pre_buffer=False) as parquet:
        for batch in parquet.iter_batches():
            marked = pc.is_valid(batch["reason"])
            for target, rows, count in (
                (rejects, batch.filter(marked), tally.reject),
                (kept, batch.filter(pc.invert(marked)), tally.keep),
            ):
                if rows.num_rows:
                    schema = target.writer.schema
                    table = pa.Table.from_batches([rows]).select(schema.names).cast(schema)
                    for part in table.to_batches():
                        target.write_batch(part)
                    count(table.to_pylist())  # the rows as written, counted by the same split
    kept.close()
    rejects.close()
    return tally


def _split_phase(job: pipeline.Job, judged: list[Path], out: Path) -> tuple[list[Path], list[Path]]:
    """The judged files cut into kept and rejected files, tallied; (kept files, reject files), in input order."""
    return _phase(job, _split_task, judged, ((job.kept_schema, job.rejected_schema),), out, "split")


# Reading ---------------------------------------------------------------------------------------------------------


def _records(shard: Shard) -> Iterator[Record]:
    source = shard.source
    if source.limit is not None:
        yield from read(source)
    elif shard.row_groups:
        yield from _row_group_records(shard)
    elif shard.span:
        yield from _range_records(shard)
    else:
        for path in shard.paths:
            yield from file_records(source, path)


def _row_group_records(shard: Shard) -> Iterator[Record]:
    """As ``read_parquet`` numbers, describes and rejects them, for this shard's row groups only."""
    source, path, position = shard.source, shard.paths[0], shard.position
    try:
        with pq.ParquetFile(path, pre_buffer=False) as parquet:
            for batch in parquet.iter_batches(batch_size=1024, row_groups=range(*shard.row_groups)):
                for row in batch.to_pylist():
                    yield record_from_row(source, path, position, row, f"row {position}")
                    position += 1
    except pa.ArrowException as err:
        yield make_record(source, path, position, "", read_error="invalid_parquet", where="file", error=str(err)[:200])


def _range_records(shard: Shard) -> Iterator[Record]:
    """The format's reader over the range alone, its ids and line numbers shifted to the file's."""
    path = shard.paths[0].as_posix()
    with _window(shard) as window:
        for record in READERS[shard.source.format](shard.source, window):
            position = int(record["id"].rsplit("#", 1)[1])
            record["id"] = f"{path}#{shard.position + position}"
            line = int(record["meta"]["where"].removeprefix("line "))
            record["meta"]["where"] = f"line {shard.line + line}"
            yield record


@contextmanager
def _window(shard: Shard) -> Iterator[Path]:
    """A temporary file holding only the shard's bytes, for readers, which read whole files."""
    start, end = shard.span
    with tempfile.TemporaryDirectory(prefix="indictune-range-") as folder:
        window = Path(folder) / shard.paths[0].name
        with open(shard.paths[0], "rb") as source, open(window, "wb") as target:
            source.seek(start)
            remaining = end - start
            while remaining and (chunk := source.read(min(remaining, 1 << 24))):
                target.write(chunk)
                remaining -= len(chunk)
        yield window


# Writing ---------------------------------------------------------------------------------------------------------

# Rows [start, stop) of one file of a stream; a row group of the output is a list of them, an output file a list of
# row groups.
Piece = tuple[str, int, int]


def _write_phase(writer: pipeline.ShardWriter, streams: list[Path], work: Path, desc: str) -> None:
    """The rows of the stream files, in order, into `writer`'s folder as it would write them: the driver lays the
    output out from the rows' sizes alone (``RowLayout``, reading one file's sizes at a time), then one task per
    output file writes it, reading only its rows."""
    files = _lay_out(pipeline.RowLayout(writer.layout.shard_bytes, writer.layout.shard_records), streams)
    work.mkdir(parents=True, exist_ok=True)
    calls = [(groups, writer.schema, writer.path(index), work) for index, groups in enumerate(files)]
    _map(_write_task, calls, desc)
    writer.written_elsewhere(len(files))


def _lay_out(layout: pipeline.RowLayout, streams: list[Path]) -> list[list[list[Piece]]]:
    files: list[list[list[Piece]]] = []
    groups: list[list[Piece]] = []
    group: list[Piece] = []
    for path in streams:
        rows = np.load(sizes(path))
        start = 0
        for end, ends_file in layout.place(rows):
            groups.append([*group, (str(path), start, end)])
            group, start = [], end
            if ends_file:
                files.append(groups)
                groups = []
        if start < len(rows):
            group.append((str(path), start, len(rows)))
    if group:
        layout.finish()
        groups.append(group)
    if groups:
        files.append(groups)
    return files


@ray.remote(max_retries=RETRIES)
def _write_task(groups: list[list[Piece]], schema: pa.Schema, target: Path, work: Path) -> None:
    """One output file, row group by row group, under a name unique to this attempt, then renamed into place."""
    rows = _StreamRows()
    partial = work / f"{target.name}.{uuid.uuid4().hex}.tmp"
    with pq.ParquetWriter(partial, schema) as parquet:
        for group in groups:
            table = pipeline.row_group([rows.take(*piece) for piece in group], schema)
            parquet.write_table(table, row_group_size=table.num_rows)
    os.replace(partial, target)


class _StreamRows:
    """Rows of Parquet files read a row group at a time; the last row group read is kept, so rows asked for in
    order read every row group once."""

    def __init__(self) -> None:
        self.path: str | None = None
        self.starts = np.zeros(0, dtype=np.int64)
        self.group, self.table = -1, pa.table({})

    def take(self, path: str, start: int, stop: int) -> pa.Table:
        if path != self.path:
            metadata = pq.read_metadata(path)
            counts = [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)]
            self.path, self.starts, self.group = path, np.cumsum([0, *counts]), -1
        pieces = []
        while start < stop:
            group = int(np.searchsorted(self.starts, start, side="right")) - 1
            if group != self.group:
                with pq.ParquetFile(path, pre_buffer=False) as parquet:
                    self.group, self.table = group, parquet.read_row_group(group)
            first = int(self.starts[group])
            length = min(stop, first + self.table.num_rows) - start
            pieces.append(self.table.slice(start - first, length))
            start += length
        return pa.concat_tables(pieces)

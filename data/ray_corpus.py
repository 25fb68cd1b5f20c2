"""The corpus stages (repeated lines, exact and near duplicates) as Ray tasks, giving exactly the local result.

No process holds every record's keys or signatures, nor the whole candidate graph: per-shard tasks read one
shard and cut what they computed into P hash partitions; reducer tasks each see one partition; what a shard's
records need comes back to that shard's task by the same kind of shuffle (a join). A task writes its outputs,
one per receiver, to one file beside the stage's output (``_Tasks``), and each receiver reads its part: Ray
carries S + P small handles per step of S shards and P partitions, and the driver holds those handles and
counts only.

Global order. The local executor numbers the records a stage observes (not marked, of its kinds) in input
order. Here one task per shard counts them and the driver takes prefix sums: shard s holds indices
``offsets[s] .. offsets[s+1]-1``, so every task knows its records' indices and which shard holds any index.

Repeated lines. Per shard, each observed document's distinct line keys (``RepeatedLines.document_keys``,
the local key) go to reducer ``key % P``, which counts documents per key and keeps those reaching
``min_documents``. It does not broadcast that set: a corpus with many copies of a long document makes
every one of its lines "repeated", so the set can be large. Each reducer sends a shard only the repeated
keys that shard holds, and the shard's task judges with ``RepeatedLines.remove_lines``, the local code.

Exact duplicates. Each observed record's key (``exact_key``, the local one) goes with its index to reducer
``key % P``; per key the least index is the first; every other record is an exact duplicate, with the
edge (first, index).

Near duplicates. Locally, ``Dedup.observe`` puts every record that is not an exact duplicate into one
bucket per band, compares it with the bucket's first record (the one of least index), and unions the two
when ``Dedup.similar``; union-find keeps the earlier record as root; an exact duplicate is unioned with its
first and enters no bucket. A comparison is skipped when the two are already in one cluster, which never
changes a cluster, and union-find's clusters are the connected components of the unions made. So the
clusters are the connected components of E = {exact edges} u {(first of bucket, member) : similar}, each
kept record being its component's least index. Here: signatures on the shards' tasks (``Dedup.signature``,
same shingles) for the records that are not exact duplicates; (band, band key, index) to reducer
``(band key + band) % P``, so each bucket lives on one reducer, which emits (first, member) for every
other member; the pair is verified by a two-step join: grouped by the shard of `first`, whose task attaches
that signature, then by the shard of `member`, whose task compares the two with ``Dedup.similar``.

Connected components: large-star / small-star (Kiveris et al., "Connected components in MapReduce and
beyond", 2014) over edges hash-partitioned by node. Min-label propagation needs as many rounds as the
longest shortest path in a cluster, and low thresholds make long chains of near duplicates; these two
alternating steps need O(log n) rounds and end in one star per component around its least node. A
large-star task sees the whole neighbourhood of its nodes, so it also tells whether the graph already is
that (no node has both a smaller and a larger neighbour, none has two smaller ones); the driver reads only
those P flags. The star's centre then knows its component's size and members: it sends (member, root,
size) to the shard holding the root, whose task attaches the root's id (``duplicate_of``), and on to the
member's shard, where ``Dedup.mark`` fills the columns as ``Dedup.process`` does.

Memory per task: one shard, or one partition of one shuffle. Per-shard tasks are spread over the nodes.
Every task is deterministic, so a task Ray retries after a worker dies gives the same output.
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from indictune.core import text
from indictune.data.stages import CorpusStage, Record
from indictune.data.stages.dedup import Dedup, RepeatedLines, exact_key

log = logging.getLogger(__name__)

_SPREAD = {"scheduling_strategy": "SPREAD"}  # shards are files every node reads: spread their tasks
_NO_EDGES = np.zeros((0, 2), dtype=np.int64)


class RayCorpusError(RuntimeError):
    """A corpus stage that cannot run on Ray as asked; the message says why and what to do."""


def judge_corpus_stage(
    stage: CorpusStage, shards: list[Path], output_dir: Path, *, partitions: int | None = None
) -> list[Path]:
    """Ray must be initialised. `shards`: Parquet files in input order, each holding records of the spilled
    schema (core columns id, text, lang, script, source, kind, meta (a JSON string), the record stages'
    annotation columns, and `stage`/`reason` strings, set for records an earlier corpus stage rejected).
    Returns one Parquet file per input shard (in output_dir), same rows in the same order, with the stage's
    columns (stage.columns) added and the records the stage rejects marked with stage/reason — exactly what
    the local executor's observe/finish_observing/process sequence gives over the concatenated shards.
    Records already marked (reason set), or of kinds the stage does not apply to (stage.kinds), pass untouched
    (their new columns null). `partitions`: reducers per shuffle (default: the cluster's CPUs); the output is
    the same for any number."""
    if not ray.is_initialized():
        raise RayCorpusError("judge_corpus_stage needs a Ray connection: call ray.init(address=...) first")
    distributed = _DISTRIBUTED.get(type(stage))
    if distributed is None:
        raise RayCorpusError(
            f"corpus stage {stage.name!r} ({type(stage).__name__}) has no distributed form; "
            f"those that do: {', '.join(cls.name for cls in _DISTRIBUTED)}"
        )
    if partitions is not None and partitions < 1:
        raise RayCorpusError(f"partitions must be at least 1, not {partitions}")
    parts = partitions or max(1, int(ray.cluster_resources().get("CPU", 1)))
    output_dir.mkdir(parents=True, exist_ok=True)
    outputs = [output_dir / f"part-{i:05d}.parquet" for i in range(len(shards))]
    if shards:
        exchange = output_dir / "exchange"
        exchange.mkdir(exist_ok=True)
        tasks = _Tasks(exchange)
        ray.get(distributed(tasks, stage, [str(p) for p in shards], [str(p) for p in outputs], parts))
        for label, counts in tasks.counts().items():
            log.info("%s: %s per task %s", stage.name, label, counts)
        shutil.rmtree(exchange)
    return outputs


# shared pieces ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Part:
    """Output `index` of a task whose outputs went to one file; the task receiving it reads just that part."""

    handle: ray.ObjectRef  # to (file, byte offsets of the outputs, count received)
    index: int


class _Tasks:
    """Runs the stage's tasks through ``_run``. A task's outputs, one per receiving task (then a count of what it
    received), go to one file in `folder`, on the filesystem every node sees; Ray holds only the file's small
    handle. So a shuffle step of S senders and P receivers makes S + P objects, not S x P (each object costs
    its owner, the driver, about 2 KB), and no output is small enough for Ray to keep inline in the driver's
    memory. The counts' handles are kept: the log then shows each shuffle's balance (a reducer holding nearly
    everything would show)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.handles: dict[str, list[ray.ObjectRef]] = {}

    def submit(self, label: str, fn: Callable, returns: int, *args, spread: bool = False) -> list[_Part]:
        handle = _run.options(**(_SPREAD if spread else {})).remote(fn, returns, str(self.folder), *_unpack(args))
        self.handles.setdefault(label, []).append(handle)
        return [_Part(handle, index) for index in range(returns)]

    def value(self, fn: Callable, *args) -> ray.ObjectRef:
        """A per-shard task whose result comes back as it is (a count)."""
        return _run.options(**_SPREAD).remote(fn, 0, None, *_unpack(args))

    def counts(self) -> dict[str, list[int]]:
        return {label: [count for _, _, count in ray.get(handles)] for label, handles in self.handles.items()}


def _unpack(args: tuple) -> list:
    """A part as its handle's reference, which Ray resolves before the task starts (a ``ray.get`` inside the task
    would block its worker, and Ray would start more workers than CPUs), and the part's index; other arguments as
    they are."""
    parts = [arg.index if isinstance(arg, _Part) else None for arg in args]
    return [parts, *(arg.handle if isinstance(arg, _Part) else arg for arg in args)]


@ray.remote
def _run(fn: Callable, returns: int, folder: str | None, parts: list[int | None], *args: Any) -> Any:
    """`fn` on its arguments (``parts[i]`` set: argument i is that part of a handle's file); with `returns`, its
    outputs written to one file, under a name unique to this attempt (a retried task writes a new one; the
    folder goes when the stage ends)."""
    result = fn(*(arg if index is None else _read_part(arg, index) for arg, index in zip(args, parts)))
    if not returns:
        return result
    *outputs, count = result
    blobs = [pickle.dumps(output, protocol=5) for output in outputs]
    path = Path(folder) / f"{uuid.uuid4().hex}.parts"
    partial = path.with_suffix(".tmp")
    with open(partial, "wb") as handle:
        for blob in blobs:
            handle.write(blob)
    os.replace(partial, path)
    return str(path), np.cumsum([0, *map(len, blobs)]), count


def _read_part(handle: tuple[str, np.ndarray, int], index: int) -> Any:
    path, offsets, _ = handle
    with open(path, "rb") as file:
        file.seek(int(offsets[index]))
        return pickle.loads(file.read(int(offsets[index + 1] - offsets[index])))


def _read(path: str, kinds: Sequence[str], columns: list[str] | None) -> tuple[list[Record], list[bool]]:
    """The shard's rows (`columns` only; None: all) and which of them the stage observes, as the local
    executor decides."""
    wanted = None if columns is None else list(dict.fromkeys([*columns, "kind", "reason"]))
    rows = pq.read_table(path, columns=wanted).to_pylist()
    return rows, [not row["reason"] and row["kind"] in kinds for row in rows]


def _observed(path: str, kinds: Sequence[str], columns: list[str]) -> list[Record]:
    rows, observed = _read(path, kinds, columns)
    return [row for row, seen in zip(rows, observed) if seen]


def _split(part: np.ndarray, parts: int, *columns: np.ndarray) -> list[tuple[np.ndarray, ...]]:
    """Rows of `columns` grouped by `part` (ints in [0, parts)), one group per part, each in row order."""
    order = np.argsort(part, kind="stable")
    bounds = np.searchsorted(part[order], np.arange(parts + 1))
    return [tuple(c[order[a:b]] for c in columns) for a, b in zip(bounds, bounds[1:])]


def _shard_of(index: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    return np.searchsorted(offsets, index, side="right") - 1


def _group_starts(*sorted_columns: np.ndarray) -> np.ndarray:
    """True where a run of equal rows begins, for columns sorted together."""
    starts = np.ones(len(sorted_columns[0]), dtype=bool)
    for column in sorted_columns:
        starts[1:] &= column[1:] == column[:-1]
    starts[1:] = ~starts[1:]
    return starts


def _firsts(starts: np.ndarray, values: np.ndarray) -> np.ndarray:
    """For every row, `values` at the start of its group."""
    return values[np.maximum.accumulate(np.where(starts, np.arange(len(starts)), 0))]


def _route(a: np.ndarray, b: np.ndarray, parts: int) -> list[np.ndarray]:
    """Undirected edges {a, b} as the large-star step reads them: (a, b) and (b, a), each with its first node."""
    edges = np.concatenate([np.stack([a, b], axis=1), np.stack([b, a], axis=1)]).astype(np.int64)
    return [e for (e,) in _split(edges[:, 0] % parts, parts, edges)]


def _edges(*edge_parts: np.ndarray) -> np.ndarray:
    """One partition's directed edges, each once, sorted by node then neighbour."""
    return np.unique(np.concatenate([_NO_EDGES, *edge_parts]), axis=0)


def _write(path: str, out: str, records: list[Record], stage: CorpusStage) -> None:
    schema = pq.read_schema(path)
    schema = pa.schema({**dict(zip(schema.names, schema.types)), **stage.columns})
    partial = f"{out}.partial"
    pq.write_table(pa.Table.from_pylist(records, schema=schema), partial)
    os.replace(partial, out)  # a retried task rewrites the file whole


def _judge_shard(path: str, out: str, stage: CorpusStage, verdict: Callable[[int, Record], str | None]) -> int:
    """Write the shard with `verdict(j, record)` applied to its j-th observed record, as ``pipeline._judge``."""
    records, observed = _read(path, stage.kinds, None)
    j = 0
    for record, seen in zip(records, observed):
        if seen:
            if reason := verdict(j, record):
                record.update(stage=stage.name, reason=reason)
            j += 1
    _write(path, out, records, stage)
    return j


# repeated lines --------------------------------------------------------------------------------------------------


def _line_keys(stage: RepeatedLines, path: str, parts: int) -> list:
    records = _observed(path, stage.kinds, ["text", "source"])
    keys = np.fromiter((key for r in records for key in stage.document_keys(r)), dtype=np.uint64)
    return [k for (k,) in _split(keys % np.uint64(parts), parts, keys)] + [len(keys)]


def _count_lines(min_documents: int, *per_shard: np.ndarray) -> list:
    keys, documents = np.unique(np.concatenate(per_shard), return_counts=True)
    repeated = keys[documents >= min_documents]
    return [np.intersect1d(repeated, shard_keys) for shard_keys in per_shard] + [len(keys)]


def _remove_lines(stage: RepeatedLines, path: str, out: str, *repeated: np.ndarray) -> int:
    keys = set(np.concatenate(repeated).tolist())
    return _judge_shard(path, out, stage, lambda _, record: stage.remove_lines(record, keys))


def _repeated_lines(
    tasks: _Tasks, stage: RepeatedLines, shards: list[str], outputs: list[str], parts: int
) -> list[ray.ObjectRef]:
    stage_ref, n = ray.put(stage), len(shards)
    keys = [tasks.submit("line keys", _line_keys, parts, stage_ref, path, parts, spread=True) for path in shards]
    counted = [
        tasks.submit("distinct keys", _count_lines, n, stage.config.min_documents, *(k[r] for k in keys))
        for r in range(parts)
    ]
    return [
        tasks.value(_remove_lines, stage_ref, path, out, *(c[s] for c in counted))
        for s, (path, out) in enumerate(zip(shards, outputs))
    ]


# duplicates ------------------------------------------------------------------------------------------------------


def _count(kinds: Sequence[str], path: str) -> int:
    return sum(_read(path, kinds, [])[1])


def _exact_keys(stage: Dedup, path: str, offset: int, parts: int) -> list:
    records = _observed(path, stage.kinds, ["text"])
    digests = b"".join(bytes.fromhex(exact_key(text.key_words_text(r["text"]))) for r in records)
    keys = np.frombuffer(digests, dtype=np.uint64).reshape(-1, 2)
    index = offset + np.arange(len(records), dtype=np.int64)
    return _split(keys[:, 0] % np.uint64(parts), parts, keys, index) + [len(records)]


def _first_of_key(offsets: np.ndarray, parts: int, *per_shard: tuple[np.ndarray, np.ndarray]) -> list:
    """Per exact key, the least index is the first; the others are exact duplicates: their indices by shard,
    and the edges (first, duplicate) routed for the components."""
    keys = np.concatenate([k for k, _ in per_shard])
    index = np.concatenate([i for _, i in per_shard])
    order = np.lexsort((index, keys[:, 1], keys[:, 0]))
    keys, index = keys[order], index[order]
    starts = _group_starts(keys[:, 0], keys[:, 1])
    first, duplicate = _firsts(starts, index)[~starts], index[~starts]
    by_shard = [d for (d,) in _split(_shard_of(duplicate, offsets), len(offsets) - 1, duplicate)]
    return by_shard + _route(first, duplicate, parts) + [len(index)]


def _signatures(stage: Dedup, path: str, offset: int, parts: int, *exact_duplicates: np.ndarray) -> list:
    """This shard's signatures (indices, matrix) of records that are not exact duplicates, and their band keys
    by partition."""
    records = _observed(path, stage.kinds, ["text"])
    index = offset + np.arange(len(records), dtype=np.int64)
    signed = ~np.isin(index, np.concatenate([np.zeros(0, dtype=np.int64), *exact_duplicates]))
    index = index[signed]
    num_perm, bands = stage.config.num_perm, stage.config.bands
    matrix = np.zeros((len(index), num_perm), dtype=np.uint32)
    band_keys = np.zeros((len(index), bands), dtype=np.uint64)
    for row, record in enumerate(r for r, keep in zip(records, signed) if keep):
        matrix[row] = stage.signature(record["text"])
        band_keys[row] = stage.band_keys(matrix[row])
    band = np.tile(np.arange(bands, dtype=np.uint64), len(index))
    keys, members = band_keys.ravel(), np.repeat(index, bands)
    buckets = _split((keys + band) % np.uint64(parts), parts, band, keys, members)
    return [(index, matrix), *buckets, len(index)]


def _bucket_pairs(offsets: np.ndarray, *per_shard: tuple[np.ndarray, np.ndarray, np.ndarray]) -> list:
    """Per bucket (band, band key), the pairs (first, member) that ``Dedup.observe`` compares, by shard of first."""
    band, keys, members = (np.concatenate(column) for column in zip(*per_shard))
    order = np.lexsort((members, keys, band))
    band, keys, members = band[order], keys[order], members[order]
    starts = _group_starts(band, keys)
    pairs = np.stack([_firsts(starts, members)[~starts], members[~starts]], axis=1)
    return [p for (p,) in _split(_shard_of(pairs[:, 0], offsets), len(offsets) - 1, pairs)] + [len(members)]


def _attach_first(store: tuple[np.ndarray, np.ndarray], offsets: np.ndarray, *pairs: np.ndarray) -> list:
    """The pairs whose first record this shard holds, with its signature, by shard of the other record."""
    pairs = _edges(*pairs)  # a pair that shares several bands is compared once
    index, matrix = store
    first = matrix[np.searchsorted(index, pairs[:, 0])]
    return _split(_shard_of(pairs[:, 1], offsets), len(offsets) - 1, pairs, first) + [len(pairs)]


def _verify(stage: Dedup, store: tuple[np.ndarray, np.ndarray], parts: int, *attached: tuple) -> list:
    """The pairs whose other record this shard holds, kept when ``Dedup.similar``, routed for the components."""
    index, matrix = store
    pairs = np.concatenate([_NO_EDGES, *(p for p, _ in attached)])
    first = np.concatenate([np.zeros((0, matrix.shape[1]), dtype=np.uint32), *(f for _, f in attached)])
    similar = stage.similar(first, matrix[np.searchsorted(index, pairs[:, 1])])
    return _route(pairs[similar, 0], pairs[similar, 1], parts) + [len(pairs)]


def _large_star(parts: int, *edge_parts: np.ndarray) -> list:
    """Large-star: every larger neighbour of a node joins the least of its neighbourhood. Also whether the
    graph already is one star per component, around its least node (then nothing here changes)."""
    edges = _edges(*edge_parts)
    node, neighbour = edges[:, 0], edges[:, 1]
    starts = _group_starts(node)
    least = np.minimum(node, _firsts(starts, neighbour))  # neighbours are sorted: the first is the least
    groups = np.flatnonzero(starts)
    smaller = np.add.reduceat(neighbour < node, groups) if len(groups) else groups
    larger = np.add.reduceat(neighbour > node, groups) if len(groups) else groups
    settled = bool(np.all((smaller == 0) | ((smaller == 1) & (larger == 0))))
    up = neighbour > node
    hi, lo = neighbour[up], least[up]
    return [e for (e,) in _split(hi % parts, parts, np.stack([hi, lo], axis=1))] + [settled, len(edges)]


def _small_star(parts: int, *edge_parts: np.ndarray) -> list:
    """Small-star: a node and its smaller neighbours all join the least of them. Reads (node, smaller one)."""
    edges = _edges(*edge_parts)
    node, neighbour = edges[:, 0], edges[:, 1]
    starts = _group_starts(node)
    least = _firsts(starts, neighbour)
    a = np.concatenate([node[starts], neighbour[~starts]])
    b = np.concatenate([least[starts], least[~starts]])
    return _route(a, b, parts) + [len(edges)]


def _clusters(offsets: np.ndarray, *edge_parts: np.ndarray) -> list:
    """From the settled stars: (member, root, size) for every clustered record, by shard of the root."""
    edges = _edges(*edge_parts)
    node, neighbour = edges[:, 0], edges[:, 1]
    starts = _group_starts(node)
    centre = node[starts][neighbour[starts] > node[starts]]  # a centre's neighbours are all larger
    leaves = edges[np.isin(node, centre)]
    sizes = 1 + np.bincount(np.searchsorted(centre, leaves[:, 0]), minlength=len(centre))
    member = np.concatenate([centre, leaves[:, 1]])
    root = np.concatenate([centre, leaves[:, 0]])
    size = np.concatenate([sizes, sizes[np.searchsorted(centre, leaves[:, 0])]])
    return _split(_shard_of(root, offsets), len(offsets) - 1, member, root, size) + [len(member)]


def _name_roots(stage: Dedup, path: str, offset: int, offsets: np.ndarray, *clustered: tuple) -> list:
    """Attach the id of each root this shard holds (the record kept), and send the rows to their members' shards."""
    ids = np.array([r["id"] for r in _observed(path, stage.kinds, ["id"])], dtype=object)
    member, root, size = (np.concatenate(column) for column in zip(*clustered))
    root_id = ids[root - offset]
    return _split(_shard_of(member, offsets), len(offsets) - 1, member, root, root_id, size) + [len(member)]


def _mark(stage: Dedup, path: str, out: str, offset: int, exact_parts: int, *parts: tuple | np.ndarray) -> int:
    """Fill the columns of this shard's records as ``Dedup.process`` does (exact_parts: how many of `parts`
    hold exact duplicates' indices; the others hold (member, root, root id, size) rows)."""
    exact = set(np.concatenate([np.zeros(0, dtype=np.int64), *parts[:exact_parts]]).tolist())
    clusters = {int(m): (int(r), i, int(n)) for rows in parts[exact_parts:] for m, r, i, n in zip(*rows, strict=True)}

    def verdict(j: int, record: Record) -> str | None:
        index = offset + j
        key = exact_key(text.key_words_text(record["text"]))
        root, root_id, size = clusters.get(index, (index, None, 1))
        if root == index:
            return Dedup.mark(record, key, size)
        return Dedup.mark(record, key, size, root_id, index in exact)

    return _judge_shard(path, out, stage, verdict)


def _dedup(tasks: _Tasks, stage: Dedup, shards: list[str], outputs: list[str], parts: int) -> list[ray.ObjectRef]:
    stage_ref, config, n = ray.put(stage), stage.config, len(shards)
    counts = ray.get([tasks.value(_count, stage.kinds, path) for path in shards])
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    edges: list[list[ray.ObjectRef]] = [[] for _ in range(parts)]  # per partition of the components
    exact: list[list[ray.ObjectRef]] = [[] for _ in range(n)]  # per shard, its exact duplicates' indices
    if config.exact:
        keys = [
            tasks.submit("records keyed", _exact_keys, parts, stage_ref, path, int(offsets[s]), parts, spread=True)
            for s, path in enumerate(shards)
        ]
        for r in range(parts):
            out = tasks.submit("exact keys", _first_of_key, n + parts, offsets, parts, *(k[r] for k in keys))
            for s in range(n):
                exact[s].append(out[s])
            for p in range(parts):
                edges[p].append(out[n + p])
    if config.near:
        signed = [
            tasks.submit(
                "signatures", _signatures, 1 + parts, stage_ref, path, int(offsets[s]), parts, *exact[s], spread=True
            )
            for s, path in enumerate(shards)
        ]
        pairs = [
            tasks.submit("bucket entries", _bucket_pairs, n, offsets, *(x[1 + r] for x in signed)) for r in range(parts)
        ]
        attached = [
            tasks.submit(
                "candidate pairs", _attach_first, n, signed[s][0], offsets, *(p[s] for p in pairs), spread=True
            )
            for s in range(n)
        ]
        for t in range(n):
            verified = tasks.submit(
                "pairs verified", _verify, parts, stage_ref, signed[t][0], parts, *(a[t] for a in attached), spread=True
            )
            for p in range(parts):
                edges[p].append(verified[p])
    rounds = 0
    while True:
        large = [tasks.submit("large-star edges", _large_star, parts + 1, parts, *edges[p]) for p in range(parts)]
        if all(_read_part(ray.get(x[parts].handle), x[parts].index) for x in large):
            break
        small = [
            tasks.submit("small-star edges", _small_star, parts, parts, *(x[p] for x in large)) for p in range(parts)
        ]
        edges = [[x[p] for x in small] for p in range(parts)]
        rounds += 1
    log.info("%s: components settled after %d large-star/small-star rounds", stage.name, rounds)
    clustered = [tasks.submit("settled edges", _clusters, n, offsets, *edges[p]) for p in range(parts)]
    named = [
        tasks.submit(
            "clustered",
            _name_roots,
            n,
            stage_ref,
            path,
            int(offsets[s]),
            offsets,
            *(c[s] for c in clustered),
            spread=True,
        )
        for s, path in enumerate(shards)
    ]
    return [
        tasks.value(_mark, stage_ref, path, out, int(offsets[s]), len(exact[s]), *exact[s], *(x[s] for x in named))
        for s, (path, out) in enumerate(zip(shards, outputs))
    ]


_DISTRIBUTED: dict[type[CorpusStage], Callable[..., list[ray.ObjectRef]]] = {
    RepeatedLines: _repeated_lines,
    Dedup: _dedup,
}

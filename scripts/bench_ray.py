"""The data recipe on Ray against the local executor, datatrove and rensa, in one run on one machine.

    pip install -e '.[ray,bench]'   # Ray; datatrove (its JsonlReader needs orjson) and rensa
    python scripts/bench_ray.py [--shared ../shared/data] [--files 16] [--planted 300] [--repeats 3]
                                [--documents N] [--network_gbit 25] [--json runs/bench_ray.json]

Input, generated from ../shared/data: the Marathi and Bengali Wikipedia articles of 50+ words (our MediaWiki
reader), FLORES-200 dev sentences of twelve languages ten to a document (the first 700 of each language; the
other 297 are the decontamination set), and the L3Cube news headlines twenty to a document. Documents with a
near duplicate among them (Jaccard 0.5 and up: wiki stubs built from one template) are left out. Then
``--planted`` copies of documents, each with 1% of its words (at least one) replaced by other words of its
language, are written into a different file from their original, at a random place. ``--files`` JSONL files in
all (``doc``, ``text``, ``lang``): the corpus of 2N documents; its first half of the files is the one of N.

Measured, in this order and in this one run:

1. Whole recipe (every stage: normalize, identify, pii, quality, decontaminate, repeated_lines, dedup), MB/s of
   input text: the local executor with ``num_proc`` 1 and 2, and the Ray executor on a fresh
   ``ray.init(num_cpus=N)`` with N = 1 and 2 (the clock runs from ``pipeline.run`` to its return: the Ray
   instance's start is left out, its workers' imports and everything else are in). The four configurations run
   in turn, ``--repeats`` times; each one's fastest run counts. Also whether the Ray output files equal the
   local ones byte for byte.
2. Peak memory during dedup on Ray (2 CPUs), at N and 2N documents: ``judge_corpus_stage`` with the dedup
   stage alone, over one Parquet file per input file, in a fresh driver process that starts Ray; a thread
   there lists Ray's task worker processes (``ray::`` processes under the driver, not Ray's agents) every
   0.1 s and reads each one's peak resident set (``VmHWM`` in /proc/PID/status) until the stage returns; the
   driver's own ``VmHWM`` is read at the end. Before the clock starts, a task on each worker imports what the
   dedup tasks import: the workers' peak then is the baseline the table shows.
3. Near duplicates: precision and recall on the planted pairs, from the Ray 2-CPU recipe's output (pairs whose
   two documents both reach the dedup stage), and from the dedup-only run on the raw text; datatrove's
   four-stage MinHash (MinhashDedupSignature, MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter;
   14 x 8 hashes, 5-grams, the IndicNLP word tokenizer; LocalPipelineExecutor with 2 workers, one task per
   file, 14 for the buckets) on the same JSONL files: MB/s, precision, recall.
4. MinHash signatures, MB/s per core, one process, on the Wikipedia articles: ours (``Dedup.signature``:
   comparison key, 5-word shingles, 112 permutations), rensa's ``RMinHash`` (112 permutations) on the same
   5-word shingles made in Python, and datatrove's ``MinhashDedupSignature`` (its own shingles).
5. A projection for 1 TB of text on 8 and on 32 nodes of 64 cores: compute from the Ray per-core rate (the
   2-worker run, output files written by its tasks included), the shuffle from the bytes per document each
   corpus stage sends between tasks (counted from the items every task received in this run, times their sizes
   in ``data/ray_corpus.py``) over ``--network_gbit`` per node, and the serial part: the driver laying the
   output out from every record's size (its rate measured here on this run's output). Then the largest
   in-memory structures per node.

Goals: Ray with 2 workers at least 1.6x Ray with 1; Ray per core at least 0.8x local per core (same number of
workers, 1 and 2); the dedup peak at 2N at most 1.2x the one at N; precision and recall at least 0.95 on Ray;
our signatures per core at least rensa's; Ray's output equal to the local output. Exits 1 if one is missed.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import logging
import os
import platform
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

# scripts/ is on the path when a script runs: the corpus and the signature timers are bench_data's.
from bench_data import datatrove_signatures, distinct_records, load_articles, ours_signatures, shingle_set

from indictune.core import recipe
from indictune.core import text as text_units
from indictune.core.paths import shared_data_dir
from indictune.data import pipeline
from indictune.data.stages.dedup import DedupConfig

REPO = Path(__file__).resolve().parent.parent
FLORES = {
    "hin_Deva": "hi",
    "mar_Deva": "mr",
    "ben_Beng": "bn",
    "tam_Taml": "ta",
    "tel_Telu": "te",
    "kan_Knda": "kn",
    "mal_Mlym": "ml",
    "guj_Gujr": "gu",
    "pan_Guru": "pa",
    "ory_Orya": "or",
    "urd_Arab": "ur",
    "eng_Latn": "en",
}
FLORES_IN_DOCUMENTS = 700  # sentences per language made into documents; the rest is the decontamination set
NEWS = {
    "Bengal": "bn",
    "Gujarati": "gu",
    "Hindi": "hi",
    "Kannada": "kn",
    "Malayalam": "ml",
    "Marathi": "mr",
    "Tamil": "ta",
    "Telugu": "te",
}
NODE_CORES = 64
NODES = (8, 32)
# Bytes one item of each count that ``ray_corpus`` logs costs in the shuffle it was received from (sender side:
# counts of the same items seen again by their receiver are 0). p: num_perm, b: bands. See data/ray_corpus.py.
SHUFFLED_BYTES = {
    "line keys": lambda p, b: 8,  # a uint64 line key to its reducer
    "records keyed": lambda p, b: 24,  # 128-bit exact key + int64 index
    "signatures": lambda p, b: b * 24 + 2 * (8 + 4 * p),  # band entries (band, key, index) + the store, read twice
    "candidate pairs": lambda p, b: 16 + 4 * p,  # a pair with the first record's signature attached
    "large-star edges": lambda p, b: 16,
    "small-star edges": lambda p, b: 16,
    "settled edges": lambda p, b: 16,
    "clustered": lambda p, b: 24 + 64,  # (member, root, size) + the root's id
}


# The corpus ---------------------------------------------------------------------------------------------------


def load_documents(shared: Path, limit: int | None) -> tuple[list[dict], dict[str, list[str]]]:
    """Distinct documents {doc, text, lang, origin} in a fixed order, and the decontamination set by language."""
    documents = [{"text": r["text"], "lang": r["lang"], "origin": "wikipedia"} for r in load_articles(shared)]
    held_out = {}
    for name, lang in FLORES.items():
        sentences = (shared / "flores200" / "dev" / f"{name}.dev").read_text(encoding="utf-8").splitlines()
        for start in range(0, FLORES_IN_DOCUMENTS, 10):
            documents.append({"text": " ".join(sentences[start : start + 10]), "lang": lang, "origin": "flores"})
        held_out[name] = sentences[FLORES_IN_DOCUMENTS:]
    for name, lang in NEWS.items():
        with open(shared / "l3cube_indicnews_shc" / f"{name}_SHC_Test.csv", encoding="utf-8", newline="") as handle:
            headlines = [
                " ".join(v.split()) for row in csv.DictReader(handle) for k, v in row.items() if k.lower() == "text"
            ]
        headlines = [h for h in headlines if h]
        for start in range(0, len(headlines) - 19, 20):
            documents.append({"text": "\n".join(headlines[start : start + 20]), "lang": lang, "origin": "news"})
    if limit:
        documents = random.Random(1).sample(documents, min(limit, len(documents)))
    return documents, held_out


def build_corpus(documents: list[dict], planted: int, files: int, seed: int = 0) -> tuple[list[list[dict]], dict]:
    """The documents without near duplicates among them, plus `planted` copies, in `files` files (lists of
    {doc, text, lang}); {copy: original} by doc name, and the copies' true 5-shingle Jaccard."""
    rng = random.Random(seed)
    singles = distinct_records(documents)
    rng.shuffle(singles)
    vocabulary: dict[str, list[str]] = {}
    for d in singles:
        vocabulary.setdefault(d["lang"], []).extend(d["text"].split()[:50])
    vocabulary = {lang: sorted(set(words)) for lang, words in vocabulary.items()}
    layout: list[list[dict]] = [[] for _ in range(files)]
    where = {}
    for n, d in enumerate(singles):
        name = f"{d['origin'][0]}{n}"
        file = n * files // len(singles)
        layout[file].append({"doc": name, "text": d["text"], "lang": d["lang"]})
        where[name] = file
    truth, similarity = {}, []
    for n, original in enumerate(rng.sample([row for rows in layout for row in rows], min(planted, len(singles)))):
        words = original["text"].split(" ")
        for i in rng.sample(range(len(words)), max(1, round(len(words) / 100))):
            words[i] = rng.choice(vocabulary[original["lang"]])
        copy = {"doc": f"planted{n}", "text": " ".join(words), "lang": original["lang"]}
        file = (where[original["doc"]] + rng.randrange(1, files)) % files
        layout[file].insert(rng.randrange(len(layout[file]) + 1), copy)
        truth[copy["doc"]] = original["doc"]
        a, b = shingle_set(original["text"]), shingle_set(copy["text"])
        similarity.append(len(a & b) / len(a | b))
    return layout, {"pairs": truth, "jaccard": similarity}


def write_corpus(layout: list[list[dict]], folder: Path) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for i, rows in enumerate(layout):
        path = folder / f"part-{i:03d}.jsonl"
        with open(path, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        paths.append(path)
    return paths


def write_spill_shards(layout: list[list[dict]], folder: Path) -> list[Path]:
    """One Parquet file per input file in the schema a corpus stage reads (records straight from the reader)."""
    folder.mkdir(parents=True)
    schema = pa.schema({**pipeline.CORE_COLUMNS, **pipeline.REJECT_COLUMNS})
    paths = []
    for i, rows in enumerate(layout):
        columns = {name: [None] * len(rows) for name in schema.names}
        columns["id"] = [f"part-{i:03d}.jsonl#{j}" for j in range(len(rows))]
        columns["text"] = [r["text"] for r in rows]
        columns["lang"] = [r["lang"] for r in rows]
        columns["source"] = ["bench"] * len(rows)
        columns["kind"] = ["web"] * len(rows)
        columns["meta"] = [json.dumps({"fields": {"doc": r["doc"]}}) for r in rows]
        path = folder / f"shard-{i:03d}.parquet"
        pq.write_table(pa.table(columns, schema=schema), path)
        paths.append(path)
    return paths


def megabytes(layout: list[list[dict]]) -> float:
    return sum(len(r["text"].encode("utf-8")) for rows in layout for r in rows) / 1e6


def documents_in(layout: list[list[dict]]) -> int:
    return sum(len(rows) for rows in layout)


# Accuracy -----------------------------------------------------------------------------------------------------


def score(flagged: dict[str, str], pairs: dict[str, str], reached: set[str]) -> tuple[float, float, int]:
    """(precision, recall, pairs judged): `flagged` {doc dropped: doc it duplicates}; a pair is found when one
    of its documents is dropped as a duplicate of the other."""
    partner = {}
    judged = 0
    for copy, original in pairs.items():
        if copy in reached and original in reached:
            partner[copy], partner[original] = original, copy
            judged += 1
    correct = sum(partner.get(doc) == other for doc, other in flagged.items())
    return (correct / len(flagged) if flagged else 1.0), (correct / judged if judged else 1.0), judged


def score_output(found: tuple[dict[str, str], set[str]], pairs: dict[str, str]) -> tuple[float, float, int]:
    return score(found[0], pairs, found[1])


def ours_flagged(output_dir: Path) -> tuple[dict[str, str], set[str]]:
    """From a prepare_data output: {doc dropped by dedup: doc kept}, and the docs that reached dedup."""
    names, flagged_ids, reached = {}, {}, set()
    for path in sorted([*output_dir.glob("data/*.parquet"), *output_dir.glob("rejected/*.parquet")]):
        for row in pq.read_table(path).to_pylist():
            doc = json.loads(row["meta"]).get("fields", {}).get("doc")
            names[row["id"]] = doc
            if row.get("stage") in (None, "dedup"):
                reached.add(doc)
            if row.get("stage") == "dedup":
                flagged_ids[row["id"]] = row["duplicate_of"]
    return {names[a]: names[b] for a, b in flagged_ids.items()}, reached


def spill_flagged(paths: list[Path]) -> tuple[dict[str, str], set[str]]:
    """The same from judge_corpus_stage's output files."""
    names, flagged_ids, reached = {}, {}, set()
    for path in paths:
        for row in pq.read_table(path, columns=["id", "meta", "reason", "duplicate_of"]).to_pylist():
            names[row["id"]] = json.loads(row["meta"])["fields"]["doc"]
            reached.add(names[row["id"]])
            if row["reason"]:
                flagged_ids[row["id"]] = row["duplicate_of"]
    return {names[a]: names[b] for a, b in flagged_ids.items()}, reached


def same_outputs(a: Path, b: Path) -> bool:
    def files(directory: Path) -> dict[str, bytes]:
        paths = [*directory.glob("data/*.parquet"), *directory.glob("rejected/*.parquet"), directory / "report.json"]
        return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(paths)}

    return files(a) == files(b)


# 1. the whole recipe ------------------------------------------------------------------------------------------


class CountLog(logging.Handler):
    """Keeps what ``ray_corpus`` logs per shuffle: (stage, label) -> items received per task."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.counts: dict[tuple[str, str], list[int]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg == "%s: %s per task %s":
            stage, label, counts = record.args
            self.counts.setdefault((stage, label), []).extend(int(c) for c in counts)


def write_recipe(folder: Path, corpus: Path, held_out: dict[str, list[str]]) -> Path:
    evaluation = folder / "heldout"
    evaluation.mkdir()
    for name, sentences in held_out.items():
        (evaluation / f"{name}.txt").write_text("\n".join(sentences) + "\n", encoding="utf-8")
    config = {
        "sources": [{"path": str(corpus / "*.jsonl"), "format": "jsonl", "lang_field": "lang", "name": "bench"}],
        "stages": {"decontaminate": {"paths": [str(evaluation / "*.txt")]}},
        "split_mb": 2,  # one file per Ray task: at the default 64 MB this whole corpus would be one task
    }
    path = folder / "bench-ray.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def run_recipe(recipe_path: Path, output_dir: Path, executor: str, workers: int) -> float:
    overrides = [f"--output_dir={output_dir}", f"--executor={executor}", f"--num_proc={workers}"]
    config = recipe.load(pipeline.PrepareConfig, recipe_path, overrides)
    start = time.perf_counter()
    pipeline.run(config)
    return time.perf_counter() - start


def throughput(recipe_path: Path, scratch: Path, size: float, counts: CountLog, repeats: int) -> dict:
    """Each configuration `repeats` times, in turn; its figure is its fastest run (every run's seconds kept)."""
    import ray

    logger = logging.getLogger("indictune.data.ray_corpus")
    results: dict[str, dict] = {}
    for repeat in range(repeats):
        for executor, workers in (("local", 1), ("local", 2), ("ray", 1), ("ray", 2)):
            name = f"{executor}-{workers}"
            output_dir = scratch / (name if repeat == 0 else f"{name}.{repeat}")
            if executor == "local":
                seconds = run_recipe(recipe_path, output_dir, executor, workers)
            else:
                ray.init(num_cpus=workers, include_dashboard=False, logging_level="WARNING")
                if workers == 2 and repeat == 0:
                    logger.setLevel(logging.INFO)
                    logger.addHandler(counts)
                try:
                    seconds = run_recipe(recipe_path, output_dir, executor, workers)
                finally:
                    logger.removeHandler(counts)
                    ray.shutdown()
            if repeat:
                shutil.rmtree(output_dir)
            runs = results.setdefault(name, {"runs_s": []})["runs_s"]
            runs.append(round(seconds, 2))
            results[name].update(seconds=min(runs), mb_s=round(size / min(runs), 3))
            print(f"  {name}, run {repeat + 1}: {seconds:.1f} s, {size / seconds:.2f} MB/s", file=sys.stderr)
    return results


def driver_layout_rate(output_dir: Path, scratch: Path, records: int = 2_000_000) -> float:
    """Records per second the driver lays out: its only serial work on the output (``ray_executor._lay_out``:
    reading each task file's row sizes and placing them with ``RowLayout``). The sizes of this run's output
    rows, repeated to `records` rows and cut into one file per 64 MB of input (the default ``split_mb``), as a
    large run leaves them."""
    from indictune.data import ray_executor

    paths = sorted([*output_dir.glob("rejected/*.parquet"), *output_dir.glob("data/*.parquet")])
    sizes = np.resize(np.concatenate([pipeline.row_bytes(pq.read_table(path)) for path in paths]), records)
    per_file = max(1, int(64 * 2**20 / sizes.mean()))
    scratch.mkdir(parents=True)
    streams = []
    for start in range(0, records, per_file):
        streams.append(scratch / f"{start:012d}.parquet")
        np.save(ray_executor.sizes(streams[-1]), sizes[start : start + per_file])
    start = time.perf_counter()
    ray_executor._lay_out(pipeline.RowLayout(256 * 2**20), streams)
    seconds = time.perf_counter() - start
    shutil.rmtree(scratch)
    return records / seconds


# 2. dedup memory on Ray ---------------------------------------------------------------------------------------

_MEMORY_CHILD = r"""
import json, os, sys, threading, time
import psutil, ray
from pathlib import Path
from indictune.data.ray_corpus import judge_corpus_stage
from indictune.data.stages.dedup import Dedup, DedupConfig

def peak_kb(pid):
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0

shards, out = [Path(p) for p in json.loads(sys.argv[1])], Path(sys.argv[2])
ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
me = psutil.Process()
peaks, names, done = {}, {}, threading.Event()

def poll():
    while True:
        for child in me.children(recursive=True):
            try:
                name = child.name()
                if name.startswith("raylet"):
                    names["raylet"] = max(names.get("raylet", 0), peak_kb(child.pid))
                elif name.startswith("ray::") and "Agent" not in name:  # task workers, not Ray's agents
                    peaks[child.pid] = max(peaks.get(child.pid, 0), peak_kb(child.pid))
                    names.setdefault("workers", {})[child.pid] = name
            except (psutil.Error, OSError):
                pass
        if done.is_set():
            return
        time.sleep(0.1)

thread = threading.Thread(target=poll, daemon=True)


@ray.remote
def warm_up():
    import indictune.data.ray_corpus  # what every dedup task imports
    time.sleep(0.5)
    return os.getpid(), peak_kb(os.getpid())

# both workers up, with the imports done, before the clock starts: their peak then is the baseline
baseline = max(kb for _, kb in ray.get([warm_up.remote() for _ in range(4)]))
thread.start()
start = time.perf_counter()
outputs = judge_corpus_stage(Dedup(DedupConfig()), shards, out)
seconds = time.perf_counter() - start
done.set()
thread.join()
figures = {
    "seconds": seconds,
    "workers_kb": sorted(peaks.values()),
    "raylet_kb": names.get("raylet", 0),
    "baseline_kb": baseline,
    "worker_names": sorted(set(names.get("workers", {}).values())),
    "driver_kb": peak_kb(os.getpid()),
    "outputs": [str(p) for p in outputs],
}
ray.shutdown()
print(json.dumps(figures))
"""


def dedup_memory(shards: list[Path], out: Path) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", _MEMORY_CHILD, json.dumps([str(p) for p in shards]), str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    if result.returncode:
        raise SystemExit(f"error: the dedup memory run failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def python_rows_factor(shard: Path) -> float:
    """Bytes a task holds per byte of text when it reads a shard's rows into Python (``ray_corpus._read``)."""
    size = pc.sum(pc.binary_length(pq.read_table(shard, columns=["text"])["text"])).as_py()
    gc.collect()
    tracemalloc.start()
    rows = pq.read_table(shard).to_pylist()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del rows
    return 1 + peak / size  # + the Arrow table, about the text's size


# 3. datatrove's MinHash ---------------------------------------------------------------------------------------


def _xxhash64_utf8(s: str) -> int:
    import xxhash

    return xxhash.xxh64_intdigest(s.encode("utf-8"))


def datatrove_dedup(corpus: Path, scratch: Path, files: int) -> tuple[float, dict[str, str], set[str]]:
    """Seconds for datatrove's four MinHash stages on the JSONL files (2 workers), {doc dropped: doc in its
    cluster}, and every doc."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from loguru import logger

    logger.remove()
    config = MinhashConfig()
    signer = MinhashDedupSignature(output_folder=str(scratch / "signatures"), config=config, language="hin_Deva")
    signer._hash_func = _xxhash64_utf8  # datatrove 0.10 hands xxhash 4 a str, which it refuses; encode as xxhash 3 did

    def reader():
        return JsonlReader(str(corpus), glob_pattern="*.jsonl", id_key="doc", shuffle_files=False)

    steps = [
        ([reader(), signer], files),
        ([MinhashDedupBuckets(str(scratch / "signatures"), str(scratch / "buckets"), config=config)], 14),
        (
            [MinhashDedupCluster(str(scratch / "buckets"), str(scratch / "ids"), config=config, save_cluster_id=True)],
            1,
        ),
        (
            [
                reader(),
                MinhashDedupFilter(
                    str(scratch / "ids"),
                    exclusion_writer=JsonlWriter(str(scratch / "removed"), compression=None),
                    load_cluster_ids=True,
                ),
                JsonlWriter(str(scratch / "kept"), compression=None),
            ],
            files,
        ),
    ]
    start = time.perf_counter()
    for n, (pipeline_steps, tasks) in enumerate(steps):
        LocalPipelineExecutor(
            pipeline=pipeline_steps, tasks=tasks, workers=min(2, tasks), logging_dir=str(scratch / f"logs{n}")
        ).run()
    seconds = time.perf_counter() - start
    # Cluster ids from the cluster stage's files: the filter attaches them only in files that lose a document.
    clusters, removed = {}, set()
    for rank, path in enumerate(sorted(corpus.glob("*.jsonl"))):  # one task per file, in order
        names = [json.loads(line)["doc"] for line in path.read_text(encoding="utf-8").splitlines()]
        clusters.update({name: -1 for name in names})
        found = scratch / "ids" / f"{rank:06d}.clusters"
        if found.exists():
            for doc, cluster in struct.iter_unpack("<II", found.read_bytes()):
                clusters[names[doc]] = cluster
    for path in sorted((scratch / "removed").glob("*.jsonl")):
        removed |= {json.loads(line)["id"] for line in path.read_text(encoding="utf-8").splitlines()}
    members: dict[int, list[str]] = {}
    for doc, cluster in clusters.items():
        if cluster != -1:
            members.setdefault(cluster, []).append(doc)
    flagged = {}
    for doc in removed:
        others = [d for d in members.get(clusters[doc], []) if d != doc]
        flagged[doc] = others[0] if len(others) == 1 else "|".join(sorted(others))
    return seconds, flagged, set(clusters)


# 4. signatures ------------------------------------------------------------------------------------------------


def signature_rates(articles: list[dict], scratch: Path) -> dict[str, float]:
    """Ours and datatrove's as scripts/bench_data.py times them, and rensa on the same shingles."""
    import rensa

    texts = [a["text"] for a in articles]
    size = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    ours = ours_signatures(texts)
    config = DedupConfig()
    start = time.perf_counter()
    for t in texts:
        words = text_units.words(text_units.key_words_text(t))
        shingles = [" ".join(words[i : i + config.ngram]) for i in range(max(1, len(words) - config.ngram + 1))]
        minhash = rensa.RMinHash(num_perm=config.num_perm, seed=config.seed)
        minhash.update(shingles)
        minhash.digest()
    peer = time.perf_counter() - start
    datatrove = datatrove_signatures(articles, scratch)
    return {"indictune": size / ours, "rensa": size / peer, "datatrove": size / datatrove, "megabytes": size}


# 5. projection ------------------------------------------------------------------------------------------------


def shuffle_per_document(counts: dict[tuple[str, str], list[int]], num_perm: int, bands: int) -> dict[str, dict]:
    """Per corpus stage: the items received per shuffle, and the bytes they cost, summed over tasks."""
    stages: dict[str, dict] = {}
    for (stage, label), per_task in counts.items():
        entry = stages.setdefault(stage, {"items": {}, "bytes": {}})
        entry["items"][label] = sum(per_task)
        if label in SHUFFLED_BYTES:
            entry["bytes"][label] = sum(per_task) * SHUFFLED_BYTES[label](num_perm, bands)
    return stages


def projection(
    per_core_mb_s: float,
    bytes_per_document: float,
    shuffle_bytes_per_document: float,
    layout_records_per_s: float,
    network_gbit: float,
    split_mb: int,
    rows_factor: float,
    num_perm: int,
    bands: int,
) -> tuple[dict, list[str]]:
    lines = []
    terabyte = 1e12
    documents = terabyte / bytes_per_document
    lines.append(f"documents in 1 TB = 1e12 B / {bytes_per_document:,.0f} B per document = {documents:,.3g}")
    shuffle_total = documents * shuffle_bytes_per_document
    lines.append(
        f"shuffle volume = {documents:,.3g} x {shuffle_bytes_per_document:,.0f} B = {shuffle_total / 1e12:,.2f} TB"
    )
    bandwidth = network_gbit * 1e9 / 8
    driver_s = documents / layout_records_per_s
    lines.append(
        f"driver's layout (serial) = {documents:,.3g} records / {layout_records_per_s:,.0f} records/s = "
        f"{driver_s:,.0f} s"
    )
    results = {}
    for nodes in NODES:
        cores = nodes * NODE_CORES
        compute_s = terabyte / (per_core_mb_s * 1e6 * cores)
        network_s = shuffle_total * (nodes - 1) / nodes / (nodes * bandwidth)
        total = compute_s + network_s + driver_s
        results[nodes] = {
            "compute_s": compute_s,
            "shuffle_s": network_s,
            "driver_s": driver_s,
            "total_h": total / 3600,
        }
        lines.append(
            f"{nodes} nodes: compute 1e6 MB / ({per_core_mb_s:.2f} MB/s x {cores} cores) = {compute_s:,.0f} s; "
            f"shuffle {shuffle_total / 1e12:.2f} TB x {nodes - 1}/{nodes} / ({nodes} x {bandwidth / 1e9:.2f} GB/s)"
            f" = {network_s:,.0f} s; + driver {driver_s:,.0f} s = {total / 3600:.2f} h"
        )
    memory = {}
    for nodes in NODES:
        store = documents * (8 + 4 * num_perm) / nodes
        buckets = documents * bands * 24 / nodes
        shard_rows = NODE_CORES * split_mb * 2**20 * rows_factor
        memory[nodes] = {"bucket_entries_gb": buckets / 1e9, "shard_rows_gb": shard_rows / 1e9}
        lines.append(
            f"{nodes} nodes, per node: bucket entries {documents:,.3g} x {bands} x 24 B / {nodes} = "
            f"{buckets / 1e9:,.1f} GB (reducer inputs, 64 at a time); shard rows {NODE_CORES} tasks x {split_mb} MB x "
            f"{rows_factor:.1f} = {shard_rows / 1e9:,.1f} GB (each per-shard corpus task reads its shard's rows into "
            f"Python); on disk, not in memory: the signature exchange files, {documents:,.3g} x {8 + 4 * num_perm} B "
            f"/ {nodes} = {store / 1e9:,.1f} GB, until dedup ends"
        )
        largest = max(memory[nodes], key=memory[nodes].get)
        lines.append(
            f"{nodes} nodes: largest per node is {largest.removesuffix('_gb')}, {memory[nodes][largest]:.1f} GB"
        )
    shards = terabyte / (split_mb * 2**20)
    for nodes in NODES:
        partitions = nodes * NODE_CORES
        lines.append(
            f"{nodes} nodes: Ray objects per shuffle step = {shards:,.0f} shards of {split_mb} MB + {partitions} "
            f"partitions = {shards + partitions:,.0f} handles (the parts themselves are files); reads of parts = "
            f"{shards:,.0f} x {partitions} = {shards * partitions:,.3g}"
        )
    return {"wall": results, "memory_per_node": memory}, lines


# main ---------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default=str(shared_data_dir()))
    parser.add_argument("--files", type=int, default=16, help="JSONL files of the 2N corpus (an even number)")
    parser.add_argument("--planted", type=int, default=300, help="near-duplicate copies to plant")
    parser.add_argument("--documents", type=int, default=None, help="use at most this many source documents")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each whole-recipe configuration (fastest kept)")
    parser.add_argument("--network_gbit", type=float, default=25.0, help="per-node network for the projection")
    parser.add_argument("--scratch", default=None, help="directory for the corpus and outputs (default: temporary)")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.files < 2 or args.files % 2:
        parser.error("--files must be an even number of at least 2")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )

    with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
        scratch = Path(scratch)
        start = time.perf_counter()
        documents, held_out = load_documents(Path(args.shared), args.documents)
        layout, planted = build_corpus(documents, args.planted, args.files)
        corpus = write_corpus(layout, scratch / "corpus")[0].parent
        size, count = megabytes(layout), documents_in(layout)
        half = layout[: args.files // 2]
        print(
            f"corpus: {count} documents ({len(planted['pairs'])} planted copies, Jaccard "
            f"{min(planted['jaccard']):.2f}-{max(planted['jaccard']):.2f}), {size:.1f} MB in {args.files} files; "
            f"N = {documents_in(half)} documents in {len(half)} files ({time.perf_counter() - start:.0f} s); {machine}",
            file=sys.stderr,
        )
        recipe_path = write_recipe(scratch, corpus, held_out)

        print("datatrove's four MinHash stages, 2 workers ...", file=sys.stderr)
        dt_seconds, dt_flagged, dt_docs = datatrove_dedup(corpus, scratch / "datatrove", args.files)
        dt_precision, dt_recall, _ = score(dt_flagged, planted["pairs"], dt_docs)

        print("whole recipe ...", file=sys.stderr)
        counts = CountLog()
        runs = throughput(recipe_path, scratch / "runs", size, counts, args.repeats)
        identical = same_outputs(scratch / "runs" / "local-1", scratch / "runs" / "ray-2") and same_outputs(
            scratch / "runs" / "local-1", scratch / "runs" / "ray-1"
        )
        precision, recall, judged = score_output(ours_flagged(scratch / "runs" / "ray-2"), planted["pairs"])
        local_precision, local_recall, _ = score_output(ours_flagged(scratch / "runs" / "local-1"), planted["pairs"])
        layout_rate = driver_layout_rate(scratch / "runs" / "ray-2", scratch / "layout")

        print("dedup alone on Ray, N and 2N documents ...", file=sys.stderr)
        shards = write_spill_shards(layout, scratch / "spill")
        memory = {}
        for label, subset in (("N", shards[: args.files // 2]), ("2N", shards)):
            figures = dedup_memory(subset, scratch / f"dedup-{label}")
            memory[label] = {
                "documents": documents_in(layout[: len(subset)]),
                "megabytes": round(megabytes(layout[: len(subset)]), 2),
                "seconds": round(figures["seconds"], 2),
                "largest_worker_mb": round(max(figures["workers_kb"]) / 1024, 1),
                "worker_after_imports_mb": round(figures["baseline_kb"] / 1024, 1),
                "workers_mb": [round(kb / 1024, 1) for kb in figures["workers_kb"]],
                "driver_mb": round(figures["driver_kb"] / 1024, 1),
                "raylet_mb": round(figures["raylet_kb"] / 1024, 1),
            }
            if label == "2N":
                alone_precision, alone_recall, _ = score_output(
                    spill_flagged([Path(p) for p in figures["outputs"]]), planted["pairs"]
                )
            print(f"  {label}: {memory[label]}", file=sys.stderr)
        rows_factor = python_rows_factor(shards[0])

        print("signatures ...", file=sys.stderr)
        wiki = [d for d in documents if d["origin"] == "wikipedia"]
        signatures = signature_rates(wiki, scratch / "signers")

    num_perm, bands = DedupConfig().num_perm, DedupConfig().bands
    shuffles = shuffle_per_document(counts.counts, num_perm, bands)
    dedup_documents = shuffles.get("dedup", {}).get("items", {}).get("records keyed") or count
    shuffle_bytes = {
        stage: sum(entry["bytes"].values()) / dedup_documents for stage, entry in shuffles.items() if entry["bytes"]
    }
    per_core = size / runs["ray-2"]["seconds"] / 2
    projected, arithmetic = projection(
        per_core,
        size * 1e6 / count,
        sum(shuffle_bytes.values()),
        layout_rate,
        args.network_gbit,
        pipeline.PrepareConfig.__dataclass_fields__["split_mb"].default,
        rows_factor,
        num_perm,
        bands,
    )

    ray_speedup = runs["ray-2"]["mb_s"] / runs["ray-1"]["mb_s"]
    per_core_ratio = {n: (runs[f"ray-{n}"]["mb_s"] / n) / (runs[f"local-{n}"]["mb_s"] / n) for n in (1, 2)}
    growth = memory["2N"]["largest_worker_mb"] / memory["N"]["largest_worker_mb"]
    dedup_alone_mb_s = memory["2N"]["megabytes"] / memory["2N"]["seconds"]
    figures = {
        "machine": machine,
        "corpus": {
            "documents": count,
            "megabytes": round(size, 2),
            "files": args.files,
            "planted": len(planted["pairs"]),
            "planted_jaccard": [round(min(planted["jaccard"]), 3), round(max(planted["jaccard"]), 3)],
            "pairs_reaching_dedup": judged,
        },
        "whole_recipe": runs,
        "ray_2_over_1": round(ray_speedup, 3),
        "ray_over_local_per_core": {str(n): round(r, 3) for n, r in per_core_ratio.items()},
        "ray_output_equals_local": identical,
        "dedup_memory": memory,
        "dedup_memory_growth": round(growth, 3),
        "near_duplicates": {
            "ray_recipe": {"precision": round(precision, 4), "recall": round(recall, 4)},
            "local_recipe": {"precision": round(local_precision, 4), "recall": round(local_recall, 4)},
            "ray_dedup_alone": {
                "precision": round(alone_precision, 4),
                "recall": round(alone_recall, 4),
                "mb_s": round(dedup_alone_mb_s, 3),
            },
            "datatrove": {
                "precision": round(dt_precision, 4),
                "recall": round(dt_recall, 4),
                "mb_s": round(size / dt_seconds, 3),
                "seconds": round(dt_seconds, 2),
            },
        },
        "signatures_mb_s_per_core": {k: round(v, 2) for k, v in signatures.items()},
        "shuffle": {
            stage: {**entry, "bytes_per_document": round(shuffle_bytes.get(stage, 0), 1)}
            for stage, entry in shuffles.items()
        },
        "driver_layout_records_per_s": round(layout_rate),
        "ray_per_core_mb_s": round(per_core, 3),
        "python_rows_factor": round(rows_factor, 2),
        "projection": projected,
        "projection_arithmetic": arithmetic,
    }
    goals = {
        "Ray 2 workers >= 1.6x Ray 1 worker": ray_speedup >= 1.6,
        "Ray per core >= 0.8x local per core (1 worker)": per_core_ratio[1] >= 0.8,
        "Ray per core >= 0.8x local per core (2 workers)": per_core_ratio[2] >= 0.8,
        "dedup peak grows < 1.2x from N to 2N documents": growth < 1.2,
        "Ray precision >= 0.95": precision >= 0.95,
        "Ray recall >= 0.95": recall >= 0.95,
        "signatures per core >= rensa's": signatures["indictune"] >= signatures["rensa"],
        "Ray output equals the local output": identical,
    }

    print(f"\n{machine}; {count} documents, {size:.1f} MB, {len(planted['pairs'])} planted near duplicates")
    print("| whole recipe | seconds, each run | MB/s (fastest) | MB/s per core |\n|---|---:|---:|---:|")
    for name, label, n in (
        ("local-1", "local, num_proc 1", 1),
        ("local-2", "local, num_proc 2", 2),
        ("ray-1", "Ray, 1 worker CPU", 1),
        ("ray-2", "Ray, 2 worker CPUs", 2),
    ):
        each = " / ".join(f"{t:.1f}" for t in runs[name]["runs_s"])
        print(f"| {label} | {each} | {runs[name]['mb_s']:.2f} | {runs[name]['mb_s'] / n:.2f} |")
    print(
        f"Ray 2 / Ray 1: {ray_speedup:.2f}x; Ray / local per core: {per_core_ratio[1]:.2f}x (1), "
        f"{per_core_ratio[2]:.2f}x (2); Ray output equals local: {identical}"
    )
    print(
        "| dedup on Ray, 2 CPUs | documents | MB | seconds | largest worker MB | worker after imports MB | driver MB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, m in memory.items():
        print(
            f"| {label} | {m['documents']} | {m['megabytes']} | {m['seconds']} | {m['largest_worker_mb']} | "
            f"{m['worker_after_imports_mb']} | {m['driver_mb']} |"
        )
    print(f"largest worker, 2N / N: {growth:.3f}x")
    print("| near duplicates | precision | recall | MB/s (2 cores) |\n|---|---:|---:|---:|")
    print(f"| Ray, whole recipe ({judged} pairs reach dedup) | {precision:.3f} | {recall:.3f} | |")
    print(f"| local, whole recipe | {local_precision:.3f} | {local_recall:.3f} | |")
    print(f"| Ray, dedup alone on the raw text | {alone_precision:.3f} | {alone_recall:.3f} | {dedup_alone_mb_s:.2f} |")
    print(f"| datatrove, four MinHash stages | {dt_precision:.3f} | {dt_recall:.3f} | {size / dt_seconds:.2f} |")
    print(
        f"signatures, MB/s per core on {signatures['megabytes']:.1f} MB of Wikipedia: indictune "
        f"{signatures['indictune']:.2f}, rensa {signatures['rensa']:.2f}, datatrove {signatures['datatrove']:.2f}"
    )
    for stage, entry in shuffles.items():
        print(f"shuffle, {stage}: {shuffle_bytes.get(stage, 0):,.0f} B per document; items {entry['items']}")
    print(
        f"driver's layout of the output: {layout_rate:,.0f} records/s; Ray per core: "
        f"{per_core:.2f} MB/s; Python rows of a shard: {rows_factor:.1f} B per text byte"
    )
    for line in arithmetic:
        print(f"projection: {line}")
    for goal, met in goals.items():
        print(f"{'PASS' if met else 'FAIL'}  {goal}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({**figures, "goals": goals}, indent=2, default=str) + "\n")
    return 0 if all(goals.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

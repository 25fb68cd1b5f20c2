"""Peak memory of prepare_data on one large input file, in every format, at two file sizes.

    python scripts/bench_memory.py [--sizes_mb 200,1000] [--formats jsonl,csv,...] [--stages none|record]
                                   [--max_rss_mb 400] [--max_growth_mb 40] [--json runs/bench_memory.json]

For each format a single file of each size is written in a scratch directory (Hindi-like paragraphs of
1 to 12 sentences, 150 B to 2 KB, from a seeded word generator), then ``scripts/prepare_data.py`` runs on it
in a fresh process with ``num_proc 1``, and that process's peak resident set size is read from
``getrusage``. ``--stages none`` switches every stage off, so what is measured is the reader and the
writers; ``--stages record`` keeps the record stages (normalize, identify, ocr, asr, pii, quality,
decontaminate) and switches off the corpus stages, whose in-memory indexes grow with the number of
documents by design; ``--stages all`` runs everything, to size those indexes (judge it with a large
``--max_growth_mb``).

Goals: every peak under ``--max_rss_mb``, and the peak at the largest size at most ``--max_growth_mb`` above
the peak at the smallest (memory independent of the file size). The script exits 1 if a goal is missed.
"""

from __future__ import annotations

import argparse
import bz2
import csv
import gzip
import json
import lzma
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from indictune.data.stages import STAGES, CorpusStage

REPO = Path(__file__).resolve().parent.parent
# name -> (reader format, txt unit, compression suffix)
FORMATS = {
    "jsonl": ("jsonl", None, ""),
    "jsonl.gz": ("jsonl", None, ".gz"),
    "jsonl.zst": ("jsonl", None, ".zst"),
    "jsonl.bz2": ("jsonl", None, ".bz2"),
    "jsonl.xz": ("jsonl", None, ".xz"),
    "csv": ("csv", None, ""),
    "tsv": ("tsv", None, ""),
    "txt-paragraph": ("txt", "paragraph", ""),
    "txt-line": ("txt", "line", ""),
    "parquet": ("parquet", None, ""),
}
_CONSONANTS = "कखगघचछजझटठडढणतथदधनपफबभमयरलवशषसह"
_SIGNS = ["", "ा", "ि", "ी", "ु", "ू", "े", "ै", "ो", "ौ", "ं", "्र"]


def paragraphs(seed: int = 7):
    """Endless distinct Hindi-like paragraphs: seeded, so every run writes the same bytes."""
    rng = random.Random(seed)
    words = [
        "".join(rng.choice(_CONSONANTS) + rng.choice(_SIGNS) for _ in range(rng.randint(1, 4))) for _ in range(5000)
    ]
    number = 0
    while True:
        number += 1
        sentences = [" ".join(rng.choices(words, k=rng.randint(6, 18))) + "।" for _ in range(rng.randint(1, 12))]
        yield f"{number} " + " ".join(sentences)


def _open(path: Path, suffix: str):
    if suffix == ".gz":
        return gzip.open(path, "wt", encoding="utf-8", compresslevel=1)
    if suffix == ".bz2":
        return bz2.open(path, "wt", encoding="utf-8", compresslevel=1)
    if suffix == ".xz":
        return lzma.open(path, "wt", encoding="utf-8", preset=0)
    if suffix == ".zst":
        return zstandard.open(path, "wt", encoding="utf-8", cctx=zstandard.ZstdCompressor(level=1))
    return open(path, "w", encoding="utf-8", newline="")


def write_corpus(directory: Path, name: str, size_mb: float) -> Path:
    """One file of `name`'s format holding about `size_mb` MB of uncompressed UTF-8 text."""
    fmt, unit, suffix = FORMATS[name]
    extension = "txt" if fmt == "txt" else fmt
    path = directory / f"corpus-{name}-{size_mb:g}mb.{extension}{suffix}"
    target, written = size_mb * 1e6, 0
    texts = paragraphs()
    if fmt == "parquet":
        with pq.ParquetWriter(path, pa.schema({"text": pa.string()})) as writer:
            while written < target:
                batch = [next(texts) for _ in range(2000)]
                written += sum(len(t.encode()) for t in batch)
                writer.write_table(pa.table({"text": batch}))
        return path
    with _open(path, suffix) as handle:
        table = csv.writer(handle, delimiter="\t" if fmt == "tsv" else ",") if fmt in ("csv", "tsv") else None
        if table:
            table.writerow(["id", "text"])
        while written < target:
            text = next(texts)
            written += len(text.encode())
            if table:
                table.writerow([written, text])
            elif fmt == "jsonl":
                handle.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
            else:
                handle.write(text + ("\n\n" if unit == "paragraph" else "\n"))
    return path


_CHILD = """
import json, resource, sys
from indictune.core import recipe
from indictune.data import pipeline
config = recipe.load(pipeline.PrepareConfig, sys.argv[2], sys.argv[3:])
report = pipeline.run(config)
print(json.dumps({"maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "totals": report["totals"]}))
"""


def measure(corpus: Path, name: str, stages: str, output_dir: Path) -> dict:
    fmt, unit, _ = FORMATS[name]
    source = {"path": str(corpus), "format": fmt, "lang": "hi", **({"unit": unit} if unit else {})}
    off = [s for s, cls in STAGES.items() if stages == "none" or (stages == "record" and issubclass(cls, CorpusStage))]
    recipe = {"sources": [source], "num_proc": 1, "stages": {stage: {"enabled": False} for stage in off}}
    config = output_dir.with_name("bench-memory.yaml")
    config.write_text(json.dumps(recipe))  # JSON is YAML
    args = ["--config", str(config), "--output_dir", str(output_dir)]
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", _CHILD, *args], capture_output=True, text=True, cwd=REPO)
    if result.returncode:
        raise SystemExit(f"error: prepare_data failed on {corpus}:\n{result.stderr[-2000:]}")
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    return {
        "peak_rss_mb": round(figures["maxrss_kb"] / 1024, 1),
        "records": figures["totals"]["input"],
        "seconds": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes_mb", default="200,1000", help="comma-separated file sizes, MB of text")
    parser.add_argument("--formats", default=",".join(FORMATS), help=f"comma-separated, of: {', '.join(FORMATS)}")
    parser.add_argument("--stages", choices=["none", "record", "all"], default="none")
    parser.add_argument("--max_rss_mb", type=float, default=400)
    parser.add_argument("--max_growth_mb", type=float, default=40)
    parser.add_argument("--scratch", default=None, help="directory for the corpora (default: a temporary one)")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    sizes = sorted(float(s) for s in args.sizes_mb.split(","))
    names = args.formats.split(",")
    unknown = sorted(set(names) - set(FORMATS))
    if unknown:
        raise SystemExit(f"error: unknown format(s) {', '.join(unknown)}; choose from {', '.join(FORMATS)}")

    results: dict[str, dict[str, dict]] = {}
    failures = []
    with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
        scratch = Path(scratch)
        for name in names:
            results[name] = {}
            for size in sizes:
                corpus = write_corpus(scratch, name, size)
                results[name][f"{size:g}"] = figures = measure(corpus, name, args.stages, scratch / "out")
                corpus.unlink()
                print(
                    f"{name:<14} {size:>6g} MB  {figures['records']:>9} records  "
                    f"peak {figures['peak_rss_mb']:>7.1f} MB  {figures['seconds']:>6.1f} s",
                    flush=True,
                )
                if figures["peak_rss_mb"] > args.max_rss_mb:
                    failures.append(f"{name} at {size:g} MB: peak {figures['peak_rss_mb']} MB > {args.max_rss_mb}")
            peaks = [results[name][f"{s:g}"]["peak_rss_mb"] for s in sizes]
            if len(peaks) > 1 and peaks[-1] - peaks[0] > args.max_growth_mb:
                failures.append(
                    f"{name}: peak grew {peaks[-1] - peaks[0]:.1f} MB from {sizes[0]:g} to {sizes[-1]:g} MB"
                )
    summary = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "stages": args.stages,
        "results": results,
        "failures": failures,
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2))
    for failure in failures:
        print(f"goal missed: {failure}")
    raise SystemExit(1 if failures else 0)


if __name__ == "__main__":
    main()

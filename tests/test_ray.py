"""The Ray executor on a two-node cluster on this machine gives the local executor's output, crashes included."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from indictune.core import recipe
from indictune.data import pipeline
from indictune.data.readers import Source
from indictune.data.stages import CorpusStage, Stage, StageConfig

ray = pytest.importorskip("ray")
ray_executor = pytest.importorskip("indictune.data.ray_executor")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cluster():
    """A head and a worker node, one CPU each, on this machine; this process is the driver."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 100 * 2**20})
    cluster.add_node(num_cpus=1, object_store_memory=100 * 2**20)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, include_dashboard=False, logging_level="WARNING")
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def outputs(directory: Path) -> dict[str, bytes]:
    """The files that must be equal between executors: the data and the report (recipe.yaml names the executor)."""
    files = sorted(
        [*directory.glob("data/*.parquet"), *directory.glob("rejected/*.parquet"), directory / "report.json"]
    )
    return {str(p.relative_to(directory)): p.read_bytes() for p in files}


def prepare(recipe_path: Path | str, out: Path, *overrides: str) -> dict:
    config = recipe.load(pipeline.PrepareConfig, Path(recipe_path), [f"--output_dir={out}", *overrides])
    return pipeline.run(config)


def test_sample_equals_local_byte_for_byte(cluster, tmp_path, prepared_sample):
    report = prepare(REPO / "recipes/data/sample.yaml", tmp_path / "o", "--executor", "ray")
    assert report == prepared_sample[1]
    assert outputs(tmp_path / "o") == outputs(prepared_sample[0])
    assert not (tmp_path / "o.partial").exists()


@pytest.mark.real_data
def test_multilingual_mix_equals_local(cluster, tmp_path, shared_data, monkeypatch):
    monkeypatch.setenv("INDICTUNE_SHARED_DATA", str(shared_data))
    config = recipe.load(pipeline.PrepareConfig, REPO / "recipes/data/multilingual-mix.yaml", [])
    for source in config.sources:  # a part of each source keeps the test short; the sharding is the same
        source.limit = source.limit or 400
    local, distributed = tmp_path / "local", tmp_path / "ray"
    config.output_dir = str(local)
    pipeline.run(config)
    config.output_dir, config.executor = str(distributed), "ray"
    pipeline.run(config)
    assert outputs(distributed) == outputs(local)


def spell(number: int) -> str:
    """A number in letters: digits would fold to 0 in the comparison keys, making every line alike."""
    return "".join("कखगघचछजझटठ"[int(d)] for d in str(number))


def write_inputs(folder: Path) -> list[Source]:
    """A JSONL file of 3 MB with blank, broken and non-UTF-8 lines, a text file of lines, a Parquet file of
    five row groups: each read as several shards at split_mb 1."""
    folder.mkdir()
    lines = []
    for i in range(6000):
        if i % 997 == 5:
            lines.append(b"   ")
        elif i % 1009 == 7:
            lines.append(b"{not json")
        elif i % 1499 == 11:
            lines.append(b'{"text": "\xff\xfe"}')
        else:
            words = " ".join(f"शब्द{spell(i)}ओ{spell(j)}" for j in range(i % 40 + 8))
            lines.append(json.dumps({"text": words, "n": i}, ensure_ascii=False).encode())
    (folder / "big.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    # Digits fold to 0: most of these lines are alike, and repeated_lines rejects them
    numbered = [" ".join(f"शब्द{i}x{j}" for j in range(i % 40 + 8)).encode() if i % 5 else b"  " for i in range(6000)]
    (folder / "big.txt").write_bytes(b"\n".join(numbered) + b"\n")
    table = pa.table({"text": [f"पंक्ति {spell(i)} " * (i % 30 + 5) for i in range(5000)], "n": list(range(5000))})
    pq.write_table(table, folder / "big.parquet", row_group_size=1000)
    (folder / "small").mkdir()
    for f in range(12):
        rows = [{"text": " ".join(f"फ़ाइल{spell(f)}ओ{spell(i)}ओ{spell(j)}" for j in range(20))} for i in range(300)]
        (folder / "small" / f"{f:02d}.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
    return [
        Source(path=str(folder / "big.jsonl"), format="jsonl", lang="hi"),
        Source(path=str(folder / "big.txt"), format="txt", unit="line", lang="hi"),
        Source(path=str(folder / "big.parquet"), format="parquet", lang="hi"),
        Source(path=str(folder / "small" / "*.jsonl"), format="jsonl", lang="hi"),
    ]


def test_large_files_split_small_files_grouped_and_the_output_written_by_the_tasks(cluster, tmp_path, monkeypatch):
    """Big files are read as ranges and row groups, small ones several to a task; the output, several files of
    several row groups each, is written by the tasks (the driver writes no row) and equals the local one."""
    sources = write_inputs(tmp_path / "in")
    shards = ray_executor.plan(sources, split_bytes=2**20)
    per_file = {str(p): sum(s.paths == [p] for s in shards) for p in (Path(s.path) for s in sources[:3])}
    assert all(n >= 2 for n in per_file.values()), per_file
    small = [s.paths for s in shards if s.source is sources[3]]
    assert 2 <= len(small) < 12 and sum(small, []) == sources[3].files()

    stages = pipeline.StagesConfig()
    for name in ("identify", "quality", "dedup"):  # short work per record; repeated_lines keeps a corpus stage
        getattr(stages, name).enabled = False
    monkeypatch.setattr(pipeline, "ROW_GROUP_BYTES", 2**18)  # the driver lays out the row groups
    runs = {}
    for executor in ("local", "ray"):
        config = pipeline.PrepareConfig(
            sources=sources,
            output_dir=str(tmp_path / executor),
            executor=executor,
            split_mb=1,
            shard_mb=2,
            shard_records=4000,
            stages=stages,
        )
        if executor == "ray":
            monkeypatch.setattr(pq, "ParquetWriter", None)  # this process, the driver, can no longer write rows
        report = pipeline.run(config)
        runs[executor] = outputs(tmp_path / executor)
    assert runs["ray"] == runs["local"]
    assert sum(name.startswith("data/") for name in runs["ray"]) >= 3
    assert sum(name.startswith("rejected/") for name in runs["ray"]) >= 2
    with pq.ParquetFile(tmp_path / "ray" / "data" / "part-00000.parquet") as first:
        assert first.num_row_groups >= 2
    rows = pq.read_table(tmp_path / "ray" / "data").num_rows + pq.read_table(tmp_path / "ray" / "rejected").num_rows
    assert rows == report["totals"]["input"] > 16_000


class KillOnce(Stage):
    """Kills the worker process running it, the first time only (a marker file remembers)."""

    name, kinds, columns = "kill_once", ("web",), {}

    def __init__(self, marker: Path):
        self.marker = marker
        super().__init__(StageConfig())

    def process(self, record):
        if not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return None


def test_a_killed_worker_is_retried_and_the_output_equals_local(cluster, tmp_path, prepared_sample, monkeypatch):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    marker = tmp_path / "killed"

    def with_killer(config, build=pipeline.build_stages):
        stages = build(config)
        first_corpus = next(i for i, s in enumerate(stages) if isinstance(s, CorpusStage))
        return [*stages[:first_corpus], KillOnce(marker), *stages[first_corpus:]]

    monkeypatch.setattr(pipeline, "build_stages", with_killer)
    report = prepare(REPO / "recipes/data/sample.yaml", tmp_path / "o", "--executor", "ray")
    assert marker.exists()  # a worker was killed
    assert report == prepared_sample[1]
    assert outputs(tmp_path / "o") == outputs(prepared_sample[0])


def test_a_killed_driver_leaves_the_last_result_and_the_rerun_gives_the_same_bytes(cluster, tmp_path, prepared_sample):
    out = tmp_path / "o"
    shutil.copytree(prepared_sample[0], out)
    before = {p: (out / p).read_bytes() for p in sorted(str(f.relative_to(out)) for f in out.rglob("*") if f.is_file())}
    command = [sys.executable, "scripts/prepare_data.py", "--config", "recipes/data/sample.yaml"]
    command += ["--output_dir", str(out), "--executor", "ray", "--ray_address", cluster.address]
    driver = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = tmp_path / "o.partial" / "ray" / "records"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(records.glob("*.kept.parquet")):
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert any(records.glob("*.kept.parquet"))  # killed mid-run, after some tasks finished
    assert {p: (out / p).read_bytes() for p in before} == before

    prepare(REPO / "recipes/data/sample.yaml", out, "--executor", "ray")
    assert outputs(out) == outputs(prepared_sample[0]) and not (tmp_path / "o.partial").exists()


def test_ray_address_null_starts_ray_on_this_machine(tmp_path, prepared_sample):
    """Not the cluster RAY_ADDRESS names (here nothing listens there): a Ray instance of its own."""
    out = tmp_path / "o"
    command = [sys.executable, "scripts/prepare_data.py", "--config", "recipes/data/sample.yaml"]
    command += ["--output_dir", str(out), "--executor", "ray"]
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:9"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert outputs(out) == outputs(prepared_sample[0])

"""The corpus stages on a two-node Ray cluster give, row for row, what the local executor gives."""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from indictune.data import pipeline  # noqa: E402
from indictune.data.ray_corpus import RayCorpusError, judge_corpus_stage  # noqa: E402
from indictune.data.stages.dedup import Dedup, DedupConfig, RepeatedLines, RepeatedLinesConfig  # noqa: E402

SPILLED = {**pipeline.CORE_COLUMNS, "quality_score": pa.float64(), **pipeline.REJECT_COLUMNS}


@pytest.fixture(scope="module")
def cluster():
    """Two nodes of one CPU each on this machine: shards' tasks are spread over both."""
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 80 * 2**20})
    nodes.add_node(num_cpus=1, object_store_memory=80 * 2**20)
    ray.init(address=nodes.address, logging_level=logging.WARNING)
    yield nodes
    ray.shutdown()
    nodes.shutdown()


def make(i: int, text: str, *, kind: str = "web", source: str = "news.jsonl", reason: str | None = None) -> dict:
    return {
        "id": f"{source}#{i}",
        "text": text,
        "lang": "hi",
        "script": "Deva",
        "source": source,
        "kind": kind,
        "meta": {"line": i},
        "quality_score": 0.5,
        "stage": "quality" if reason else None,
        "reason": reason,
    }


def project_corpus() -> list[dict]:
    """Hindi documents with a footer, exact copies (spacing and digits differ), a near-duplicate chain, records
    already rejected and records of another kind."""
    footer = "इस लेख को साझा करें: फेसबुक | ट्विटर"
    topics = ["खेती", "बारिश", "स्कूल", "बाज़ार", "रेल", "नदी", "पहाड़", "मेला", "डाक", "बिजली", "सड़क", "किताब"]
    base = "आज सुबह गाँव के लोग {t} के बारे में बात करने के लिए चौपाल पर इकट्ठा हुए और देर तक चर्चा चलती रही"
    records = []
    for i, topic in enumerate(topics):
        records.append(make(len(records), f"{base.format(t=topic)} यह दिन {i} था\n{footer}"))
        if i % 3 == 0:
            records.append(make(len(records), f"{base.format(t=topic)}  यह दिन {i + 1} था\n{footer}"))  # exact
        if i % 4 == 1:
            records.append(make(len(records), footer, reason="too_short"))
            records.append(make(len(records), f"{base.format(t=topic)} यह दिन {i} था", kind="ocr"))
            records.append(make(len(records), f"{footer}\nठीक है"))  # nothing but boilerplate left
    consonants = "कखगघचछजझटठडढतथदधनपफबभमयरलवसह"
    vocabulary = [f"{a}ा{b}ी" for a in consonants[:8] for b in consonants[8:14]]
    for k in range(4):  # a sliding window: each shares most 5-grams with the next, few with the ones after
        records.append(make(len(records), " ".join(vocabulary[6 * k : 6 * k + 30])))
    return records


def flores_corpus(shared: Path) -> list[dict]:
    """FLORES dev sentences in three languages, three to a document, with copies planted across the corpus."""
    records = []
    for code, lang in (("hin_Deva", "hi"), ("tam_Taml", "ta"), ("ben_Beng", "bn")):
        lines = (shared / "flores200" / "dev" / f"{code}.dev").read_text().splitlines()[:90]
        for j in range(0, len(lines), 3):
            record = make(len(records), "\n".join(lines[j : j + 3]), source=f"flores.{lang}")
            records.append({**record, "lang": lang})
    planted = []
    for k, doc in enumerate(records[::7]):
        copy = doc["text"] if k % 2 else doc["text"].replace("\n", " \n ", 1) + " और"  # exact / near
        planted.append({**doc, "id": f"planted#{k}", "text": copy, "meta": {"copy_of": doc["id"]}})
    return records[:45] + planted + records[45:]


def write_shards(records: list[dict], directory: Path, per_shard: int) -> list[Path]:
    writer = pipeline.ShardWriter(directory, pa.schema(SPILLED), 2**30, per_shard)
    writer.write([dict(r) for r in records])
    writer.close()
    return sorted(directory.glob("part-*.parquet"))


def local_rows(stage, records: list[dict], tmp: Path) -> list[dict]:
    """The local executor's observe / finish_observing / process over the records, as Parquet rows."""
    pipeline._observe_and_spill(
        stage, [[dict(r) for r in records]], pipeline.ShardWriter(tmp / "spill", pa.schema(SPILLED), 2**30)
    )
    writer = pipeline.ShardWriter(tmp / "local", pa.schema({**SPILLED, **stage.columns}), 2**30)
    for batch in pipeline._read_and_judge(stage, tmp / "spill", 7):
        writer.write(batch)
    writer.close()
    return pq.read_table(tmp / "local").to_pylist()


def ray_rows(stage, shards: list[Path], out: Path, partitions: int | None = None) -> list[dict]:
    outputs = judge_corpus_stage(stage, shards, out, partitions=partitions)
    assert [pq.read_metadata(o).num_rows for o in outputs] == [pq.read_metadata(s).num_rows for s in shards]
    return [row for path in outputs for row in pq.read_table(path).to_pylist()]


CONFIGS = {
    "repeated_lines": lambda: RepeatedLines(RepeatedLinesConfig(min_documents=3, min_words_left=3)),
    "dedup": lambda: Dedup(DedupConfig()),
    "dedup_exact_off": lambda: Dedup(DedupConfig(exact=False)),
    "dedup_near_off": lambda: Dedup(DedupConfig(near=False)),
    "dedup_low_threshold": lambda: Dedup(DedupConfig(threshold=0.5, bands=28)),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_ray_matches_local_on_project_text(cluster, tmp_path, name):
    records = project_corpus()
    shards = write_shards(records, tmp_path / "in", 5)
    local = local_rows(CONFIGS[name](), records, tmp_path)
    assert ray_rows(CONFIGS[name](), shards, tmp_path / "ray", partitions=3) == local
    assert any(r["reason"] and r["stage"] == CONFIGS[name]().name for r in local)


def test_near_duplicate_chain_across_three_shards_is_one_cluster(cluster, tmp_path):
    records = project_corpus()[-4:]
    shards = write_shards(records, tmp_path / "in", 1)
    rows = ray_rows(CONFIGS["dedup_low_threshold"](), shards, tmp_path / "ray")
    assert rows == local_rows(CONFIGS["dedup_low_threshold"](), records, tmp_path)
    assert [r["cluster_size"] for r in rows] == [4] * 4
    assert [r["duplicate_of"] for r in rows] == [None] + [records[0]["id"]] * 3
    stage = Dedup(DedupConfig(threshold=0.5, bands=28))
    signatures = [stage.signature(r["text"]) for r in records]
    assert [bool(stage.similar(signatures[0], s)) for s in signatures] == [True, True, False, False]
    assert all(stage.similar(a, b) for a, b in zip(signatures, signatures[1:]))  # only the chain links the ends


@pytest.mark.parametrize("name", ["repeated_lines", "dedup", "dedup_exact_off"])
def test_ray_matches_local_on_flores(cluster, shared_data, tmp_path, name):
    records = flores_corpus(shared_data)
    shards = write_shards(records, tmp_path / "in", 17)
    local = local_rows(CONFIGS[name](), records, tmp_path)
    assert ray_rows(CONFIGS[name](), shards, tmp_path / "ray") == local
    if name != "repeated_lines":
        order = {r["id"]: i for i, r in enumerate(records)}
        kept_of = {r["id"]: r["duplicate_of"] for r in local}
        for copy in (r for r in records if "copy_of" in r["meta"]):  # the later of the two names the earlier
            earlier, later = sorted([copy["id"], copy["meta"]["copy_of"]], key=order.get)
            assert kept_of[later] == earlier


def test_no_task_holds_every_signature_or_candidate_pair(cluster, tmp_path, caplog):
    records = project_corpus()
    shards = write_shards(records, tmp_path / "in", 6)
    with caplog.at_level(logging.INFO, logger="indictune.data.ray_corpus"):
        ray_rows(CONFIGS["dedup_low_threshold"](), shards, tmp_path / "ray", partitions=3)
    received = {r.args[1]: r.args[2] for r in caplog.records if len(r.args or ()) == 3}
    for label in ("signatures", "bucket entries", "candidate pairs", "pairs verified", "large-star edges"):
        counts = received[label]
        assert len(counts) > 1 and max(counts) < sum(counts), (label, counts)


def test_stage_without_a_distributed_form_is_refused(cluster, tmp_path):
    from indictune.data.stages import CorpusStage, StageConfig

    class Other(CorpusStage):
        name = "other"

    with pytest.raises(RayCorpusError, match="no distributed form"):
        judge_corpus_stage(Other(StageConfig()), [], tmp_path)

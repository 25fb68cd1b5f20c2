"""The data pipeline on the sample corpus: every record accounted for, every plant handled, outputs atomic."""

import hashlib
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from indictune.core import recipe
from indictune.data import pipeline
from indictune.data.readers import Source, SourceError
from indictune.data.stages.dedup import Dedup, RepeatedLines

REPO = Path(__file__).resolve().parent.parent


def table(directory: Path):
    return pq.read_table(directory).to_pandas().set_index("id")


def test_counts_add_up_per_source(prepared_sample):
    out, report = prepared_sample
    kept, rejected = table(out / "data"), table(out / "rejected")
    assert report["totals"]["input"] == report["totals"]["kept"] + report["totals"]["rejected"]
    for source, counts in report["sources"].items():
        assert counts["input"] == counts["kept"] + counts["rejected"], source
        assert (kept.source == source).sum() == counts["kept"]
        assert (rejected.source == source).sum() == counts["rejected"]
    assert report["totals"] == {"input": 92, "kept": len(kept), "rejected": len(rejected)}
    assert (out / "report.md").read_text().startswith("# Data preparation report")
    assert (out / "report.png").stat().st_size > 1000


def test_every_reject_has_a_stage_and_reason(prepared_sample, planted):
    out, report = prepared_sample
    rejected = table(out / "rejected")
    assert rejected.stage.notna().all() and rejected.reason.notna().all()
    for plant in planted["rejected"]:
        row = rejected.loc[plant["id"]]
        assert row.stage == plant["stage"], plant
        assert row.reason == plant.get("reason", row.reason) and row.reason.startswith(plant.get("reason_prefix", ""))
    for dup in planted["exact_duplicates"]:
        assert (rejected.loc[dup["id"]].reason, rejected.loc[dup["id"]].duplicate_of) == (
            "exact_duplicate",
            dup["duplicate_of"],
        )
    for dup in planted["near_duplicates"]:
        assert (rejected.loc[dup["id"]].reason, rejected.loc[dup["id"]].duplicate_of) == ("near_duplicate", dup["near"])
    # Only the planted rejects are rejected: the sample's real documents all pass.
    planted_ids = {p["id"] for p in planted["rejected"]} | {
        d["id"] for d in planted["exact_duplicates"] + planted["near_duplicates"]
    }
    assert set(rejected.index) == planted_ids


def test_languages_are_identified(prepared_sample, planted):
    kept = table(prepared_sample[0] / "data")
    for plant in planted["undeclared_language"]:
        assert kept.loc[plant["id"]].lang == plant["lang"]
    assert set(kept.lang) == {"hi", "mr", "bn", "ta", "te", "en"}
    by_lang = kept.groupby("lang").script.unique()
    assert {lang: list(s) for lang, s in by_lang.items()} == {
        "bn": ["Beng"],
        "en": ["Latn"],
        "hi": ["Deva"],
        "mr": ["Deva"],
        "ta": ["Taml"],
        "te": ["Telu"],
    }


def test_identifiers_are_replaced_and_counted(prepared_sample, planted):
    out, report = prepared_sample
    kept = table(out / "data")
    for plant in planted["pii"]:
        text = kept.loc[plant["id"]].text
        for value in plant["redacted"]:
            assert value not in text, value
        for value in plant.get("kept", []):
            assert value in text, value
    assert report["pii_redacted"] == {"email": 2, "phone": 4, "aadhaar": 2, "pan": 1}
    everything = " ".join(kept.text)
    assert "@example.in" not in everything and "98765 43210" not in everything


def test_ocr_book_is_cleaned(prepared_sample, planted):
    kept = table(prepared_sample[0] / "data")
    book = kept[kept.kind == "ocr"]
    text = "\n".join(book.text)
    for header in planted["ocr"]["running_headers"]:
        assert header not in text
    assert "— " not in text  # page numbers
    for word in planted["ocr"]["joined_hyphenations"] + planted["ocr"]["kept_hyphenations"]:
        assert word in text
    for word in planted["ocr"]["repaired_vowel_signs"]:
        assert word in text
    assert "◌" not in text and "क ि" not in text
    assert book.ocr_lines_removed.sum() == 10  # a header and a page number on each of five pages


def test_transcripts_are_cleaned(prepared_sample, planted):
    kept = table(prepared_sample[0] / "data")
    transcripts = kept[kept.kind == "asr"]
    assert len(transcripts) == 2
    text = "\n".join(transcripts.text)
    for removed in planted["asr"]["removed"]:
        assert removed not in text, removed
    assert text.count(planted["asr"]["loop"]) == 1
    assert planted["asr"]["stutter"] not in text and "ஆனால் ஒன்றை" in text
    assert not re.search(r"\d\d:\d\d[:,.]\d\d", text) and "-->" not in text  # no timestamps


def test_output_is_arrow_with_a_fixed_schema(prepared_sample):
    import datasets

    out = prepared_sample[0]
    corpus = datasets.load_dataset("parquet", data_files=str(out / "data" / "*.parquet"), split="train")
    assert {
        "id",
        "text",
        "lang",
        "script",
        "source",
        "kind",
        "meta",
        "script_fraction",
        "n_words",
        "text_hash",
        "pii_aadhaar",
        "ocr_lines_removed",
        "asr_loop_words_removed",
    } <= set(corpus.column_names)
    assert json.loads(corpus[0]["meta"])["where"] == "line 1"
    rejected = pq.read_schema(next((out / "rejected").glob("*.parquet")))
    assert {"stage", "reason"} <= set(rejected.names)


def digest(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.suffix in (".parquet", ".json", ".md")
    }


def test_rerun_gives_the_same_files_and_a_crash_keeps_the_last_result(tmp_path, monkeypatch):
    out = tmp_path / "run"
    config = recipe.load(pipeline.PrepareConfig, REPO / "recipes/data/sample.yaml", [f"--output_dir={out}"])
    pipeline.run(config)
    first = digest(out)
    pipeline.run(config)
    assert digest(out) == first

    def crash(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(pipeline, "run_stages", crash)
    with pytest.raises(RuntimeError):
        pipeline.run(config)
    assert digest(out) == first  # the previous result is untouched; the partial one is cleaned at the next run
    monkeypatch.undo()
    pipeline.run(config)
    assert digest(out) == first and not (tmp_path / "run.partial").exists()


def test_bad_stage_settings_and_missing_sources_fail_clearly(tmp_path):
    config = pipeline.PrepareConfig(
        sources=[Source(path=str(tmp_path / "none.jsonl"), format="jsonl")], output_dir=str(tmp_path / "o")
    )
    with pytest.raises(SourceError, match="none.jsonl"):
        pipeline.run(config)
    assert not (tmp_path / "o").exists()


def test_sources_are_checked_before_the_output_is_touched(tmp_path, prepared_sample):
    """A file listed twice is refused by check_sources at the start of run(): the last result stays as it was."""
    out = tmp_path / "o"
    shutil.copytree(prepared_sample[0], out)
    before = digest(out)
    twice = [Source(path="data/sample/web/hi.jsonl", format="jsonl", lang="hi")] * 2
    with pytest.raises(SourceError, match="list each file once"):
        pipeline.run(pipeline.PrepareConfig(sources=twice, output_dir=str(out)))
    assert digest(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_shards_roll_over(tmp_path):
    """By record count when shard_records is given (and by size, see the next test)."""
    config = recipe.load(
        pipeline.PrepareConfig,
        REPO / "recipes/data/sample.yaml",
        [f"--output_dir={tmp_path / 'o'}", "--shard_records", "20"],
    )
    report = pipeline.run(config)
    shards = sorted((tmp_path / "o" / "data").glob("*.parquet"))
    assert len(shards) == -(-report["totals"]["kept"] // 20)
    assert sum(pq.read_metadata(s).num_rows for s in shards) == report["totals"]["kept"]


def test_writers_spill_by_bytes_the_same_way_for_any_batching(tmp_path, monkeypatch):
    """A row group ends with the record that brings it to ROW_GROUP_BYTES, a file with the one that brings it to
    shard_bytes, wherever the batches handed in end."""
    monkeypatch.setattr(pipeline, "ROW_GROUP_BYTES", 2_000)
    schema = pa.schema(pipeline.CORE_COLUMNS)
    records = [
        {"id": f"f#{i}", "text": "क" * (i % 97), "lang": "hi", "source": "f", "kind": "web", "meta": {"i": i}}
        for i in range(500)
    ]
    files = {}
    for size in (1, 7, 500):
        writer = pipeline.ShardWriter(tmp_path / str(size), schema, shard_bytes=10_000)
        for start in range(0, len(records), size):
            writer.write(records[start : start + size])
        writer.close()
        files[size] = digest(tmp_path / str(size))
    assert files[1] == files[7] == files[500]

    shards = sorted((tmp_path / "7").glob("*.parquet"))
    assert len(shards) > 3
    for i, shard in enumerate(shards):
        parquet = pq.ParquetFile(shard)
        groups = [pipeline.row_bytes(parquet.read_row_group(g).to_batches()[0]) for g in range(parquet.num_row_groups)]
        if i < len(shards) - 1:
            file_bytes = sum(int(g.sum()) for g in groups)
            assert file_bytes >= 10_000 > file_bytes - int(groups[-1][-1])
        for g in groups[:-1]:
            assert g.sum() >= 2_000 > g.sum() - g[-1]
    assert [r["id"] for r in pq.read_table(tmp_path / "7").to_pylist()] == [r["id"] for r in records]
    back = [r for batch in pipeline.read_shards(tmp_path / "7", 64) for r in batch]
    assert len(back) == 500 and back[3]["meta"] == {"i": 3}


def test_output_is_the_same_for_any_number_of_workers(tmp_path, prepared_sample):
    config = recipe.load(
        pipeline.PrepareConfig,
        REPO / "recipes/data/sample.yaml",
        [f"--output_dir={tmp_path / 'o'}", "--num_proc", "2", "--batch_size", "5"],
    )
    pipeline.run(config)
    assert digest(tmp_path / "o") == digest(prepared_sample[0])


def test_corpus_stages_process_each_record_once_and_read_each_spill_once(tmp_path, monkeypatch):
    calls, spills_read = Counter(), []

    def counting(cls, method):
        original = getattr(cls, method)

        def counted(self, record):
            calls[cls.name, method] += 1
            return original(self, record)

        return counted

    def read_shards(directory, batch_size, original=pipeline.read_shards):
        spills_read.append(directory.name)
        return original(directory, batch_size)

    for cls in (RepeatedLines, Dedup):
        for method in ("observe", "process"):
            monkeypatch.setattr(cls, method, counting(cls, method))
    monkeypatch.setattr(pipeline, "read_shards", read_shards)
    config = recipe.load(pipeline.PrepareConfig, REPO / "recipes/data/sample.yaml", [f"--output_dir={tmp_path / 'o'}"])
    report = pipeline.run(config)
    assert calls["repeated_lines", "process"] == calls["repeated_lines", "observe"] > 0
    reaching_dedup = report["totals"]["kept"] + sum(report["rejected"]["dedup"].values())
    assert calls["dedup", "process"] == calls["dedup", "observe"] == reaching_dedup
    assert spills_read == ["repeated_lines.spill", "dedup.spill"]


def test_kill_9_at_any_point_then_rerun_gives_the_same_bytes(tmp_path, prepared_sample):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "o"
    command = [
        sys.executable,
        "scripts/prepare_data.py",
        "--config",
        "recipes/data/sample.yaml",
        "--output_dir",
        str(out),
    ]
    for delay in (0.5, 1.5, 2.5):
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert not out.exists() or digest(out) == digest(prepared_sample[0])  # never a half-written result
    subprocess.run(command, cwd=REPO, check=True, capture_output=True)
    assert digest(out) == digest(prepared_sample[0]) and not (tmp_path / "o.partial").exists()

"""The training benchmark runs end to end on the CPU (its GPU figures are in docs/benchmarks.md)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_bench_train_measures_both_paths_on_a_tiny_model(tmp_path):
    out = tmp_path / "train.json"
    result = subprocess.run(
        [
            sys.executable,
            "scripts/bench_train.py",
            "--model",
            "tiny",
            "--max_length",
            "256",
            "--steps",
            "6",
            "--warmup_steps",
            "2",
            "--output",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(out.read_text())
    ours, plain = figures["results"]["indictune"], figures["results"]["plain TRL + PEFT"]
    assert ours["tokens_per_second_per_gpu"] > 0 and plain["tokens_per_second_per_gpu"] > 0
    assert figures["ratio"] == pytest.approx(
        ours["tokens_per_second_per_gpu"] / plain["tokens_per_second_per_gpu"], rel=1e-2
    )
    assert 0 < ours["final_loss"] < 20 and 0 < plain["final_loss"] < 20
    assert figures["goals"] == {}  # judged only for Llama-3.1-8B on a GPU
    assert "indictune / plain" in result.stdout
    # --check cannot pass where the goals are not judged
    failed = subprocess.run(
        [
            sys.executable,
            "scripts/bench_train.py",
            "--model",
            "tiny",
            "--max_length",
            "128",
            "--steps",
            "3",
            "--warmup_steps",
            "1",
            "--output",
            str(tmp_path / "again.json"),
            "--check",
            "true",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert failed.returncode == 1


@pytest.mark.slow
@pytest.mark.parametrize("shapes, limit", [("[copa, indicnews]", 16), ("[belebele]", 4)])
def test_bench_eval_agrees_with_lm_evaluation_harness_and_is_faster_on_every_shape(
    tmp_path, shared_data, shapes, limit
):
    """Two choices after short premises, eleven labels after headlines, four after long passages (a few only: lm-eval
    takes 15 s a batch of them here): each within 1e-4 of lm-eval's log-likelihoods and faster. The 2x goals are
    checked as they are; COPA's 1.5x, which docs/benchmarks.md measures at 1.73x on 200 questions, only to 1.3x:
    on 16 questions of a shared 2-core machine its ratio moves by a tenth either way."""
    out = tmp_path / "eval.json"
    result = subprocess.run(
        [sys.executable, "scripts/bench_eval.py", "--shapes", shapes, "--limit", str(limit), "--output", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for shape, measured in json.loads(out.read_text())["shapes"].items():
        assert measured["questions"] == limit
        assert measured["choices_per_question"] == {"copa": 2, "indicnews": 11, "belebele": 4}[shape]
        assert measured["max_abs_loglikelihood_difference"] <= 1e-4 and measured["same_argmax"] == 1.0
        goal = 1.3 if shape == "copa" else measured["speedup_goal"]
        assert measured["speedup"] >= goal, (shape, measured["speedup"], measured["seconds"])


@pytest.mark.slow
def test_prepare_data_memory_does_not_grow_with_the_file(tmp_path):
    """Reading and writing one large file, in each format: peak RSS under 400 MB and flat from 20 to 80 MB
    (docs/benchmarks.md has the 200 MB and 1 GB figures)."""
    out = tmp_path / "memory.json"
    result = subprocess.run(
        [
            sys.executable,
            "scripts/bench_memory.py",
            "--sizes_mb",
            "20,80",
            "--formats",
            "jsonl,jsonl.zst,csv,tsv,txt-paragraph,txt-line,parquet",
            "--max_rss_mb",
            "400",
            "--max_growth_mb",
            "25",
            "--scratch",
            str(tmp_path),
            "--json",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["failures"] == []
    for name, by_size in figures["results"].items():
        assert by_size["80"]["records"] > 3 * by_size["20"]["records"] > 0, name  # every record was read

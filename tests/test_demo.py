"""The demo chain in a reduced form, through the same commands and recipes as `make demo`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(*command: str) -> str:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result.stdout


def test_the_demo_script_is_valid_bash():
    subprocess.run(["bash", "-n", "scripts/demo.sh"], cwd=REPO, check=True)


@pytest.mark.slow
def test_the_whole_chain_on_the_sample(tmp_path):
    data, tok_base, base = tmp_path / "data", tmp_path / "tokenizer-base", tmp_path / "base"
    tok, adapter, board = tmp_path / "tokenizer", tmp_path / "cpt-lora", tmp_path / "leaderboard"
    python, launch = sys.executable, [str(BIN / "accelerate"), "launch", "--config_file", "recipes/accelerate/cpu.yaml"]

    run(python, "scripts/prepare_data.py", "--config", "recipes/data/sample.yaml", "--output_dir", str(data))
    run(
        python,
        "scripts/extend_tokenizer.py",
        "--config",
        "recipes/tokenizer/demo-base.yaml",
        "--output_dir",
        str(tok_base),
        "--train_data",
        str(data),
    )
    run(
        *launch,
        "scripts/train.py",
        "--config",
        "recipes/train/demo/base-pretrain.yaml",
        "--tokenizer_name_or_path",
        str(tok_base),
        "--train_data",
        str(data),
        "--output_dir",
        str(base),
        "--num_train_epochs",
        "8",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
    )
    run(
        python,
        "scripts/extend_tokenizer.py",
        "--config",
        "recipes/tokenizer/demo-extend.yaml",
        "--output_dir",
        str(tok),
        "--base_tokenizer",
        str(tok_base),
        "--train_data",
        str(data),
    )
    run(
        *launch,
        "scripts/train.py",
        "--config",
        "recipes/train/demo/cpt-lora.yaml",
        "--model_name_or_path",
        str(base),
        "--tokenizer_name_or_path",
        str(tok),
        "--train_data",
        str(data),
        "--output_dir",
        str(adapter),
        "--num_train_epochs",
        "4",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
    )
    run(
        *launch,
        "scripts/train.py",
        "--config",
        "recipes/train/demo/sft-lora.yaml",
        "--model_name_or_path",
        str(adapter / "merged"),
        "--output_dir",
        str(tmp_path / "sft-lora"),
        "--num_train_epochs",
        "1",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
    )
    run(
        python,
        "scripts/evaluate.py",
        "--config",
        "recipes/eval/demo.yaml",
        "--model",
        str(base),
        "--adapter",
        str(adapter),
        "--output_dir",
        str(tmp_path / "eval"),
        "--db",
        str(tmp_path / "lb.sqlite"),
        "--bootstrap_samples",
        "200",
    )
    printed = run(python, "scripts/leaderboard.py", "--db", str(tmp_path / "lb.sqlite"), "--out", str(board))

    runs = json.loads((tmp_path / "eval" / "results.json").read_text())["runs"]
    base_run, adapted = runs
    assert adapted["base_label"] == base_run["label"] == str(base)
    bpc = {run["label"]: {s["lang"]: s for s in run["scores"] if s["metric"] == "bits_per_character"} for run in runs}
    for lang in ("hi", "mr", "bn", "ta", "te"):
        score = bpc[adapted["label"]][lang]
        assert score["value"] < bpc[base_run["label"]][lang]["value"], lang
        assert score["delta_high"] < 0, lang  # better beyond the interval
    fertility = {s["lang"]: s for s in adapted["scores"] if s["metric"] == "tokens_per_word"}
    assert all(fertility[lang]["delta"] < 0 for lang in ("hi", "mr", "bn", "ta", "te"))
    assert "## sample-heldout: bits per character" in printed
    assert (board / "leaderboard.html").is_file() and (adapter / "lineage.json").is_file()
    sft = json.loads((tmp_path / "sft-lora" / "lineage.json").read_text())
    assert sft["stage"] == "sft" and sft["base_model"] == str(adapter / "merged") and sft["chat_records"] == 12

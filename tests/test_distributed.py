"""Two ranks on the CPU through `accelerate launch` and the shipped DeepSpeed configs (ZeRO-2, ZeRO-3,
over gloo): LoRA with an extended vocabulary and trainable new rows trains, the saved adapter reloads on a
fresh base to the trained model's logits, and a ZeRO-3 run resumes on the same loss curve."""

import shutil
from pathlib import Path

import pytest
import torch
from conftest import run_unless_hung
from peft import AutoPeftModelForCausalLM
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def launch(
    config: str,
    port: int,
    out: Path,
    prepared,
    base_dir,
    tokenizer_dir,
    *extra,
    recipe: str = "recipes/train/demo/cpt-lora.yaml",
    timeout: int = 600,
    env: dict | None = None,
    check: bool = True,
) -> dict:
    """scripts/train.py on two CPU ranks via tests/distributed_train.py; what rank 0 saw after training, and
    what the ranks printed (with check false: the exit status and output only, for a run meant to fail). A run
    still going after `timeout` seconds is taken for a hang: every process of it is killed and the test fails."""
    command = [
        "accelerate",
        "launch",
        "--config_file",
        f"recipes/accelerate/{config}.yaml",
        "--num_processes",
        "2",
        "--mixed_precision",
        "no",
        "--main_process_port",
        str(port),
        "tests/distributed_train.py",
        "data/sample/heldout/ta.txt",
        "--config",
        recipe,
        "--ddp_backend",
        "gloo",
        "--model_name_or_path",
        str(base_dir),
        "--tokenizer_name_or_path",
        str(tokenizer_dir),
        "--train_data",
        str(prepared),
        "--output_dir",
        str(out),
        "--max_length",
        "128",
        "--per_device_train_batch_size",
        "2",
        "--gradient_accumulation_steps",
        "2",
        "--max_steps",
        "6",
        "--learning_rate",
        "5e-3",
        "--warmup_steps",
        "0",
        "--logging_steps",
        "1",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        *extra,
    ]
    returncode, stdout, stderr = run_unless_hung(
        command, {"DS_ACCELERATOR": "cpu", **(env or {})}, timeout, "the two ranks"
    )
    if not check:
        return {"returncode": returncode, "stdout": stdout, "stderr": stderr}
    assert returncode == 0, stdout[-3000:] + stderr[-5000:]
    return {**torch.load(out / "trained.pt", weights_only=False), "stdout": stdout}


@pytest.mark.parametrize("stage", [2, 3])
def test_two_ranks_train_lora_with_new_rows_and_save_a_complete_adapter(
    stage, tmp_path, prepared_sample, tiny_base_dir, extended_tokenizer_dir
):
    out = tmp_path / "run"
    seen = launch(
        f"zero{stage}",
        29510 + stage,
        out,
        prepared_sample[0],
        tiny_base_dir,
        extended_tokenizer_dir,
        "--lora_r",
        "8",
        "--lora_alpha",
        "16",
    )
    assert seen["world_size"] == 2 and seen["zero_stage"] == stage
    assert bool(seen["sharded"]) == (stage == 3)  # ZeRO-3 partitions the weights across the ranks
    assert len(seen["losses"]) == 6 and seen["losses"][-1] < seen["losses"][0]
    assert seen["log_history"][0]["tokens_per_second_per_gpu"] > 0

    # The adapter holds LoRA weights and the new rows only, all of them, with real values.
    saved = load_file(str(out / "adapter_model.safetensors"))
    rows = {k: v for k, v in saved.items() if "trainable_tokens_delta" in k}
    assert {k.split(".")[-3] for k in rows} == {"embed_tokens", "lm_head"}
    base_size, size = seen["vocab"]
    assert all(v.shape == (size - base_size, 64) and v.norm() > 0 for v in rows.values())
    assert all("lora_" in k or "trainable_tokens_delta" in k for k in saved)
    assert all(v.numel() > 0 and v.norm() > 0 for k, v in saved.items() if "lora_B" in k)

    reloaded = AutoPeftModelForCausalLM.from_pretrained(out).eval()  # a fresh base, resized and patched
    with torch.no_grad():
        logits = reloaded(input_ids=seen["input_ids"]).logits
    assert torch.allclose(logits, seen["logits"], atol=1e-5)


def test_zero3_resumes_from_a_checkpoint_on_the_same_loss_curve(
    tmp_path, prepared_sample, tiny_base_dir, extended_tokenizer_dir
):
    args = (
        prepared_sample[0],
        tiny_base_dir,
        extended_tokenizer_dir,
        "--save_strategy",
        "steps",
        "--save_steps",
        "3",
        "--lora_r",
        "8",
        "--lora_alpha",
        "16",
    )
    whole = launch("zero3", 29520, tmp_path / "whole", *args)
    # A run that died after its step-3 checkpoint: the checkpoint is all that is left of it.
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    shutil.copytree(tmp_path / "whole" / "checkpoint-3", crashed / "checkpoint-3")
    resumed = launch("zero3", 29521, crashed, *args)
    before = {h["step"]: h["loss"] for h in whole["log_history"] if "loss" in h}
    after = {h["step"]: h["loss"] for h in resumed["log_history"] if "loss" in h and h["step"] > 3}
    assert sorted(after) == [4, 5, 6]
    # Said once, by the main process: the other rank logs warnings only.
    assert resumed["stdout"].count(f"resuming from {crashed}/checkpoint-3 (step 3)") == 1
    assert resumed["stdout"].count(f"trained 3 steps; saved to {crashed}") == 1
    assert max(abs(after[s] - before[s]) for s in after) <= 1e-3
    assert torch.allclose(resumed["logits"], whole["logits"], atol=1e-4)


def test_zero3_chat_sft_trains_the_new_rows_and_saves_them(tmp_path, tiny_base_dir, extended_tokenizer_dir):
    out = tmp_path / "sft"
    seen = launch(
        "zero3",
        29530,
        out,
        REPO / "data/sample/chat/chat.jsonl",
        tiny_base_dir,
        extended_tokenizer_dir,
        "--lora_r",
        "8",
        recipe="recipes/train/demo/sft-lora.yaml",
    )
    assert seen["world_size"] == 2 and seen["sharded"] and len(seen["losses"]) == 6
    saved = load_file(str(out / "adapter_model.safetensors"))
    head = next(v for k, v in saved.items() if "lm_head" in k and "trainable_tokens_delta" in k)
    assert head.shape[0] == seen["vocab"][1] - seen["vocab"][0] and head.norm() > 0
    reloaded = AutoPeftModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=seen["input_ids"]).logits, seen["logits"], atol=1e-5)


def test_zero3_full_fine_tuning_saves_the_whole_trained_model(
    tmp_path, prepared_sample, tiny_base_dir, extended_tokenizer_dir
):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "full"
    seen = launch(
        "zero3",
        29540,
        out,
        prepared_sample[0],
        tiny_base_dir,
        extended_tokenizer_dir,
        "--use_peft",
        "false",
        "--learning_rate",
        "1e-3",
    )
    assert seen["sharded"] and seen["losses"][-1] < seen["losses"][0]
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()  # gathered from both ranks' shards
    assert reloaded.get_input_embeddings().weight.shape[0] == seen["vocab"][1]
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=seen["input_ids"]).logits, seen["logits"], atol=1e-5)

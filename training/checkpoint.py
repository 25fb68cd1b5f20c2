"""After saving: check that the adapter on disk holds the trained weights, and merge it into its base.

Under DeepSpeed ZeRO-3 each rank holds a slice of every weight, and a save that does not gather them
writes an adapter of empty tensors (peft#2892, trl#4416) that loads without complaint. Here every rank
gathers the trainable weights and the main process compares them, name by name, with the file.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from peft import AutoPeftModelForCausalLM, get_peft_model_state_dict
from safetensors.torch import load_file
from transformers.integrations import deepspeed as hf_deepspeed

from training.tokenizer.embeddings import gathered


@contextlib.contextmanager
def zero3_init_disabled():
    """Load models whole on this process even while a ZeRO-3 run is configured."""
    saved = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved


class SavedAdapterMismatch(RuntimeError):
    pass


def verify_saved_adapter(model, output_dir: str, is_main: bool) -> int:
    """Compare the trained adapter weights with ``adapter_model.safetensors``; every rank must call this.

    Returns the number of tensors checked; raises SavedAdapterMismatch naming the first bad tensor.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    with gathered(*trainable):
        expected = {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(model, save_embedding_layers=False).items()} if is_main else {}
    if not is_main:
        return 0
    path = Path(output_dir) / "adapter_model.safetensors"
    saved = load_file(str(path))
    fix = "set zero3_save_16bit_model: true in the accelerate config (stage3_gather_16bit_weights_on_model_save)"
    missing = sorted(set(expected) - set(saved))
    if missing:
        raise SavedAdapterMismatch(f"{path}: {len(missing)} trained tensors are missing, e.g. {missing[0]}; {fix}")
    for name, value in expected.items():
        on_disk = saved[name]
        if on_disk.shape != value.shape or on_disk.numel() == 0:
            raise SavedAdapterMismatch(
                f"{path}: {name} has shape {tuple(on_disk.shape)} on disk, {tuple(value.shape)} trained; {fix}"
            )
        if not torch.allclose(on_disk.float(), value.float(), rtol=1e-3, atol=1e-6):
            raise SavedAdapterMismatch(f"{path}: {name} on disk differs from the trained weights; {fix}")
    return len(expected)


def merge(output_dir: str, tokenizer, dtype) -> Path:
    """The base with the saved adapter merged in, loaded whole on this process, saved to output_dir/merged."""
    target = Path(output_dir) / "merged"
    with zero3_init_disabled():
        model = AutoPeftModelForCausalLM.from_pretrained(output_dir, dtype=dtype, use_safetensors=True)
        model.merge_and_unload().save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest ``checkpoint-N`` in output_dir that was written to the end (the Trainer writes
    trainer_state.json last), so a run killed while saving resumes from the checkpoint before."""
    found = []
    for path in Path(output_dir).glob("checkpoint-*"):
        suffix = path.name.split("-", 1)[1]
        if path.is_dir() and suffix.isdigit():
            found.append((int(suffix), path))
    for _, path in sorted(found, reverse=True):
        if (path / "trainer_state.json").is_file():
            return str(path)
        print(f"skipping {path}: incomplete (no trainer_state.json), probably cut off while saving")
    return None

"""Checkpoints: resume only from one trained as this run would train, check that the adapter on disk holds
the trained weights, and merge it into its base.

Every checkpoint carries the run's ``recipe.yaml`` and ``lineage.json``. A run resumes from the newest
complete checkpoint in output_dir only if nothing that changes the trained weights differs from it: the
recipe's keys but those in NOT_TRAINING, the content hashes of the base weights, tokenizer and data, and
the number of processes. Otherwise it stops before training and says what differs; an explicit
``--resume_from_checkpoint`` resumes anyway and lineage.json records what changed.

Under DeepSpeed ZeRO-3 each rank holds a slice of every weight, and a save that does not gather them
writes an adapter of empty tensors (peft#2892, trl#4416) that loads without complaint. Here every rank
gathers the trainable weights and the main process compares them, name by name, with the file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path

import torch
import yaml
from peft import PeftConfig, PeftModel, get_peft_model_state_dict
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, TrainerCallback
from transformers.integrations import deepspeed as hf_deepspeed
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from indictune.core.io import atomic_directory
from indictune.training import lineage
from indictune.training.tokenizer import spm
from indictune.training.tokenizer.embeddings import gathered

# Recipe keys that cannot change the trained weights: where outputs, logs and checkpoints go and how often,
# data loader workers, the hub, this process's rank. Every other key, and any key added later, counts.
NOT_TRAINING = frozenset(
    {
        "output_dir",
        "run_name",
        "project",
        "report_to",
        "disable_tqdm",
        "skip_memory_metrics",
        "logging_steps",
        "logging_strategy",
        "logging_first_step",
        "logging_nan_inf_filter",
        "log_level",
        "log_level_replica",
        "log_on_each_node",
        "include_num_input_tokens_seen",
        "trackio_bucket_id",
        "trackio_space_id",
        "trackio_static_space_id",
        "save_steps",
        "save_strategy",
        "save_total_limit",
        "save_on_each_node",
        "save_only_model",
        "enable_jit_checkpoint",
        "resume_from_checkpoint",
        "push_to_hub",
        "hub_model_id",
        "hub_strategy",
        "hub_token",
        "hub_private_repo",
        "hub_always_push",
        "hub_revision",
        "dataloader_num_workers",
        "dataloader_pin_memory",
        "dataloader_persistent_workers",
        "dataloader_prefetch_factor",
        "dataloader_multiprocessing_context",
        "dataset_num_proc",
        "local_rank",
        "ddp_backend",
        "ddp_timeout",
        "torch_empty_cache_steps",
        "packed_cache_dir",
        "peak_tflops_per_gpu",
        "merge_adapter",
    }
)
# From lineage.json: what the recipe names by path or does not show.
LINEAGE_KEYS = ("base_weights_sha256", "tokenizer_sha256", "world_size")
NOT_RECORDED = "(not recorded)"


class ResumeRefused(ValueError):
    """The checkpoint in output_dir cannot be shown to be trained as this run would train it."""


class RecipeChanged(ResumeRefused):
    pass


class CheckpointUnverified(ResumeRefused):
    pass


def training_settings(recipe: dict, lineage_record: dict) -> dict:
    """Everything that decides the trained weights, by name: recipe keys, content hashes, process count."""
    settings = {key: value for key, value in recipe.items() if key not in NOT_TRAINING}
    settings.update({key: lineage_record.get(key, NOT_RECORDED) for key in LINEAGE_KEYS})
    for data in lineage_record.get("data", []):
        if "file" in data:  # a dataset named by id is in the recipe's train_data
            settings[f"sha256 of {data['file']}"] = data["sha256"]
    return settings


def differences(before: dict, now: dict) -> dict[str, dict]:
    return {
        key: {"checkpoint": before.get(key, NOT_RECORDED), "now": now.get(key, NOT_RECORDED)}
        for key in sorted(set(before) | set(now))
        if before.get(key, NOT_RECORDED) != now.get(key, NOT_RECORDED)
    }


@dataclasses.dataclass
class Resume:
    """The checkpoint a run continues from."""

    checkpoint: str
    step: int
    changed: dict[str, dict] | None  # None: the checkpoint has no recipe to compare with
    finished: bool  # already at its last step, with nothing changed that would add steps
    earlier: dict | None = None  # the checkpoint's own resumed_from
    skipped: list[str] = dataclasses.field(default_factory=list)  # newer, cut off while saving

    def announcement(self) -> str:
        where = f"{self.checkpoint} (step {self.step})"
        if self.finished:
            line = f"{where} already finished training; nothing to train: its weights become the outputs"
        elif self.changed is None:
            line = f"resuming from {where} as asked; it has no recipe.yaml, so what changed cannot be verified"
        elif self.changed:
            shown = "; ".join(f"{key}: {c['checkpoint']!r} -> {c['now']!r}" for key, c in self.changed.items())
            line = f"resuming from {where} as asked, with changes: {shown}"
        else:
            line = f"resuming from {where}, trained with the same recipe"
        return line + "".join(f"; skipped {path}: incomplete, cut off while saving" for path in self.skipped)

    def resumed_from(self) -> dict:
        """What lineage.json records of this resume."""
        earlier = {"earlier": self.earlier} if self.earlier else {}
        return {"checkpoint": self.checkpoint, "step": self.step, "changed": self.changed, **earlier}


def is_complete(path: Path) -> bool:
    return (path / "trainer_state.json").is_file()  # the Trainer writes it last


def checkpoints_newest_first(output_dir: str) -> list[Path]:
    found = []
    for path in Path(output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        suffix = path.name.split("-", 1)[1]
        if path.is_dir() and suffix.isdigit():
            found.append((int(suffix), path))
    return [path for _, path in sorted(found, reverse=True)]


def plan_resume(output_dir: str, requested: str | None, recipe: dict, lineage_record: dict) -> Resume | None:
    """The checkpoint to resume from (`requested`, else the newest complete one in output_dir), or None
    to start afresh. Raises ResumeRefused where output_dir's checkpoint differs from this run, or cannot be
    checked, in anything that changes training."""
    ways_out = (
        "To resume from it anyway, pass --resume_from_checkpoint {path} (lineage.json will record what "
        "changed); to train afresh, choose a new output_dir."
    )
    if requested:
        path = Path(requested)
        if not is_complete(path):
            raise ResumeRefused(
                f"--resume_from_checkpoint {requested}: not a complete checkpoint "
                "(no trainer_state.json); name a checkpoint-N folder that has one"
            )
        skipped = []
    else:
        found = checkpoints_newest_first(output_dir) if Path(output_dir).is_dir() else []
        path = next((p for p in found if is_complete(p)), None)
        if path is None:
            return None
        skipped = [str(p) for p in found[: found.index(path)]]
    state = json.loads((path / "trainer_state.json").read_text())
    if (path / "recipe.yaml").is_file() and (path / "lineage.json").is_file():
        saved_lineage = json.loads((path / "lineage.json").read_text())
        saved = training_settings(yaml.safe_load((path / "recipe.yaml").read_text()), saved_lineage)
        changed = differences(saved, training_settings(recipe, lineage_record))
        earlier = saved_lineage.get("resumed_from")
    elif requested:
        changed, earlier = None, None
    else:
        raise CheckpointUnverified(
            f"{path} has no recipe.yaml and lineage.json to compare with (it was saved by an older version, or cut "
            "off while saving), so it cannot be checked against this run's recipe. " + ways_out.format(path=path)
        )
    if changed and not requested:
        shown = "; ".join(f"{key} is {c['checkpoint']!r} there, {c['now']!r} now" for key, c in changed.items())
        raise RecipeChanged(f"{path} was trained differently from this run: {shown}. " + ways_out.format(path=path))
    step = state["global_step"]
    return Resume(
        checkpoint=str(path),
        step=step,
        changed=changed,
        finished=changed == {} and step >= state.get("max_steps", 0) > 0,
        earlier=earlier,
        skipped=skipped,
    )


class RecipeInCheckpoints(TrainerCallback):
    """Writes the run's lineage.json and recipe.yaml into each checkpoint the Trainer saves.

    They follow trainer_state.json, so a run killed in between leaves a complete checkpoint without them,
    which is then refused as unverifiable rather than resumed unchecked."""

    def __init__(self, lineage_record: dict, recipe: dict):
        self.lineage_record, self.recipe = lineage_record, recipe

    def on_save(self, args, state, control, **kwargs):
        if args.should_save:  # the process that wrote the checkpoint
            folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            lineage.write(folder, self.lineage_record, self.recipe)


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
        expected = (
            {
                k: v.detach().cpu().clone()
                for k, v in get_peft_model_state_dict(model, save_embedding_layers=False).items()
            }
            if is_main
            else {}
        )
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


def merge(output_dir: str, tokenizer, dtype, trust_remote_code: bool, lineage_record: dict, recipe: dict) -> Path:
    """The base with the saved adapter merged in, loaded whole on this process, saved to output_dir/merged
    with the tokenizer and the run's recipe and lineage."""
    target = Path(output_dir) / "merged"
    adapter = PeftConfig.from_pretrained(output_dir)
    with zero3_init_disabled():
        base = AutoModelForCausalLM.from_pretrained(
            adapter.base_model_name_or_path,
            revision=adapter.revision,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            use_safetensors=True,
        )
        # New rows need no initialising here: the adapter holds their trained values and merging writes them.
        if base.get_input_embeddings().weight.shape[0] < len(tokenizer):
            base.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        merged = PeftModel.from_pretrained(base, output_dir).merge_and_unload()
    with atomic_directory(target) as partial:
        merged.save_pretrained(partial)
        spm.save_tokenizer(tokenizer, partial)
        lineage.write(partial, {**lineage_record, "merged_from_adapter": str(output_dir)}, recipe)
    return target

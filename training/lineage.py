"""What a training run was made from: ``lineage.json`` and the resolved recipe, written next to its outputs
and into every checkpoint."""

from __future__ import annotations

import dataclasses
import datetime
import json
from pathlib import Path

import yaml

from indictune.core.hashing import files_sha256, folder_sha256, tokenizer_sha256
from indictune.core.io import atomic_write_text
from indictune.core.lineage import code_commit
from indictune.training.config import tokenizer_name_or_path


def data_records(paths: list[str]) -> list[dict]:
    """Each data file with its hash, or a dataset named by id (no local file to hash)."""
    files = [path for path in paths if Path(path).is_file()]
    hashes = dict(zip(files, files_sha256(files)))
    return [{"file": path, "sha256": hashes[path]} if path in hashes else {"dataset": path} for path in paths]


def local_model_folder(name_or_path: str, revision: str | None = None) -> Path | None:
    """The folder holding a model's files: the path itself, or the hub id's snapshot in the local cache."""
    if Path(name_or_path).is_dir():
        return Path(name_or_path)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name_or_path, revision=revision, local_files_only=True))
    except Exception:  # not in the local cache (or not a hub id): there is nothing to hash
        return None


def base_weights_sha256(args, model_args) -> str | None:
    """The content hash of the base model's weight and config files; None for a model made from a config
    or one not on this machine."""
    if args.init_from_config or not model_args.model_name_or_path:
        return None
    folder = local_model_folder(model_args.model_name_or_path, model_args.model_revision)
    return folder_sha256(folder) if folder is not None else None


def record(
    args, training_args, model_args, tokenizer, new_token_ids: list[int], data_files: list[str], **extra
) -> dict:
    """What the run is made from; the content hashes (base weights, tokenizer, data) and the number of
    processes, which the recipe does not show, are checked again when a checkpoint is resumed."""
    return {
        "stage": args.stage,
        "base_model": model_args.model_name_or_path,
        "base_weights_sha256": base_weights_sha256(args, model_args),
        "init_from_config": args.init_from_config,
        "tokenizer": tokenizer_name_or_path(args, model_args),
        "tokenizer_sha256": tokenizer_sha256(tokenizer),
        "new_token_ids": [new_token_ids[0], new_token_ids[-1] + 1] if new_token_ids else None,
        "data": data_records(data_files),
        "languages": args.languages,
        "world_size": training_args.world_size,
        **extra,
        "code_commit": code_commit(),
    }


def resolved_recipe(args, training_args, model_args) -> dict:
    """Every setting of the run as recipe.yaml holds it (read back, so that it compares equal to a saved one).

    TrainingArguments.to_dict() masks token values, so the recipe holds no secret."""
    recipe = {**dataclasses.asdict(args), **dataclasses.asdict(model_args), **training_args.to_dict()}
    return yaml.safe_load(yaml.safe_dump(recipe, allow_unicode=True))


def write(folder: str | Path, lineage: dict, recipe: dict) -> None:
    """``lineage.json`` and ``recipe.yaml`` in `folder`, each replaced whole."""
    folder = Path(folder)
    stamped = {**lineage, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    atomic_write_text(folder / "lineage.json", json.dumps(stamped, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(folder / "recipe.yaml", yaml.safe_dump(recipe, allow_unicode=True, sort_keys=True))

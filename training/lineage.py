"""What a training run was made from: ``lineage.json`` and the resolved recipe, written next to its outputs."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import subprocess
from pathlib import Path

import yaml

from training.data import file_sha256


def code_commit() -> str | None:
    """The commit of the code that ran, with ``-dirty`` if it had uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        status = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit.stdout.strip() + ("-dirty" if status.stdout.strip() else "")


def tokenizer_hash(tokenizer) -> str:
    """A hash of the vocabulary and special tokens: two tokenizers with the same hash encode alike."""
    content = json.dumps(
        {"vocab": sorted(tokenizer.get_vocab().items()), "special": tokenizer.special_tokens_map},
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(content.encode("utf-8")).hexdigest()


def data_record(path: str) -> dict:
    """A data file with its hash, or a dataset named by id (no local file to hash)."""
    if Path(path).is_file():
        return {"file": path, "sha256": file_sha256(path)}
    return {"dataset": path}


def write(output_dir: str, args, training_args, model_args, tokenizer, new_token_ids: list[int],
          data_files: list[str], **extra) -> None:
    output = Path(output_dir)
    lineage = {
        "stage": args.stage,
        "base_model": model_args.model_name_or_path,
        "init_from_config": args.init_from_config,
        "tokenizer": args.tokenizer_name_or_path or model_args.model_name_or_path,
        "tokenizer_sha256": tokenizer_hash(tokenizer),
        "new_token_ids": [new_token_ids[0], new_token_ids[-1] + 1] if new_token_ids else None,
        "data": [data_record(f) for f in data_files],
        "languages": args.languages,
        **extra,
        "code_commit": code_commit(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    (output / "lineage.json").write_text(json.dumps(lineage, indent=2, ensure_ascii=False) + "\n")
    # TrainingArguments.to_dict() masks token values, so the resolved recipe holds no secret.
    recipe = {**dataclasses.asdict(args), **dataclasses.asdict(model_args), **training_args.to_dict()}
    (output / "recipe.yaml").write_text(yaml.safe_dump(recipe, allow_unicode=True, sort_keys=True))

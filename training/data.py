"""Training data: prepared corpora (the Parquet ``scripts/prepare_data.py`` writes) and chat data, as ``datasets``."""

from __future__ import annotations

import glob
from collections import Counter
from pathlib import Path

import datasets

CHAT_ROLES = {"system", "user", "assistant"}


def _chat_source(path: str, split: str) -> datasets.Dataset:
    p = Path(path)
    if p.is_dir() and ((p / "dataset_info.json").is_file() or (p / "state.json").is_file()):
        loaded = datasets.load_from_disk(str(p))
        return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
    files = sorted(str(f) for f in p.rglob("*") if f.is_file()) if p.is_dir() else sorted(glob.glob(path))
    if files:
        kinds = {Path(f).suffix for f in files} & {".jsonl", ".json", ".parquet"}
        if len(kinds) != 1:
            raise ValueError(f"{path}: expected .jsonl/.json or .parquet chat files, found {sorted(kinds) or 'none'}")
        builder = "parquet" if kinds == {".parquet"} else "json"
        return datasets.load_dataset(builder, data_files=[f for f in files if Path(f).suffix in kinds], split="train")
    return datasets.load_dataset(path, split=split)  # a dataset on the Hub


def chat_problem(messages) -> str | None:
    """Why a record's `messages` cannot be trained on, or None when it can."""
    if not isinstance(messages, list) or not messages:
        return "no_messages"
    for turn in messages:
        if not isinstance(turn, dict) or turn.get("role") not in CHAT_ROLES:
            return f"bad_role:{turn.get('role') if isinstance(turn, dict) else type(turn).__name__}"
        if not isinstance(turn.get("content"), str) or not turn["content"].strip():
            return "empty_content"
    if not any(turn["role"] == "assistant" for turn in messages):
        return "no_assistant_turn"
    return None


def load_chat(paths: list[str], split: str = "train") -> tuple[datasets.Dataset, Counter]:
    """Chat records (a ``messages`` column of {role, content} turns) and the count of records rejected, by reason."""
    parts, rejected = [], Counter()
    for path in paths:
        source = _chat_source(path, split)
        if "messages" not in source.column_names:
            raise ValueError(
                f"{path}: chat data needs a 'messages' column of {{role, content}} turns "
                f"(columns: {', '.join(source.column_names)})"
            )
        source = source.select_columns(["messages"])
        reasons = [chat_problem(m) for m in source["messages"]]
        rejected.update(r for r in reasons if r)
        parts.append(source.select([i for i, r in enumerate(reasons) if r is None]))
    chats = datasets.concatenate_datasets(parts)
    if len(chats) == 0:
        raise ValueError(f"no usable chat records in {', '.join(paths)} (rejected: {dict(rejected)})")
    return chats, rejected

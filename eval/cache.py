"""Results cached under what produced them: the weights, the adapter, the tokenizer and the task.

A checkpoint folder overwritten in any way gets a new key, so its stale results are never served:
file hashes are content hashes, remembered only while the file's inode, size, mtime and ctime stay
the same (see core/hashing.py), so an 8B model is read once, not on every evaluation.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from indictune.core.hashing import folder_sha256
from indictune.core.io import atomic_write_text
from indictune.core.paths import cache_root

# Bump when scoring changes in a way that changes results.
SCORING_VERSION = "3"


def cache_dir() -> Path:
    return cache_root() / "eval"


def local_folder(name_or_path: str) -> Path | None:
    """The folder holding a model's files: the path itself, or the hub id's snapshot in the local cache."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name_or_path, local_files_only=True))
    except Exception:  # not downloaded: nothing to hash, so nothing is cached for it
        return None


def weights_sha256(name_or_path: str | None) -> str | None:
    """One hash over the folder's weight and config files, or None where there is no local folder."""
    if name_or_path is None:
        return None
    folder = local_folder(name_or_path)
    return folder_sha256(folder) if folder is not None else None


def result_key(**parts: Any) -> str:
    return hashlib.sha256(json.dumps({**parts, "scoring": SCORING_VERSION}, sort_keys=True).encode()).hexdigest()


def load(key: str) -> dict | None:
    path = cache_dir() / "results" / f"{key}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def save(key: str, result: dict) -> None:
    atomic_write_text(cache_dir() / "results" / f"{key}.json", json.dumps(result, ensure_ascii=False))

"""Results cached under what produced them: the weights, the adapter, the tokenizer and the task.

A checkpoint folder overwritten by a new training run gets new weights, so a new key: its stale
results are never served. File hashes are remembered by (path, size, modification time) so an 8B
model is read once, not on every evaluation.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from data.io import atomic_write_text

# Files whose bytes decide what a model or adapter computes.
_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "config.json", "adapter_config.json", "generation_config.json")
# Bump when scoring changes in a way that changes results.
SCORING_VERSION = "1"


def cache_dir() -> Path:
    root = os.environ.get("INDICTUNE_CACHE") or Path.home() / ".cache" / "indictune"
    return Path(root) / "eval"


def _file_sha256(path: Path, memo: dict[str, str]) -> str:
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    if key not in memo:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 24), b""):
                digest.update(block)
        memo[key] = digest.hexdigest()
    return memo[key]


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
    if folder is None:
        return None
    memo_path = cache_dir() / "file-hashes.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    files = sorted({p for pattern in _WEIGHT_PATTERNS for p in folder.glob(pattern) if p.is_file()})
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.name}:{_file_sha256(path, memo)}\n".encode())
    atomic_write_text(memo_path, json.dumps(memo))
    return digest.hexdigest()


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

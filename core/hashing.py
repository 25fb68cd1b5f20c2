"""Hashes of what decides a result: file contents, a model folder's weights, a tokenizer's behaviour.

File hashes are content hashes (sha256). Hashing runs at about 1.1 GiB/s on one core (15 s for a 16 GB
checkpoint), so each file's hash is remembered under its identity on disk: path, device, inode, size,
mtime_ns and ctime_ns. Rewriting a file in place changes its ctime, which ``touch -r`` and ``rsync -t`` cannot set
back, so a rewritten file is always read again; an unchanged one costs one ``stat``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from indictune.core.io import atomic_write_text
from indictune.core.paths import cache_root

# Files whose bytes decide what a model or adapter computes. Pickled weights (*.bin) are hashed too so
# that a folder holding them gets a distinct identity, though nothing here loads them.
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "config.json", "adapter_config.json", "generation_config.json")


def file_identity(path: str | Path) -> str:
    """What the file system says about a file's bytes: changes whenever the file is written."""
    stat = os.stat(path)
    return f"{Path(path).resolve()}|{stat.st_dev}|{stat.st_ino}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ctime_ns}"


def _read_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


class FileHashes:
    """sha256 of files, remembered by :func:`file_identity` in ``<cache_root>/file-hashes.json``."""

    def __init__(self, memo_path: Path | None = None):
        self.memo_path = memo_path or cache_root() / "file-hashes.json"
        try:
            self.memo: dict[str, str] = json.loads(self.memo_path.read_text())
        except (OSError, ValueError):
            self.memo = {}
        self.changed = False

    def sha256(self, path: str | Path) -> str:
        before = file_identity(path)
        if before in self.memo:
            return self.memo[before]
        digest = _read_sha256(path)
        if file_identity(path) != before:  # written while it was read: its bytes have no single hash
            raise OSError(f"{path} changed while it was being hashed; wait until whatever writes it is done")
        self.memo[before] = digest
        self.changed = True
        return digest

    def save(self) -> None:
        if self.changed:
            atomic_write_text(self.memo_path, json.dumps(self.memo))
            self.changed = False


def files_sha256(paths: list[str | Path]) -> list[str]:
    """The sha256 of each file's contents (remembered until the file is written again), with the memo read
    and written once for all of them: a corpus may have thousands of shards."""
    hashes = FileHashes()
    digests = [hashes.sha256(path) for path in paths]
    hashes.save()
    return digests


def weight_files(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    return sorted({p for pattern in WEIGHT_PATTERNS for p in folder.glob(pattern) if p.is_file()})


def folder_sha256(folder: str | Path) -> str | None:
    """One hash over a model or adapter folder's weight and config files; None if it has none."""
    files = weight_files(folder)
    if not files:
        return None
    hashes = FileHashes()
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.name}:{hashes.sha256(path)}\n".encode())
    hashes.save()
    return digest.hexdigest()


def tokenizer_sha256(tokenizer) -> str:
    """A hash of everything that decides how a tokenizer encodes: its whole pipeline (normalizer,
    pre-tokenizer regex, model, added tokens) where it has one, its special tokens and BOS setting."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    content = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    extra = json.dumps(
        [type(tokenizer).__name__, tokenizer.special_tokens_map, getattr(tokenizer, "add_bos_token", None)],
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256((content + extra).encode("utf-8")).hexdigest()

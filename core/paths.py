"""The places indictune reads from and writes to by default, each overridable by an environment variable."""

from __future__ import annotations

import os
from pathlib import Path


def shared_data_dir() -> Path:
    """Real data from outside the project: ``$INDICTUNE_SHARED_DATA``, default ``../shared/data``."""
    return Path(os.environ.get("INDICTUNE_SHARED_DATA") or "../shared/data")


def eval_data_dir() -> Path:
    """Local copies of Hugging Face evaluation datasets: ``$INDICTUNE_EVAL_DATA``, default ``eval-data``."""
    return Path(os.environ.get("INDICTUNE_EVAL_DATA") or "eval-data")


def cache_root() -> Path:
    """Where indictune keeps caches: ``$INDICTUNE_CACHE``, default ``~/.cache/indictune``."""
    return Path(os.environ.get("INDICTUNE_CACHE") or Path.home() / ".cache" / "indictune")

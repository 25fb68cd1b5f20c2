"""Where a result came from: the commit of the code that made it."""

from __future__ import annotations

import subprocess
from pathlib import Path


def code_commit() -> str | None:
    """The commit of the code that ran, with ``-dirty`` if it had uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        status = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit.stdout.strip() + ("-dirty" if status.stdout.strip() else "")

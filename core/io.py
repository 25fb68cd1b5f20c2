"""Outputs that appear whole or not at all: a crashed run never leaves a half-written result behind."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_directory(output: str | Path) -> Iterator[Path]:
    """Yield ``<output>.partial`` to write into; on success it replaces `output` as a whole.

    A leftover ``.partial`` from a crashed run is removed first, so a rerun redoes the work cleanly.
    """
    output = Path(output)
    partial = output.with_name(output.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    yield partial
    previous = output.with_name(output.name + ".previous")
    shutil.rmtree(previous, ignore_errors=True)
    if output.exists():
        output.rename(previous)
    partial.rename(output)
    shutil.rmtree(previous, ignore_errors=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    # mkstemp creates the file 0600; give it the permissions any other new file of the user's would have.
    os.fchmod(fd, 0o666 & ~current_umask())
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask

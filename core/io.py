"""Outputs that appear whole or not at all, and never at the cost of files the tool did not write."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

# Written into every directory atomic_directory makes, listing the files it holds: what marks a folder as ours.
MANIFEST = ".indictune-output.json"


class OutputDirError(ValueError):
    """An output folder that cannot be written without losing files; the message names the folder and the fix."""


class OutputLocked(OutputDirError):
    """Another process is writing the same output folder."""


@contextmanager
def atomic_directory(
    output: str | Path, *, overwrite: bool | None = None, protected: Iterable[str | Path] = ()
) -> Iterator[Path]:
    """Yield ``<output>.partial`` to write into; on success it replaces `output` as a whole.

    Refused with an OutputDirError before anything is touched: an `output` that is an existing file, that is,
    contains or lies inside one of the `protected` paths (the inputs), or that holds files not listed in its
    manifest (files this tool did not write), unless `overwrite` (None: the caller offers no such option, and
    the error does not suggest one). A previous result of ours is replaced.

    One process at a time: ``<output>.lock`` is held with ``flock`` (released by the system when the process
    dies, so a lock is never stale); a second one stops with OutputLocked naming the pid that holds it.

    The swap: on Linux ``renameat2(RENAME_EXCHANGE)`` exchanges the finished partial and the old output in one
    step, so `output` always names a complete result; the old one, left at the partial's name, is deleted
    next. Where the system or file system cannot exchange, the old output is renamed to ``<output>.previous``
    and the partial to `output`: a crash between the two leaves the old result whole as ``.previous``, and
    the next entry restores it (or drops it once a complete `output` exists) before anything else. A leftover
    partial is removed then too; only folders that carry our manifest (or are empty) are ever deleted, and
    the manifest is deleted last, so a crash in the middle of a deletion leaves a folder still known as ours.
    """
    output = Path(os.path.abspath(os.path.expanduser(output)))
    if not output.name:
        raise OutputDirError(f"output_dir {output} is the file system's root; choose a folder for the output")
    _check_protected(output, protected)
    if output.exists() and not output.is_dir():
        raise OutputDirError(f"output_dir {output} is an existing file, not a folder; choose another output_dir")
    partial = output.with_name(output.name + ".partial")
    previous = output.with_name(output.name + ".previous")
    with _lock(output):
        if previous.exists():
            _require_ours(previous)
            if output.exists():  # `output` only ever appears by the rename of a finished partial: it is complete
                _remove(previous)
            else:
                os.rename(previous, output)
        if partial.exists():
            _require_ours(partial)
            _remove(partial)
        if output.exists() and not overwrite:
            _require_only_ours(output, offer_overwrite=overwrite is not None)
        partial.mkdir(parents=True)
        _write_manifest(partial)  # marks the partial as ours from the start, for the cleanup after a crash
        yield partial
        _write_manifest(partial)
        if not output.exists():
            os.rename(partial, output)
        elif _exchange(partial, output):
            _remove(partial)
        else:
            os.rename(output, previous)
            os.rename(partial, output)
            _remove(previous)


@contextmanager
def _lock(output: Path) -> Iterator[None]:
    path = output.with_name(output.name + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputLocked(
                f"output_dir {output} is being written by another run (pid {holder}); "
                "wait for it to finish or choose another output_dir"
            ) from None
        # The holder removes the lock file before releasing it: a lock taken on a removed file is no lock.
        try:
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.unlink(path)
        os.close(fd)


def _check_protected(output: Path, protected: Iterable[str | Path]) -> None:
    real_output = Path(os.path.realpath(output))
    for path in protected:
        real = Path(os.path.realpath(path))
        if real == real_output:
            relation = "is"
        elif real_output.is_relative_to(real):
            relation = "lies inside"
        elif real.is_relative_to(real_output):
            relation = "contains"
        else:
            continue
        raise OutputDirError(
            f"output_dir {output} {relation} the input {path}: writing it could delete the input or read the "
            "output back as input; choose an output_dir outside every source's folder"
        )


def _files(directory: Path) -> Iterator[str]:
    """Every entry but folders (symlinks included, never followed), as paths relative to `directory`."""
    for root, dirs, files in os.walk(directory):
        relative = Path(root).relative_to(directory)
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            yield (relative / name).as_posix()


def _write_manifest(directory: Path) -> None:
    files = sorted(f for f in _files(directory) if f != MANIFEST)
    atomic_write_text(directory / MANIFEST, json.dumps({"written_by": "indictune", "files": files}, indent=1) + "\n")


def _require_ours(directory: Path) -> None:
    if directory.is_dir() and ((directory / MANIFEST).is_file() or not any(directory.iterdir())):
        return
    raise OutputDirError(f"{directory} was not written by this tool; move it away (its name is reserved for outputs)")


def _require_only_ours(output: Path, offer_overwrite: bool) -> None:
    try:
        listed = set(json.loads((output / MANIFEST).read_text(encoding="utf-8"))["files"])
    except (OSError, ValueError, KeyError, TypeError):
        listed = set()
    foreign = next((f for f in _files(output) if f != MANIFEST and f not in listed), None)
    if foreign is not None:
        fix = "choose another output_dir, move them away"
        fix += ", or set overwrite: true (--overwrite true) to replace the folder as a whole" if offer_overwrite else ""
        raise OutputDirError(
            f"output_dir {output} holds files this tool did not write (e.g. {foreign!r}), which replacing it "
            f"would delete; {fix}"
        )


def _remove(directory: Path) -> None:
    """Delete a folder of ours, its manifest last."""
    for entry in directory.iterdir():
        if entry.name == MANIFEST:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    (directory / MANIFEST).unlink(missing_ok=True)
    directory.rmdir()


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step; False where the system or the file system cannot (the caller falls back)."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None) if sys.platform == "linux" else None
    if renameat2 is None:  # not Linux, or a C library older than glibc 2.28
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(a), str(b))


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

"""Readers turn source files into records of the common schema.

A record is a dict: ``id`` (stable: the file and the position in it), ``text``, ``lang`` (declared, or None
for the identify stage to fill), ``script`` (None until identified), ``source`` (the file), ``kind``
(``web`` | ``ocr`` | ``asr``) and ``meta`` (what the format carries: page, timestamps, confidences).

Input that cannot be read as a record (a line that is not JSON, a missing text field, undecodable
bytes) still becomes a record, with ``read_error`` set; the pipeline rejects it at the ``read`` stage
with that reason, so every input unit is accounted for.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from data import languages
from data.recipe import field

Kind = Literal["web", "ocr", "asr"]


@dataclass
class Source:
    """One entry of a data recipe's ``sources`` list."""

    path: str = field(help="a file, a directory, or a glob pattern (recursive ** allowed); $VARIABLES are expanded")
    format: str = field(help="jsonl | parquet | csv | tsv | txt | pages | srt | vtt | whisper_json | kaldi")
    kind: Kind = field("web", help="web | ocr | asr: selects the clean-up stages that apply")
    lang: str | None = field(None, help="declared language code; None lets the identify stage decide")
    name: str | None = field(None, help="name in the report (default: the path as written)")
    text_field: str = field("text", help="jsonl/parquet/csv/tsv: the column that holds the text")
    lang_field: str | None = field(None, help="jsonl/parquet/csv/tsv: a column that holds each record's language")
    unit: Literal["file", "paragraph", "line"] = field("file", help="txt: one record per file, paragraph or line")
    limit: int | None = field(None, help="read at most this many records from the source (for trials)")

    def __post_init__(self) -> None:
        if self.format not in READERS:
            raise ValueError(f"format {self.format!r} is not one of: {', '.join(sorted(READERS))}")
        if self.lang is not None:
            self.lang = languages.get(self.lang).code
        self.name = self.name or self.path
        self.path = os.path.expandvars(self.path)

    def files(self) -> list[Path]:
        path = Path(self.path)
        if path.is_dir():
            matches = sorted(p for p in path.rglob("*") if p.is_file())
        elif any(c in self.path for c in "*?["):
            matches = sorted(Path(p) for p in glob.glob(self.path, recursive=True) if Path(p).is_file())
        else:
            matches = [path] if path.is_file() else []
        if not matches:
            raise FileNotFoundError(f"source '{self.name}': no file matches path {self.path!r}")
        return matches


def make_record(source: Source, path: Path, position: int, text: str, lang: str | None = None,
                read_error: str | None = None, **meta: Any) -> dict[str, Any]:
    if lang is not None:
        try:
            lang = languages.get(lang).code
        except KeyError:
            read_error = read_error or f"unknown_lang:{lang}"
            lang = None
    record = {
        "id": f"{path.as_posix()}#{position}",
        "text": text,
        "lang": lang or source.lang,
        "script": None,
        "source": source.name,
        "kind": source.kind,
        "meta": meta,
    }
    if read_error:
        record["read_error"] = read_error
    return record


def numbered_lines(path: Path) -> Iterator[tuple[int, str, str | None]]:
    """(position among non-blank lines, "line N", text or None where the bytes are not UTF-8)."""
    position = 0
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                line = None
            if line is None or line.strip():
                yield position, f"line {number}", line
                position += 1


def read_text_file(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None


READERS: dict[str, Callable[[Source, Path], Iterator[dict[str, Any]]]] = {}


def reader(*formats: str):
    def register(fn):
        for fmt in formats:
            READERS[fmt] = fn
        return fn

    return register


def read(source: Source) -> Iterator[dict[str, Any]]:
    """All records of a source, in file order; stops after ``source.limit`` records."""
    count = 0
    for path in source.files():
        for record in READERS[source.format](source, path):
            if source.limit is not None and count >= source.limit:
                return
            yield record
            count += 1


# Importing the modules registers their formats.
from data.readers import asr, ocr, web  # noqa: E402,F401

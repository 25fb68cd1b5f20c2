"""Readers turn source files into records of the common schema.

A record is a dict: ``id`` (stable: the file and the position in it), ``text``, ``lang`` (declared, or None
for the identify stage to fill), ``script`` (None until identified), ``source`` (the file), ``kind``
(``web`` | ``ocr`` | ``asr``) and ``meta`` (what the format carries: page, timestamps, confidences).

Input that cannot be read as a record (a line that is not JSON, a missing text field, undecodable
bytes) still becomes a record, with ``read_error`` set; the pipeline rejects it at the ``read`` stage
with that reason, so every input unit is accounted for. Text is decoded in one place for every format:
``read_text_file`` for a format that reads whole files, ``text_lines`` for one that reads line by line.
"""

from __future__ import annotations

import glob
import importlib
import json
import os
import pkgutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from indictune.core import languages
from indictune.core.recipe import field

Kind = Literal["web", "ocr", "asr"]


class SourceError(ValueError):
    """A source that cannot be read as the recipe describes it; the message names the source, the file and the fix."""


@dataclass
class Source:
    """One entry of a data recipe's ``sources`` list."""

    path: str = field(help="a file, a directory, or a glob pattern (recursive ** allowed); $VARIABLES are expanded")
    format: str = field(
        help="web: jsonl | parquet | csv | tsv | txt | hf | mediawiki; ocr: pages | tesseract_tsv | hocr; "
        "asr: srt | vtt | whisper_json | asr_manifest | kaldi"
    )
    kind: Kind = field("web", help="web | ocr | asr: selects the clean-up stages that apply")
    lang: str | None = field(None, help="declared language code; None lets the identify stage decide")
    name: str | None = field(None, help="name in the report (default: the path as written)")
    text_field: str = field("text", help="jsonl/parquet/csv/tsv: the column that holds the text")
    lang_field: str | None = field(None, help="jsonl/parquet/csv/tsv: a column that holds each record's language")
    unit: Literal["file", "paragraph", "line"] = field("file", help="txt: one record per file, paragraph or line")
    limit: int | None = field(None, help="read at most this many records from the source (for trials)")
    max_chars: int = field(
        10_000_000, help="a longer record is rejected as too_long (a 50 MB line would stall every stage)"
    )
    split: str = field("train", help="hf: the split to read")
    subset: str | None = field(None, help="hf: the dataset's configuration name")

    def __post_init__(self) -> None:
        if self.format not in READERS:
            raise SourceError(f"format {self.format!r} is not one of: {', '.join(sorted(READERS))}")
        if self.lang is not None:
            self.lang = languages.get(self.lang).code
        self.name = self.name or self.path
        self.path = os.path.expandvars(self.path)

    def files(self) -> list[Path]:
        if self.format == "hf":
            return [Path(self.path)]  # a hub id or a save_to_disk directory: the reader resolves it
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


def make_record(
    source: Source,
    path: Path,
    position: int,
    text: str,
    lang: str | None = None,
    read_error: str | None = None,
    **meta: Any,
) -> dict[str, Any]:
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
    if not read_error and len(text) > source.max_chars:
        read_error = f"too_long:{len(text)}_chars"
        record["text"] = text[:1000]  # the head is enough to look at; the rest would bloat the rejected output
    if read_error:
        record["read_error"] = read_error
    return record


_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def sniff(path: Path) -> str:
    """``utf-8`` (with or without BOM), ``utf-16`` (by its BOM), ``binary`` (NUL bytes early on) or ``empty``."""
    with open(path, "rb") as handle:
        head = handle.read(8192)
    if not head:
        return "empty"
    if head.startswith(_UTF16_BOMS):
        return "utf-16"
    return "binary" if b"\x00" in head else "utf-8"


def text_lines(
    source: Source, path: Path, to_record: Callable[[int, str, str], dict[str, Any]]
) -> Iterator[dict[str, Any]]:
    """``to_record(position among non-blank lines, "line N", line)`` for each non-blank line; a line that is not
    UTF-8 becomes an ``invalid_utf8`` reject. A UTF-8 byte-order mark is dropped and UTF-16 files (marked by
    their BOM) are decoded."""
    if sniff(path) == "utf-16":
        lines = (raw.encode("utf-8") for raw in path.read_text(encoding="utf-16").splitlines())
    else:
        lines = open(path, "rb")  # noqa: SIM115 (closed below)
    position = 0
    try:
        for number, raw in enumerate(lines, start=1):
            where = f"line {number}"
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                yield make_record(source, path, position, "", read_error="invalid_utf8", where=where)
                position += 1
                continue
            if number == 1:
                line = line.lstrip("\ufeff")
            if line.strip():
                yield to_record(position, where, line)
                position += 1
    finally:
        if hasattr(lines, "close"):
            lines.close()


def json_lines(
    source: Source, path: Path, to_record: Callable[[int, str, dict], dict[str, Any]]
) -> Iterator[dict[str, Any]]:
    """``to_record(position, "line N", object)`` for each JSON line holding an object; a line that is not
    UTF-8, not JSON, or not an object becomes a reject."""

    def parsed(position: int, where: str, line: str) -> dict[str, Any]:
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            return make_record(source, path, position, line, read_error=f"invalid_json:{err.msg}", where=where)
        if not isinstance(row, dict):
            return make_record(source, path, position, line, read_error="not_an_object", where=where)
        return to_record(position, where, row)

    return text_lines(source, path, parsed)


class NotText(Exception):
    """Raised by ``read_text_file``; ``read`` turns it into the file's one ``invalid_utf8`` reject."""

    def __init__(self, meta: dict[str, Any]):
        super().__init__("not UTF-8 or BOM-marked UTF-16")
        self.meta = meta


def read_text_file(path: Path, **reject_meta: Any) -> str:
    """The whole file as text (UTF-8 with or without BOM, or BOM-marked UTF-16). A file that is not text is
    rejected as ``invalid_utf8``, with `reject_meta` as the reject's meta; call this before yielding a record."""
    try:
        return path.read_text(encoding="utf-16" if sniff(path) == "utf-16" else "utf-8-sig")
    except UnicodeError:
        raise NotText(reject_meta) from None


# Formats whose files are not text: the reader checks them itself.
BINARY_FORMATS = ("parquet", "hf", "mediawiki")
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
        for record in _file_records(source, path):
            if source.limit is not None and count >= source.limit:
                return
            yield record
            count += 1


def _file_records(source: Source, path: Path) -> Iterator[dict[str, Any]]:
    encoding = None if source.format in BINARY_FORMATS else sniff(path)
    if encoding in ("empty", "binary"):  # counted, so a file that gave nothing is still in the report
        yield make_record(source, path, 0, "", read_error=f"{encoding}_file", where="file")
        return
    try:
        yield from READERS[source.format](source, path)
    except NotText as err:
        yield make_record(source, path, 0, "", read_error="invalid_utf8", **err.meta)


def discover() -> None:
    """Import every module of this package: each registers its formats with @reader, so a new file is enough."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


discover()

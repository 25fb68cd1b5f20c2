"""Readers turn source files into records of the common schema.

A record is a dict: ``id`` (stable: the file and the position in it), ``text``, ``lang`` (declared, or None
for the identify stage to fill), ``script`` (None until identified), ``source`` (the file), ``kind``
(``web`` | ``ocr`` | ``asr``) and ``meta`` (what the format carries: page, timestamps, confidences; every
value made JSON-safe).

Input that cannot be read as a record (a line that is not JSON, a missing text field, undecodable
bytes) still becomes a record, with ``read_error`` set; the pipeline rejects it at the ``read`` stage
with that reason, so every input unit is accounted for, and a file that yields nothing is one
``no_records`` reject.

Files are opened in one place, :func:`open_binary`: gzip, zstandard, bzip2 and xz files are decompressed
as a stream, told by their first bytes, so the name's suffix is neither needed nor trusted (multi-member
gzip and concatenated zstd frames are read whole; a file cut off or corrupt ends with a
``truncated_compressed_file`` reject after the records read). Text is decoded in one place for every
format: ``read_text_file`` (or ``text_chunks``) for a format that reads whole files, ``decoded_lines``
and ``text_lines`` for one that reads line by line. :func:`sniff` tells the encoding from the first 8 KiB:
UTF-8 (with or without BOM), UTF-16 and UTF-32 little- or big-endian (by BOM, or without one by where the
NUL bytes fall), or a binary file (many NUL or control bytes: one ``binary_file`` reject). A stray NUL
byte costs only its record (``nul_byte``).
"""

from __future__ import annotations

import bz2
import codecs
import difflib
import errno
import glob
import gzip
import importlib
import io
import json
import lzma
import os
import pkgutil
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, Literal

import zstandard

from indictune.core import languages
from indictune.core.recipe import check_ranges, field

Kind = Literal["web", "ocr", "asr"]


class SourceError(ValueError):
    """A source that cannot be read as the recipe describes it; the message names the source, the file and the fix."""


@dataclass
class Source:
    """One entry of a data recipe's ``sources`` list."""

    path: str = field(
        help="a file, a directory (every file below it in name order, skipping names that start with _ or . "
        "as Spark and pyarrow do: _SUCCESS, .crc, hive-partitioned folders work), or a glob pattern "
        "(recursive ** allowed); $VARIABLES are expanded; gzip/zstd/bzip2/xz files are decompressed"
    )
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
    limit: int | None = field(
        None, minimum=1, help="read at most this many records from the source (for trials; unset: all)"
    )
    max_chars: int = field(
        10_000_000, minimum=1, help="a longer record is rejected as too_long (a 50 MB line would stall every stage)"
    )
    split: str = field("train", help="hf: the split to read")
    subset: str | None = field(None, help="hf: the dataset's configuration name")

    def __post_init__(self) -> None:
        self.name = self.name or self.path
        if self.format not in READERS:
            raise SourceError(f"format {self.format!r} is not one of: {', '.join(sorted(READERS))}")
        check_ranges(self, f"source '{self.name}'")  # a Source made in code; a recipe's are checked when loaded
        if self.lang is not None:
            try:
                self.lang = languages.get(self.lang).code
            except KeyError:
                codes = sorted(lang.code for lang in languages.LANGUAGES)
                close = difflib.get_close_matches(self.lang.lower(), codes, n=3, cutoff=0.5)
                hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
                raise SourceError(
                    f"source '{self.name}': unknown language code {self.lang!r}; {hint}set lang to one of: "
                    f"{', '.join(codes)} (or a FLORES code such as hin_Deva)"
                ) from None
        self.path = os.path.expandvars(self.path)

    def files(self) -> list[Path]:
        """The files to read, in name order; a path that names nothing, or a link that leads nowhere, is an error."""
        if self.format == "hf":
            return [Path(self.path)]  # a hub id or a save_to_disk directory: the reader resolves it
        path = Path(self.path)
        where = f"source '{self.name}'"
        if any(c in self.path for c in "*?["):
            found = sorted(Path(p) for p in glob.glob(self.path, recursive=True))
            if not found:
                raise SourceError(f"{where}: the pattern {self.path!r} matched nothing; fix path in the recipe")
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if not _hidden(p.relative_to(path)))
        elif path.is_file():
            return [path]
        else:
            _check_link(where, path)
            raise SourceError(f"{where}: {path} does not exist (working directory: {os.getcwd()}); fix path")
        matches = []
        for candidate in found:
            if candidate.is_file():
                matches.append(candidate)
            else:
                _check_link(where, candidate)
        if not matches:
            raise SourceError(f"{where}: {self.path!r} holds no file; point path at the data")
        return matches

    def reads_from(self) -> list[Path]:
        """What an output folder must keep clear of: a folder read whole, or the root of a recursive pattern
        (output inside it would be read back by the next run), else the files matched; nothing for a hub id."""
        if self.format == "hf" and not Path(self.path).exists():
            return []
        parts = Path(self.path).parts
        wild = next((i for i, part in enumerate(parts) if any(c in part for c in "*?[")), None)
        if wild is None:
            return [Path(self.path)]
        if "**" in self.path:
            return [Path(*parts[:wild]) if wild else Path(".")]
        return self.files()


def _hidden(relative: Path) -> bool:
    """Spark's _SUCCESS and _temporary/, .crc and .DS_Store: metadata beside the data, as pyarrow.dataset skips it."""
    return any(part.startswith(("_", ".")) for part in relative.parts)


def _check_link(where: str, path: Path) -> None:
    """Raise for a symbolic link that leads nowhere, so the files behind it are not silently left out."""
    if not path.is_symlink():
        return
    try:
        path.stat()
    except OSError as err:
        problem = "is a symlink loop" if err.errno == errno.ELOOP else f"is a broken link (to {os.readlink(path)})"
        raise SourceError(f"{where}: {path} {problem}; remove it or point it at the data") from None


def check_sources(sources: list[Source]) -> None:
    """Resolve every source's files up front, so a bad path fails before any work, and refuse a file listed
    twice (by overlapping patterns, links or two sources): its records would be read twice under two ids."""
    seen: dict[tuple[int, int], tuple[Source, Path]] = {}
    for source in sources:
        if source.format == "hf":
            continue
        for path in source.files():
            stat = path.stat()
            key = (stat.st_dev, stat.st_ino)  # the same file under two names: a link, a hard link, ../
            if key in seen:
                other, first = seen[key]
                listed = f"source '{source.name}'" + (
                    " lists it twice" if other is source else f" and source '{other.name}' both list it"
                )
                raise SourceError(f"{first} and {path} are the same file: {listed}; list each file once")
            seen[key] = (source, path)


_SURROGATE = re.compile("[\ud800-\udfff]")


def make_record(
    source: Source,
    path: Path,
    position: int,
    text: str,
    lang: Any = None,
    read_error: str | None = None,
    full_length: int | None = None,
    **meta: Any,
) -> dict[str, Any]:
    """A record; `full_length` is the text's length when `text` is only its head (a paragraph too long to keep)."""
    if lang is not None:
        if not isinstance(lang, str):
            read_error = read_error or f"not_text:{source.lang_field or 'lang'}"
            lang = None
        else:
            try:
                lang = languages.get(lang).code
            except KeyError:
                read_error = read_error or f"unknown_lang:{_SURROGATE.sub('?', lang)[:40]}"
                lang = None
    unicode_errors: list[str] = []
    meta = _json_safe(meta, unicode_errors)
    if _SURROGATE.search(text):  # a JSON "\ud800" escape: no UTF-8 writer takes it
        text = _SURROGATE.sub("\ufffd", text)
        unicode_errors.append("text")
    if unicode_errors:
        read_error = read_error or "invalid_unicode"
    if "\x00" in text:
        read_error = read_error or "nul_byte"
    record = {
        "id": f"{path.as_posix()}#{position}",
        "text": text,
        "lang": lang or source.lang,
        "script": None,
        "source": source.name,
        "kind": source.kind,
        "meta": meta,
    }
    length = full_length or len(text)
    if not read_error and length > source.max_chars:
        read_error = f"too_long:{length}_chars"
        record["text"] = text[:1000]  # the head is enough to look at; the rest would bloat the rejected output
    if read_error:
        record["read_error"] = read_error
    return record


def _json_safe(value: Any, unicode_errors: list[str]) -> Any:
    """`value` as JSON the same way every run: datetimes in ISO 8601, decimals and durations as strings, bytes as
    their length, arrays as lists, other objects by type name; a lone surrogate becomes U+FFFD and is noted."""
    if isinstance(value, str):
        if _SURROGATE.search(value):
            unicode_errors.append("meta")
            return _SURROGATE.sub("\ufffd", value)
        return value
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, dict):
        return {_json_safe(str(k), unicode_errors): _json_safe(v, unicode_errors) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v, unicode_errors) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    if hasattr(value, "isoformat"):  # datetime, date, time, pandas.Timestamp
        return value.isoformat()
    if isinstance(value, (Decimal, timedelta)):
        return str(value)
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return _json_safe(value.tolist(), unicode_errors)
    return f"<{type(value).__name__}>"  # str() of an arbitrary object may hold its memory address


# Opening and decoding ---------------------------------------------------------------------------------------------


class CompressedFileError(Exception):
    """A compressed file cut off or corrupt; ``read`` ends the file with a ``truncated_compressed_file`` reject."""


class _ZstdFrames(io.RawIOBase):
    """Zstandard frames one after another, as pzstd and crawls write them; unlike zstandard's stream_reader, a
    frame cut off is an error, not a quiet end. The window allows files compressed with --long=31."""

    def __init__(self, path: Path):
        self._file = open(path, "rb")  # noqa: SIM115 (closed by close)
        self._decompressor = zstandard.ZstdDecompressor(max_window_size=2**31)
        self._frame = self._decompressor.decompressobj()
        self._in_frame = False
        self._out = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._out:
            chunk = self._file.read(1 << 15)  # small steps: a cut loses little before it
            if not chunk:
                if self._in_frame:
                    raise EOFError("zstd frame cut off")
                return 0
            out = []
            while chunk:
                out.append(self._frame.decompress(chunk))
                self._in_frame = True
                if not self._frame.eof:
                    break
                chunk, self._frame, self._in_frame = self._frame.unused_data, self._decompressor.decompressobj(), False
            self._out = memoryview(b"".join(out))
        n = min(len(buffer), len(self._out))
        buffer[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def close(self) -> None:
        self._file.close()
        super().close()


class _Decompressed(io.RawIOBase):
    """A decompressing file whose errors (truncation, bad data) become CompressedFileError."""

    ERRORS = (EOFError, OSError, zlib.error, lzma.LZMAError, zstandard.ZstdError)

    def __init__(self, inner: IO[bytes]):
        self._inner = inner

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        # One step of the decompressor at a time (read1), so what came before a cut is read before the error.
        read = getattr(self._inner, "read1", self._inner.read)
        try:
            data = read(len(buffer))
        except self.ERRORS as err:
            raise CompressedFileError(f"{type(err).__name__}: {err}") from None
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._inner.close()
        super().close()


def decompressor(magic: bytes) -> Callable[[Path], IO[bytes]] | None:
    """What opens a file starting with `magic` (its first 10 bytes) as gzip, zstd, xz or bzip2; None for others."""
    if magic.startswith(b"\x1f\x8b"):
        return lambda path: gzip.open(path, "rb")
    if magic.startswith(b"\x28\xb5\x2f\xfd") or (magic[1:4] == b"\x2a\x4d\x18" and 0x50 <= magic[0] <= 0x5F):
        return _ZstdFrames  # a frame, or a skippable frame before one
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lambda path: lzma.open(path, "rb")
    if magic.startswith(b"BZh") and magic[4:10] in (b"1AY&SY", b"\x17rE8P\x90"):  # a block, or the end of none
        return lambda path: bz2.open(path, "rb")
    return None


def open_binary(path: Path) -> IO[bytes]:
    """The file's bytes, decompressed as a stream when its first bytes say gzip, zstd, bzip2 or xz."""
    with open(path, "rb") as handle:
        opener = decompressor(handle.read(10))
    if opener is None:
        return open(path, "rb")
    try:
        inner = opener(path)
    except _Decompressed.ERRORS as err:
        raise CompressedFileError(f"{type(err).__name__}: {err}") from None
    return io.BufferedReader(_Decompressed(inner), buffer_size=1 << 20)


_BOMS = (  # UTF-32 first: its little-endian BOM starts with UTF-16's
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
# Bytes text holds: deleting them from a head leaves its control bytes (tab, line feed, form feed and
# carriage return are text).
_TEXT_BYTES = bytes(b for b in range(256) if b >= 0x20 and b != 0x7F or b in b"\t\n\f\r")


def sniff(path: Path) -> str:
    """``empty``, ``binary``, or the encoding: ``utf-8`` (with or without BOM), ``utf-16-le``/``-be`` or
    ``utf-32-le``/``-be`` (by BOM, or by where the NUL bytes fall), judged on the first 8 KiB of the content."""
    with open_binary(path) as stream:
        head = stream.read(8192)
    if not head:
        return "empty"
    for bom, encoding in _BOMS:
        if head.startswith(bom):
            return encoding
    encoding = _wide_encoding(head)
    if encoding:
        return encoding
    control = len(head.translate(None, _TEXT_BYTES))
    return "binary" if control > 0.05 * len(head) else "utf-8"  # a stray NUL or two is one bad line, not a binary


def _wide_encoding(head: bytes) -> str | None:
    """UTF-32 or UTF-16 without a BOM: text's spaces, digits and line breaks put NUL bytes at fixed offsets
    (every byte 3 of 4 in UTF-32-LE, most odd bytes in UTF-16-LE), which a binary or a stray NUL does not."""
    head = head[: len(head) // 4 * 4]
    if not head:
        return None
    quarter, half = len(head) // 4, len(head) // 2
    if head[3::4].count(0) == quarter and max(head[2::4]) <= 0x10:
        encoding = "utf-32-le"
    elif head[0::4].count(0) == quarter and max(head[1::4]) <= 0x10:
        encoding = "utf-32-be"
    else:
        even, odd = head[0::2].count(0), head[1::2].count(0)
        if odd >= 0.05 * half and even <= 0.05 * odd:
            encoding = "utf-16-le"
        elif even >= 0.05 * half and odd <= 0.05 * even:
            encoding = "utf-16-be"
        else:
            return None
        nuls = even + odd
        rest = head.replace(b"\x00", b"")
        if nuls < 0.1 * len(head) and len(rest.translate(None, _TEXT_BYTES)) < 0.01 * len(rest):
            try:  # UTF-8 text with a few stray NULs (UTF-16 text would leave control bytes or invalid UTF-8)
                codecs.getincrementaldecoder("utf-8")().decode(rest)
                return None
            except UnicodeDecodeError:
                pass
    try:  # a character cut off at the end of the head is fine
        codecs.getincrementaldecoder(encoding)().decode(head)
    except UnicodeDecodeError:
        return None
    return encoding


# A UTF-8 line that does not decode is its own reject; in UTF-16/32 only a unit outside Unicode fails (lone
# surrogates are passed on and rejected per record as invalid_unicode), and ends the file.
_DECODE_ERROR = {"utf-8": "invalid_utf8"}


def decoded_lines(path: Path) -> Iterator[tuple[int, str, str | None]]:
    """``(line number, line with its line end, None)`` per line of a text file in any encoding ``sniff`` knows,
    a BOM dropped; ``(number, "", reason)`` for a line that does not decode."""
    encoding = sniff(path)
    with open_binary(path) as stream:
        if encoding == "utf-8":
            for number, raw in enumerate(stream, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    yield number, "", "invalid_utf8"
                    continue
                yield number, line.lstrip("\ufeff") if number == 1 else line, None
            return
        text = io.TextIOWrapper(stream, encoding=encoding, errors="surrogatepass", newline="\n")
        number = 0
        try:
            for line in text:
                number += 1
                yield number, line.lstrip("\ufeff") if number == 1 else line, None
        except UnicodeDecodeError:
            yield number + 1, "", _DECODE_ERROR.get(encoding, "invalid_unicode")


def text_lines(
    source: Source, path: Path, to_record: Callable[[int, str, str], dict[str, Any]]
) -> Iterator[dict[str, Any]]:
    """``to_record(position among non-blank lines, "line N", line)`` for each non-blank line; a line that does not
    decode becomes a reject (``invalid_utf8``)."""
    position = 0
    for number, line, error in decoded_lines(path):
        where = f"line {number}"
        if error:
            yield make_record(source, path, position, "", read_error=error, where=where)
            position += 1
            continue
        line = line.rstrip("\r\n")
        if line.strip():
            yield to_record(position, where, line)
            position += 1


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
    """Raised by ``text_chunks``; ``read`` turns it into the file's one reject (``invalid_utf8``)."""

    def __init__(self, reason: str, meta: dict[str, Any]):
        super().__init__(reason)
        self.reason, self.meta = reason, meta


def text_chunks(path: Path, **reject_meta: Any) -> Iterator[str]:
    """The file's text in pieces of about a million characters, line ends as ``\\n``, a BOM dropped. A file that
    does not decode is rejected (``invalid_utf8``) with `reject_meta` as the reject's meta: take every chunk
    before yielding a record."""
    encoding = sniff(path)
    with open_binary(path) as stream:
        errors = "strict" if encoding == "utf-8" else "surrogatepass"
        text = io.TextIOWrapper(stream, encoding=encoding, errors=errors)
        first = True
        try:
            while chunk := text.read(1 << 20):
                yield chunk.lstrip("\ufeff") if first else chunk
                first = False
        except UnicodeDecodeError:
            raise NotText(_DECODE_ERROR.get(encoding, "invalid_unicode"), reject_meta) from None


def read_text_file(path: Path, **reject_meta: Any) -> str:
    """The whole file as text (see ``text_chunks``), for formats whose unit is a file."""
    return "".join(text_chunks(path, **reject_meta))


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
        for record in file_records(source, path):
            if source.limit is not None and count >= source.limit:
                return
            yield record
            count += 1


def file_records(source: Source, path: Path) -> Iterator[dict[str, Any]]:
    """The file's records; a file that gives none is still one reject, so every file is in the report."""
    count = 0
    try:
        encoding = None if source.format in BINARY_FORMATS else sniff(path)
        if encoding in ("empty", "binary"):
            yield make_record(source, path, 0, "", read_error=f"{encoding}_file", where="file")
            return
        for record in READERS[source.format](source, path):
            yield record
            count += 1
    except NotText as err:
        yield make_record(source, path, count, "", read_error=err.reason, **err.meta)
        return
    except CompressedFileError as err:
        yield make_record(
            source, path, count, "", read_error="truncated_compressed_file", where="file", error=str(err)[:200]
        )
        return
    if not count:
        yield make_record(source, path, 0, "", read_error="no_records", where="file")


def discover() -> None:
    """Import every module of this package: each registers its formats with @reader, so a new file is enough."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


discover()

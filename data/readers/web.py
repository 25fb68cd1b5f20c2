"""Web text: JSON lines, Parquet (a file or a folder of them), CSV/TSV with a named text column, plain text,
Hugging Face datasets.

Every text format may be gzip/zstd/bzip2/xz compressed and UTF-8, UTF-16 or UTF-32 (see the package docstring),
and is read as a stream: memory does not grow with the file. CSV follows RFC 4180 (a quoted field may hold
line breaks); a record that a stray quote would merge with the rows after it is an ``unbalanced_quote``
reject of its first line, and the rows after it are read (see ``_csv_rows``). TSV is read with quoting off,
one record per line: a TSV field cannot hold a tab or a line break. Parquet values that JSON lacks
(timestamps, decimals, bytes) are written to ``meta`` as ISO 8601, strings and byte counts.
"""

from __future__ import annotations

import csv
from collections import deque
from collections.abc import Iterator
from itertools import chain
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from indictune.data.readers import (
    NotText,
    Source,
    SourceError,
    decoded_lines,
    json_lines,
    make_record,
    reader,
    text_chunks,
    text_lines,
)


def record_from_row(source: Source, path: Path, position: int, row: dict[str, Any], where: str) -> dict[str, Any]:
    text = row.get(source.text_field)
    lang = row.get(source.lang_field) if source.lang_field else None
    extra = {k: v for k, v in row.items() if k not in (source.text_field, source.lang_field)}
    meta = {"where": where, **({"fields": extra} if extra else {})}
    if text is None:
        return make_record(source, path, position, "", read_error=f"missing_field:{source.text_field}", **meta)
    if not isinstance(text, str):
        return make_record(source, path, position, str(text), read_error=f"not_text:{source.text_field}", **meta)
    return make_record(source, path, position, text, lang=lang, **meta)


@reader("jsonl")
def read_jsonl(source: Source, path: Path) -> Iterator[dict[str, Any]]:
    return json_lines(source, path, lambda position, where, row: record_from_row(source, path, position, row, where))


@reader("parquet")
def read_parquet(source: Source, path: Path) -> Iterator[dict[str, Any]]:
    position = 0
    try:
        # pre_buffer would keep every row group read so far in memory: a file's size, not a batch's
        with pq.ParquetFile(path, pre_buffer=False) as parquet:
            for batch in parquet.iter_batches(batch_size=1024):
                for row in batch.to_pylist():
                    yield record_from_row(source, path, position, row, f"row {position}")
                    position += 1
    except pa.ArrowException as err:  # not Parquet, or a damaged one: the file's other rows are lost, not the run
        yield make_record(source, path, position, "", read_error="invalid_parquet", where="file", error=str(err)[:200])


csv.field_size_limit(2**31 - 1)  # a field may be as long as a line; max_chars decides what is too long


@reader("csv", "tsv")
def read_delimited(source: Source, path: Path) -> Iterator[dict[str, Any]]:
    rows = _tsv_rows(path) if source.format == "tsv" else _csv_rows(source, path)
    header = None
    position = 0
    for number, fields, error in rows:
        if header is None:
            if error == "unbalanced_quote":
                raise SourceError(
                    f"source '{source.name}': the header of {path} (line {number}) has an unbalanced quote; fix it"
                )
            if error:
                raise NotText(error, {"where": "file"})
            header = fields
            for key, name in (("text_field", source.text_field), ("lang_field", source.lang_field)):
                if name is not None and name not in header:
                    raise SourceError(
                        f"source '{source.name}': {path} has no column {name!r} "
                        f"(columns: {', '.join(header)}); set {key} in the recipe"
                    )
            continue
        where = f"line {number}"
        if error:  # an unbalanced quote's reject keeps its line; a line that does not decode has no text
            yield make_record(source, path, position, "".join(fields), read_error=error, where=where)
        else:
            row = dict(zip(header, fields + [None] * (len(header) - len(fields))))
            if len(fields) > len(header):
                row["_extra"] = fields[len(header) :]
            yield record_from_row(source, path, position, row, where)
        position += 1


def _tsv_rows(path: Path) -> Iterator[tuple[int, list[str], str | None]]:
    """``(line number, fields, error)`` per non-empty line. A TSV field cannot hold a tab or a line break (IANA
    text/tab-separated-values), so quotes do not group lines and a stray one cannot swallow rows; a field wrapped
    in double quotes, as spreadsheet exports write, is unwrapped."""
    for number, line, error in decoded_lines(path):
        line = line.rstrip("\r\n")
        if error or line:
            yield number, [_unquoted(f) for f in line.split("\t")] if not error else [], error


def _unquoted(value: str) -> str:
    return value[1:-1].replace('""', '"') if len(value) >= 2 and value[0] == value[-1] == '"' else value


class _Broken(Exception):
    """A CSV record that cannot be trusted: `reason` is its reject's."""

    def __init__(self, reason: str):
        self.reason = reason


def _csv_rows(source: Source, path: Path) -> Iterator[tuple[int, list[str], str | None]]:
    """``(first line number, fields, error)`` per CSV record (RFC 4180: a quoted field may hold line breaks).

    A stray quote opens a field that the next quote, lines later, closes, swallowing the rows between. So a
    record that the strict parser refuses (text after a closing quote, the file ending inside quotes), or that
    spans lines and then has another number of fields than the header or more than max_chars characters, is
    an ``unbalanced_quote`` reject of its first line only, and the lines after it are read again as records.
    A line that does not decode ends its record as that record's one reject. An error's fields are the
    rejected line, if any.
    """
    lines = decoded_lines(path)
    pending: deque[tuple[int, str, str | None]] = deque()  # lines to read again after a broken record
    width = None
    while True:
        taken: list[tuple[int, str, str | None]] = []

        def feed(taken=taken) -> Iterator[str]:
            chars = 0
            while item := pending.popleft() if pending else next(lines, None):
                taken.append(item)
                if item[2]:
                    raise _Broken(item[2])
                chars += len(item[1])
                if len(taken) > 1 and chars > source.max_chars:
                    raise _Broken("unbalanced_quote")
                yield item[1]

        try:
            fields = next(csv.reader(feed(), strict=True))
            if len(taken) > 1 and width is not None and len(fields) != width:
                raise _Broken("unbalanced_quote")
        except StopIteration:
            return
        except (csv.Error, _Broken) as err:
            reason = err.reason if isinstance(err, _Broken) else "unbalanced_quote"
            if reason == "unbalanced_quote":
                pending.extendleft(reversed(taken[1:]))
            yield taken[0][0], [taken[0][1].rstrip("\r\n")] if reason == "unbalanced_quote" else [], reason
            continue
        if not fields:  # an empty line
            continue
        width = width or len(fields)
        yield taken[0][0], fields, None


@reader("txt")
def read_txt(source: Source, path: Path) -> Iterator[dict[str, Any]]:
    if source.unit == "line":
        yield from text_lines(
            source, path, lambda position, where, line: make_record(source, path, position, line, where=where)
        )
    elif source.unit == "paragraph":
        yield from _paragraphs(source, path)
    else:
        kept, length = [], 0
        for chunk in text_chunks(path, where="file"):
            if length <= source.max_chars:  # past it the file is too long: its head is all the reject keeps
                kept.append(chunk)
            length += len(chunk)
        text = "".join(kept)
        complete = len(text) == length
        yield make_record(source, path, 0, text.strip(), full_length=None if complete else length, where="file")


def _paragraphs(source: Source, path: Path) -> Iterator[dict[str, Any]]:
    """One record per run of non-blank lines, read line by line; a paragraph with a line that does not decode is
    one reject, and one longer than max_chars is rejected holding only its head."""
    position, lines, length, start, error = 0, [], 0, 0, None
    for number, line, line_error in chain(decoded_lines(path), [(0, "", None)]):  # a blank line ends the last one
        if line.strip() or line_error:
            start = start or number
            error = error or line_error
            if length <= source.max_chars:
                lines.append(line.rstrip("\r\n"))
            length += len(line)
            continue
        if start:
            text = "" if error else "\n".join(lines).strip()
            full = None if length <= source.max_chars else length
            yield make_record(source, path, position, text, read_error=error, full_length=full, where=f"line {start}")
            position += 1
        lines, length, start, error = [], 0, 0, None


@reader("hf")
def read_hf(source: Source, path: Path) -> Iterator[dict[str, Any]]:
    """A directory written by ``Dataset.save_to_disk`` (memory-mapped), or a hub id (streamed; needs the network)."""
    import datasets

    name = str(source.path)
    if Path(name).is_dir():
        try:
            data = datasets.load_from_disk(name)  # memory-mapped Arrow: rows are read as iterated
        except Exception as err:  # not a save_to_disk directory, or one datasets cannot load (an empty one)
            raise SourceError(
                f"source '{source.name}': cannot load {name} as a saved dataset ({type(err).__name__}: {err}); "
                "point path at a directory written by Dataset.save_to_disk that holds rows"
            ) from err
        if isinstance(data, datasets.DatasetDict):
            if source.split not in data:
                raise SourceError(
                    f"source '{source.name}': {name} has no split {source.split!r} (splits: {', '.join(data)})"
                )
            data = data[source.split]
    else:
        try:
            data = datasets.load_dataset(name, source.subset, split=source.split, streaming=True)
        except Exception as err:  # offline, unknown id, gated: say which source and what to do
            raise SourceError(
                f"source '{source.name}': cannot load {name!r} from the Hugging Face Hub "
                f"({type(err).__name__}: {err}). "
                "Offline, save it with Dataset.save_to_disk and set path to that directory."
            ) from err
    for position, row in enumerate(data):
        yield record_from_row(source, path, position, row, f"row {position}")

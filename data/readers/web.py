"""Web text: JSON lines, Parquet, CSV/TSV with a named text column, plain text, Hugging Face datasets."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from indictune.data.readers import Source, SourceError, json_lines, make_record, read_text_file, reader, text_lines


def _from_row(source: Source, path: Path, position: int, row: dict[str, Any], where: str) -> dict[str, Any]:
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
    return json_lines(source, path, lambda position, where, row: _from_row(source, path, position, row, where))


@reader("parquet")
def read_parquet(source: Source, path: Path) -> Iterator[dict[str, Any]]:
    position = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            yield _from_row(source, path, position, row, f"row {position}")
            position += 1


@reader("csv", "tsv")
def read_delimited(source: Source, path: Path) -> Iterator[dict[str, Any]]:
    text = read_text_file(path, where="file")
    rows = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if source.format == "tsv" else ",")
    if source.text_field not in (rows.fieldnames or []):
        raise SourceError(
            f"source '{source.name}': {path} has no column {source.text_field!r} "
            f"(columns: {', '.join(rows.fieldnames or [])}); set text_field in the recipe"
        )
    for position, row in enumerate(rows):
        yield _from_row(source, path, position, row, f"record {position + 1}")


_BLANK_LINES = re.compile(r"\n[ \t]*\n+")


@reader("txt")
def read_txt(source: Source, path: Path) -> Iterator[dict[str, Any]]:
    if source.unit == "line":
        yield from text_lines(
            source, path, lambda position, where, line: make_record(source, path, position, line, where=where)
        )
        return
    text = read_text_file(path, where="file")
    parts = [text] if source.unit == "file" else [p for p in _BLANK_LINES.split(text) if p.strip()]
    for position, part in enumerate(parts):
        yield make_record(source, path, position, part.strip(), where=source.unit)


@reader("hf")
def read_hf(source: Source, path: Path) -> Iterator[dict[str, Any]]:
    """A directory written by ``Dataset.save_to_disk`` (memory-mapped), or a hub id (streamed; needs the network)."""
    import datasets

    name = str(source.path)
    if Path(name).is_dir():
        data = datasets.load_from_disk(name)
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
        yield _from_row(source, path, position, row, f"row {position}")

"""OCR output: page text, one record per page, grouped into books for the OCR clean-up stage."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data.readers import Source, make_record, read_text_file, reader


@reader("pages")
def read_pages(source: Source, path: Path) -> Iterator[dict[str, Any]]:
    """A file of form-feed separated pages is one book; a file without form feeds is one page of the
    book named by its folder (a folder of page files, in name order)."""
    text = read_text_file(path)
    if text is None:
        yield make_record(source, path, 0, "", read_error="invalid_utf8", book=path.as_posix(), page=1)
        return
    if "\f" in text:
        book, pages = path.as_posix(), text.split("\f")
        if not pages[-1].strip():  # a trailing form feed ends the last page; it does not start a new one
            pages.pop()
    else:
        book, pages = path.parent.as_posix(), [text]
    for position, page in enumerate(pages):
        yield make_record(source, path, position, page, book=book, page=position + 1 if "\f" in text else path.stem)

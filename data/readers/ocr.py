"""OCR output, one record per page, grouped into books (``meta.book``) for the OCR clean-up stage.

Page text (files, or form-feed separated pages in one file), Tesseract TSV (``tesseract page out tsv``)
and hOCR. From the last two the record also gets ``meta.mean_confidence``, the mean word confidence
(0-100), which the OCR stage gates on. A file holding several pages is one book; a file holding one
page is a page of the book named by its folder (a folder of page files, in name order). Like every text format,
files may be gzip/zstd/bzip2/xz compressed and UTF-8, UTF-16 or UTF-32 (see the package docstring); each is read
whole, as a book is small.
"""

from __future__ import annotations

import csv
import html.parser
import io
import re
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from indictune.data.readers import Source, SourceError, make_record, read_text_file, reader


def _text(path: Path) -> str:
    """The file's text; a file that is not text is rejected as page 1 of its book."""
    return read_text_file(path, book=path.as_posix(), page=1)


def _pages(source: Source, path: Path, pages: list[tuple[str, dict[str, Any]]]) -> Iterator[dict[str, Any]]:
    book = path.as_posix() if len(pages) > 1 else path.parent.as_posix()
    for position, (text, meta) in enumerate(pages):
        page = position + 1 if len(pages) > 1 else path.stem
        yield make_record(source, path, position, text, book=book, page=page, **meta)


@reader("pages")
def read_pages(source: Source, path: Path) -> Iterator[dict[str, Any]]:
    pages = _text(path).split("\f")
    if len(pages) > 1 and not pages[-1].strip():  # a trailing form feed ends the last page; it starts none
        pages.pop()
    yield from _pages(source, path, [(page, {}) for page in pages])


def _with_confidence(lines: list[list[str]], confidences: list[float], breaks: set[int]) -> tuple[str, dict[str, Any]]:
    """Lines of words (a blank line before each index in `breaks`) and the page's mean word confidence."""
    text = "\n".join(("\n" if i in breaks and i else "") + " ".join(words) for i, words in enumerate(lines))
    meta = {"mean_confidence": round(sum(confidences) / len(confidences), 2)} if confidences else {}
    return text, meta


@reader("tesseract_tsv")
def read_tesseract_tsv(source: Source, path: Path) -> Iterator[dict[str, Any]]:
    rows = csv.DictReader(io.StringIO(_text(path)), delimiter="\t", quoting=csv.QUOTE_NONE)
    missing = {"page_num", "block_num", "par_num", "line_num", "conf", "text"} - set(rows.fieldnames or [])
    if missing:
        raise SourceError(
            f"source '{source.name}': {path} is not Tesseract TSV (no column {', '.join(sorted(missing))})"
        )
    pages: dict[str, dict[tuple, list[str]]] = defaultdict(dict)
    confidences: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        word = (row["text"] or "").strip()
        if not word:
            continue
        line = (row["block_num"], row["par_num"], row["line_num"])
        pages[row["page_num"]].setdefault(line, []).append(word)
        if float(row["conf"]) >= 0:
            confidences[row["page_num"]].append(float(row["conf"]))
    result = []
    for page, lines in pages.items():
        keys = list(lines)
        breaks = {i for i, key in enumerate(keys) if i and key[:2] != keys[i - 1][:2]}  # a new paragraph
        result.append(_with_confidence(list(lines.values()), confidences[page], breaks))
    yield from _pages(source, path, result or [("", {})])


_WCONF = re.compile(r"x_wconf\s+(\d+(?:\.\d+)?)")


class _HocrParser(html.parser.HTMLParser):
    """Collects pages of lines of words from hOCR's ocr_page / ocr_par / ocr_line / ocrx_word elements."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.pages: list[tuple[list[list[str]], list[float], set[int]]] = []
        self.stack: list[str] = []
        self.in_word = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        classes = (values.get("class") or "").split()
        self.stack.append(tag)
        if "ocr_page" in classes:
            self.pages.append(([], [], set()))
        elif not self.pages:
            return
        lines, confidences, breaks = self.pages[-1]
        if "ocr_par" in classes:
            breaks.add(len(lines))
        if "ocr_line" in classes or "ocrx_line" in classes:
            lines.append([])
        if "ocrx_word" in classes:
            self.in_word = True
            if not lines:
                lines.append([])
            lines[-1].append("")
            match = _WCONF.search(values.get("title") or "")
            if match:
                confidences.append(float(match[1]))

    def handle_endtag(self, tag: str) -> None:
        while self.stack:
            if self.stack.pop() == tag:
                break
        if tag == "span":
            self.in_word = False

    def handle_data(self, data: str) -> None:
        if self.in_word and self.pages and self.pages[-1][0]:
            self.pages[-1][0][-1][-1] += data.strip()


@reader("hocr")
def read_hocr(source: Source, path: Path) -> Iterator[dict[str, Any]]:
    parser = _HocrParser()
    parser.feed(_text(path))
    pages = [
        _with_confidence([[w for w in words if w] for words in lines], confidences, breaks)
        for lines, confidences, breaks in parser.pages
    ]
    if not pages:
        yield make_record(source, path, 0, "", read_error="no_ocr_page", book=path.as_posix(), page=1)
        return
    yield from _pages(source, path, pages)

"""ocr: clean the pages of OCR'd books (records of kind ``ocr``, grouped by ``meta.book``).

Per book: drop page numbers and the running headers and footers that repeat at the top or bottom of
many pages (odd and even pages may carry different ones), repair vowel signs the OCR split off their
consonant, join words hyphenated across line ends, and rebuild paragraphs from the hard line breaks.
Devanagari vowels the OCR built from two parts (अ + ा for आ, ा + े for ो: sequences Unicode says
never to use) are written as the single letter. A page whose characters are mostly outside its
script, digits and punctuation is dropped as garbage, and one whose OCR engine reported a low mean
word confidence (Tesseract TSV, hOCR) is dropped as low confidence. Legacy-font mojibake is caught
earlier, by the identify stage, for every kind of source.
"""

from __future__ import annotations

import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass

import pyarrow as pa
import regex

from indictune.core import languages
from indictune.core.recipe import field
from indictune.data.stages import Record, Stage, StageConfig, stage

_PAGE_NUMBER = regex.compile(r"^[\s\-–—\[\](){}|.]*(?:\d+|[ivxlcdm]+)[\s\-–—\[\](){}|.]*$", regex.IGNORECASE)
_DETACHED_SIGN = regex.compile(r"(?<=\p{L}\p{M}*)[ \u25cc]+(?=\p{M})")  # "क ि" or "क◌ि" -> "कि"
_HYPHEN_END = regex.compile(r"(\p{L}[\p{L}\p{M}]*)[-\u00ad\u2010]$")
_WORD_START = regex.compile(r"^([\p{L}\p{M}]+)")
_SENTENCE_END = tuple("।॥.?!\"”'’")
# Two-part Devanagari vowels and their one-code-point forms (The Unicode Standard, table 12-1).
_TWO_PART_VOWELS = {
    "\u0905\u093e": "\u0906",
    "\u0905\u0949": "\u0911",
    "\u0905\u094a": "\u0912",
    "\u0905\u094b": "\u0913",
    "\u0905\u094c": "\u0914",
    "\u090f\u0945": "\u090d",
    "\u090f\u0946": "\u090e",
    "\u090f\u0947": "\u0910",
    "\u093e\u0945": "\u0949",
    "\u093e\u0946": "\u094a",
    "\u093e\u0947": "\u094b",
    "\u093e\u0948": "\u094c",
}
_TWO_PART = regex.compile("|".join(_TWO_PART_VOWELS))
EDGE_LINES = 2  # how many lines at the top and at the bottom of a page can be header, footer or number


@dataclass
class OcrConfig(StageConfig):
    header_min_fraction: float = field(
        0.3,
        minimum=0,
        maximum=1,
        help="a top/bottom line is a running header/footer when it repeats on this share of a book's pages",
    )
    max_garbage_ratio: float = field(
        0.3, minimum=0, maximum=1, help="drop a page whose share of unexpected characters is above this"
    )
    min_mean_confidence: float = field(
        60.0,
        minimum=0,
        maximum=100,
        help="drop a page whose mean word confidence (0-100, Tesseract TSV and hOCR only) is below this",
    )


def _edge_key(line: str) -> str:
    """Headers differ only in their page number; compare them without digits."""
    return " ".join("".join(c for c in line if not c.isdigit()).split())


def _garbage_ratio(text: str, scripts: tuple[str, ...]) -> float:
    chars = Counter(c for c in text if not c.isspace())
    total = sum(chars.values())
    if not total:
        return 0.0
    expected = sum(
        n
        for c, n in chars.items()
        if c.isdigit()
        or unicodedata.category(c)[0] == "P"
        or (languages.is_letter(c) and (languages.script_of(c) in scripts or languages.script_of(c) == "Latn"))
    )
    return 1 - expected / total


@stage("ocr", order=30, config=OcrConfig, help="headers, page numbers, hyphens, confidences (kind: ocr)")
class Ocr(Stage):
    kinds = ("ocr",)
    columns = {"ocr_lines_removed": pa.int32(), "ocr_confusions_repaired": pa.int32()}

    def process_batch(self, records: list[Record]) -> list[str | None]:
        books: dict[str, list[Record]] = defaultdict(list)
        for record in records:
            books[record["meta"].get("book", record["id"])].append(record)
        for pages in books.values():
            self._clean_book(pages)
        return [self._judge(record) for record in records]

    def _clean_book(self, pages: list[Record]) -> None:
        page_lines = [[line.strip() for line in page["text"].split("\n") if line.strip()] for page in pages]
        edge_counts: Counter[str] = Counter()
        for lines in page_lines:
            edge_counts.update({_edge_key(line) for line in lines[:EDGE_LINES] + lines[-EDGE_LINES:]})
        threshold = max(2, self.config.header_min_fraction * len(pages))
        running = {key for key, n in edge_counts.items() if n >= threshold and key}
        book_text = "\n".join(line for lines in page_lines for line in lines)
        vocabulary = set(regex.findall(r"[\p{L}\p{M}]+", book_text))
        hyphenated = set(regex.findall(r"[\p{L}\p{M}]+-[\p{L}\p{M}]+", book_text))
        for page, lines in zip(pages, page_lines):
            kept = []
            for i, line in enumerate(lines):
                at_edge = i < EDGE_LINES or i >= len(lines) - EDGE_LINES
                if at_edge and (_PAGE_NUMBER.match(line) or _edge_key(line) in running):
                    continue
                kept.append(_DETACHED_SIGN.sub("", line))
            repaired = 0
            for i, line in enumerate(kept):
                kept[i], n = _TWO_PART.subn(lambda m: _TWO_PART_VOWELS[m.group()], line)
                repaired += n
            page["ocr_lines_removed"] = len(lines) - len(kept)
            page["ocr_confusions_repaired"] = repaired
            page["text"] = _paragraphs(kept, vocabulary, hyphenated)

    def _judge(self, record: Record) -> str | None:
        if not record["text"].strip():
            return "ocr_empty_page"
        confidence = record["meta"].get("mean_confidence")
        if confidence is not None and confidence < self.config.min_mean_confidence:
            return "ocr_low_confidence"
        scripts = languages.get(record["lang"]).scripts if record["lang"] else tuple(languages.SCRIPTS)
        if _garbage_ratio(record["text"], scripts) > self.config.max_garbage_ratio:
            return "ocr_garbage"
        return None


def _paragraphs(lines: list[str], vocabulary: set[str], hyphenated: set[str]) -> str:
    """Join hard-wrapped lines into paragraphs; a short line ending a sentence ends its paragraph."""
    if not lines:
        return ""
    typical = sorted(len(line) for line in lines)[len(lines) // 2]
    paragraphs, current = [], ""
    for line in lines:
        if current:
            hyphen = _HYPHEN_END.search(current)
            head = _WORD_START.match(line)
            if hyphen and head:
                joined = hyphen[1] + head[1]
                # Keep the hyphen only where the book itself writes the hyphenated form and never the joined one.
                keep = joined not in vocabulary and f"{hyphen[1]}-{head[1]}" in hyphenated
                current = current[: hyphen.start()] + hyphen[1] + ("-" if keep else "") + line
            else:
                current = f"{current} {line}"
        else:
            current = line
        if line.endswith(_SENTENCE_END) and len(line) < 0.7 * typical:
            paragraphs.append(current)
            current = ""
    if current:
        paragraphs.append(current)
    return "\n\n".join(paragraphs)

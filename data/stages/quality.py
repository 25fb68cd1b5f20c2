"""quality: heuristic document filters with per-language defaults from the language table.

The checks follow FineWeb-2 and Gopher (length, word-length bounds, repeated lines and n-grams,
stop-word presence) and setu (symbol ratio), computed on words that keep their vowel signs. Every
measure is written to the record, kept or not, so thresholds can be tuned on the output.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from dataclasses import dataclass

import pyarrow as pa

from data import languages, text
from data.recipe import field
from data.stages import Record, Stage


def duplicate_line_fraction(content: str) -> float:
    lines = text.nonempty_lines(content)
    return (len(lines) - len(set(lines))) / len(lines) if lines else 0.0


def duplicate_ngram_fraction(words: list[str], n: int = 5) -> float:
    """Share of word characters inside word n-grams that occur more than once (Gopher's measure)."""
    if len(words) < n:
        return 0.0
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    counts = Counter(grams)
    covered = [False] * len(words)
    for i, gram in enumerate(grams):
        if counts[gram] > 1:
            covered[i : i + n] = [True] * n
    total = sum(len(w) for w in words)
    return sum(len(w) for w, c in zip(words, covered) if c) / total if total else 0.0


def symbol_ratio(content: str) -> float:
    """Share of non-space characters that are symbols, private-use or unassigned (not letters, digits, punctuation)."""
    chars = [c for c in content if not c.isspace()]
    if not chars:
        return 0.0
    return sum(unicodedata.category(c)[0] == "S" or unicodedata.category(c) in ("Co", "Cn") for c in chars) / len(chars)


@dataclass
class QualityConfig:
    enabled: bool = True
    min_words: int = field(20, help="fewer words than this: too_short")
    min_script_fraction: float = field(0.6, help="share of letters in the language's scripts below this: low_script_fraction")
    max_symbol_ratio: float = field(0.2, help="share of symbol characters above this: too_many_symbols (setu: 0.2)")
    max_duplicate_line_fraction: float = field(0.3, help="share of repeated lines above this: repeated_lines")
    max_duplicate_ngram_fraction: float = field(0.2, help="share of characters in repeated word 5-grams: repeated_ngrams")
    min_stopwords: int = field(2, help="fewer stop words of the language than this: no_stopwords (FineWeb-2: 2)")
    min_words_for_ratios: int = field(
        50, help="repetition and stop-word checks apply from this many words on; short texts give noisy ratios"
    )


class Quality(Stage):
    name = "quality"
    columns = {
        "n_words": pa.int32(),
        "avg_word_length": pa.float32(),
        "symbol_ratio": pa.float32(),
        "duplicate_line_fraction": pa.float32(),
        "duplicate_ngram_fraction": pa.float32(),
        "stopwords": pa.int32(),
    }

    def __init__(self, config: QualityConfig):
        self.config = config

    def process(self, record: Record) -> str | None:
        content = record["text"]
        words = text.words(content)
        language = languages.get(record["lang"]) if record["lang"] else None
        stopwords = set(language.stopwords) if language else set()
        record.update(
            n_words=len(words),
            avg_word_length=sum(map(len, words)) / len(words) if words else 0.0,
            symbol_ratio=symbol_ratio(content),
            duplicate_line_fraction=duplicate_line_fraction(content),
            duplicate_ngram_fraction=duplicate_ngram_fraction(words),
            stopwords=sum(w.lower() in stopwords for w in words),
        )
        c = self.config
        if not words:
            return "empty"
        if len(words) < c.min_words:
            return "too_short"
        if record.get("script_fraction", 1.0) < c.min_script_fraction:
            return "low_script_fraction"
        if record["symbol_ratio"] > c.max_symbol_ratio:
            return "too_many_symbols"
        if language and not language.min_avg_word_length <= record["avg_word_length"] <= language.max_avg_word_length:
            return "word_length_out_of_range"
        if len(words) < c.min_words_for_ratios:
            return None
        if record["duplicate_line_fraction"] > c.max_duplicate_line_fraction:
            return "repeated_lines"
        if record["duplicate_ngram_fraction"] > c.max_duplicate_ngram_fraction:
            return "repeated_ngrams"
        if stopwords and record["stopwords"] < c.min_stopwords:
            return "no_stopwords"
        return None

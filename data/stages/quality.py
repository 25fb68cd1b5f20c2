"""quality: heuristic document filters with per-language defaults from the language table.

The checks follow FineWeb-2 and Gopher (length, word-length bounds, repeated lines, paragraphs and
n-grams, words without letters, stop-word presence) and setu (symbol ratio), computed on words that
keep their vowel signs; "alphabetic" counts vowel signs and viramas as letters (``str.isalpha`` does
not, and NeMo Curator's ASCII class rejects all Hindi). Every measure is written to the record, kept
or not, so thresholds can be tuned on the output. A bad-word list per language can be plugged in.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import regex

from indictune.core import languages, text
from indictune.core.recipe import field
from indictune.data.stages import Record, Stage, StageConfig, stage


def duplicate_fraction(units: list[str]) -> float:
    """Share of lines (or paragraphs) that repeat an earlier one."""
    return (len(units) - len(set(units))) / len(units) if units else 0.0


def duplicate_ngram_fraction(words: list[str], n: int = 5) -> float:
    """Share of word characters inside word n-grams that occur more than once (Gopher's measure)."""
    if len(words) < n:
        return 0.0
    grams = text.ngram_hashes(text.word_hashes(words), n)
    _, inverse, counts = np.unique(grams, return_inverse=True, return_counts=True)
    starts = (counts[inverse] > 1).astype(np.int32)
    # a word is covered when any of the n grams that contain it repeats
    covered = np.convolve(starts, np.ones(n, dtype=np.int32))[: len(words)] > 0
    lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
    return float(lengths[covered].sum() / lengths.sum())


_SYMBOL = regex.compile(r"[\p{S}\p{Co}\p{Cn}]")
_DIGIT = regex.compile(r"\d")


def character_ratios(content: str) -> tuple[float, float]:
    """(symbols, digits) as shares of non-space characters; symbols are S*, private-use and unassigned."""
    total = len(content) - sum(map(content.count, " \n\t"))  # the normalize stage leaves no other spaces
    if not total:
        return 0.0, 0.0
    return len(_SYMBOL.findall(content)) / total, len(_DIGIT.findall(content)) / total


def alphabetic_word_fraction(words: list[str]) -> float:
    """Share of words that are not bare numbers ("1999", "१९४७"); words keep their vowel signs, so
    every other word has a letter."""
    return 1 - sum(map(str.isdecimal, words)) / len(words) if words else 0.0


@lru_cache(maxsize=None)
def bad_words(path: str, lang: str) -> frozenset[str]:
    """``<path>/<lang>.txt`` if `path` is a directory, else the file itself: one word or phrase per line."""
    file = Path(path) / f"{lang}.txt" if Path(path).is_dir() else Path(path)
    if not file.is_file():
        return frozenset()
    return frozenset(line.strip().casefold() for line in file.read_text(encoding="utf-8").splitlines() if line.strip())


@dataclass
class QualityConfig(StageConfig):
    min_words: int = field(20, minimum=0, help="fewer words than this: too_short")
    min_script_fraction: float = field(
        0.6, minimum=0, maximum=1, help="share of letters in the language's scripts below this: low_script_fraction"
    )
    max_symbol_ratio: float = field(
        0.2, minimum=0, maximum=1, help="share of symbol characters above this: too_many_symbols (setu: 0.2)"
    )
    max_digit_ratio: float = field(0.3, minimum=0, maximum=1, help="share of digits above this: too_many_digits")
    min_alphabetic_words: float = field(
        0.7, minimum=0, maximum=1, help="share of words with a letter below this: too_few_alphabetic_words"
    )
    max_duplicate_line_fraction: float | None = field(
        None,
        minimum=0,
        maximum=1,
        help="share of repeated lines above this: repeated_lines (None: FineWeb-2's value per language, else 0.3)",
    )
    max_duplicate_paragraph_fraction: float = field(
        0.3, minimum=0, maximum=1, help="share of repeated paragraphs: repeated_paragraphs"
    )
    max_duplicate_ngram_fraction: float = field(
        0.2, minimum=0, maximum=1, help="share of characters in repeated word 5-grams: repeated_ngrams"
    )
    min_stopwords: int = field(
        2, minimum=0, help="fewer stop words of the language than this: no_stopwords (FineWeb-2: 2)"
    )
    min_words_for_ratios: int = field(
        50,
        minimum=0,
        help="digit, alphabetic-word, word-length, repetition and stop-word checks apply from this many words on: "
        "on a sentence or a headline those ratios are noise",
    )
    bad_words: str | None = field(None, help="a word list, or a directory of <lang>.txt lists (one entry per line)")
    max_bad_word_fraction: float = field(
        0.01, minimum=0, maximum=1, help="share of words on the bad-word list above this: bad_words"
    )


@stage("quality", order=60, config=QualityConfig, help="heuristic filters")
class Quality(Stage):
    columns = {
        "n_words": pa.int32(),
        "avg_word_length": pa.float32(),
        "symbol_ratio": pa.float32(),
        "digit_ratio": pa.float32(),
        "alphabetic_words": pa.float32(),
        "duplicate_line_fraction": pa.float32(),
        "duplicate_paragraph_fraction": pa.float32(),
        "duplicate_ngram_fraction": pa.float32(),
        "stopwords": pa.int32(),
    }

    def process(self, record: Record) -> str | None:
        content = record["text"]
        words = text.words(content)
        language = languages.get(record["lang"]) if record["lang"] else None
        stopwords = set(language.stopwords) if language else set()
        symbols, digits = character_ratios(content)
        paragraphs = [" ".join(p.split()) for p in content.split("\n\n") if p.strip()]
        record.update(
            n_words=len(words),
            avg_word_length=sum(map(len, words)) / len(words) if words else 0.0,
            symbol_ratio=symbols,
            digit_ratio=digits,
            alphabetic_words=alphabetic_word_fraction(words),
            duplicate_line_fraction=duplicate_fraction(text.nonempty_lines(content)),
            duplicate_paragraph_fraction=duplicate_fraction(paragraphs),
            duplicate_ngram_fraction=duplicate_ngram_fraction(words),
            stopwords=sum(map(stopwords.__contains__, map(str.lower, words))),
        )
        c = self.config
        max_duplicate_lines = (
            c.max_duplicate_line_fraction
            if c.max_duplicate_line_fraction is not None
            else languages.DUPLICATE_LINE_FRACTION.get(record["lang"], 0.3)
        )
        if not words:
            return "empty"
        if len(words) < c.min_words:
            return "too_short"
        if record.get("script_fraction", 1.0) < c.min_script_fraction:
            return "low_script_fraction"
        if record["symbol_ratio"] > c.max_symbol_ratio:
            return "too_many_symbols"
        if c.bad_words and record["lang"]:
            listed = bad_words(c.bad_words, record["lang"])
            if listed and sum(w.casefold() in listed for w in words) / len(words) > c.max_bad_word_fraction:
                return "bad_words"
        if len(words) < c.min_words_for_ratios:
            return None
        if record["digit_ratio"] > c.max_digit_ratio:
            return "too_many_digits"
        if record["alphabetic_words"] < c.min_alphabetic_words:
            return "too_few_alphabetic_words"
        if language and not language.min_avg_word_length <= record["avg_word_length"] <= language.max_avg_word_length:
            return "word_length_out_of_range"
        if record["duplicate_line_fraction"] > max_duplicate_lines:
            return "repeated_lines"
        if record["duplicate_paragraph_fraction"] > c.max_duplicate_paragraph_fraction:
            return "repeated_paragraphs"
        if record["duplicate_ngram_fraction"] > c.max_duplicate_ngram_fraction:
            return "repeated_ngrams"
        if stopwords and record["stopwords"] < c.min_stopwords:
            return "no_stopwords"
        return None

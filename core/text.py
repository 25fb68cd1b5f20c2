"""Text units shared by the stages: words that keep their vowel signs, lines, comparison keys, n-gram hashes."""

from __future__ import annotations

import unicodedata

import numpy as np
import regex

from indictune.core import languages

# `regex`'s \w includes combining marks (Mn/Mc); the standard library's splits Hindi words at every matra.
_JOINERS = "'’-"
_WORD_CHAR_RUN = regex.compile(r"[\w\p{M}]+")
_WORD = regex.compile(rf"[\w\p{{M}}]+(?:[{regex.escape(_JOINERS)}][\w\p{{M}}]+)*")
_ZERO_WIDTH = regex.compile("[\u200c\u200d\u2060\ufeff]")
_ZWSP_RUN = regex.compile("\u200b+")
_ZWNJ = "\u200c"
_VIRAMA = 9  # the canonical combining class of every virama (Tamil pulli, Malayalam chandrakkala, Meetei apun iyek)
_DIGIT = regex.compile(r"\d")


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def nonempty_lines(text: str) -> list[str]:
    return [line.strip() for line in text.split("\n") if line.strip()]


def join_zero_width_spaces(text: str) -> str:
    """A zero-width space (U+200B) between two letters or marks of one non-Latin script is part of the word
    (web text uses it as a joiner): written as ZWNJ after a virama, where it stops a conjunct exactly as ZWNJ
    does, and removed elsewhere, where it changes nothing visible. Every other zero-width space is left as it
    is. Why per script: see the ``normalize`` stage."""
    if "\u200b" not in text:
        return text

    def resolve(run: regex.Match) -> str:
        start, end = run.span()
        if start == 0 or end == len(text):
            return run.group()
        before, after = text[start - 1], text[end]
        script = languages.script_of(before)
        in_word = languages.is_letter(before) and languages.is_letter(after) and languages.script_of(after) == script
        if not in_word or script in (None, "Latn"):
            return run.group()
        return _ZWNJ if unicodedata.combining(before) == _VIRAMA else ""

    return _ZWSP_RUN.sub(resolve, text)


def comparison_key(text: str) -> str:
    """What two texts must share to count as the same: compatibility forms (NFKC), case, zero-width
    joiners, digits (any script, to 0) and spacing are folded; vowel signs, viramas and nuktas are kept.
    A zero-width space counts as the ``normalize`` stage makes it: nothing inside a word, a space elsewhere.

    Stripping combining marks, as several dedup tools do for their keys, makes different Indic words
    collide ("प्रेम" and "परम").
    """
    return " ".join(key_words_text(text).split())


def key_words_text(text: str) -> str:
    """`comparison_key` without its spacing fold, for callers that split into words anyway."""
    if not unicodedata.is_normalized("NFKC", text):  # cheaper than normalizing text that already is
        text = unicodedata.normalize("NFKC", text)
    if "\u200b" in text:
        text = join_zero_width_spaces(text).replace("\u200b", " ")
    return _DIGIT.sub("0", _ZERO_WIDTH.sub("", text.casefold()))


def word_hashes(tokens: list[str]) -> np.ndarray:
    """A stable 64-bit hash per word (the same in every process and run, unlike ``hash``)."""
    return text_word_hashes(" ".join(tokens))  # a space is no part of a word: the join splits back into `tokens`


MAX_WORD_CHARS = 1024  # characters of a word with their own position key (a power of two); longer words reuse them
_WORD_KEYS = np.random.default_rng(0x3D5).integers(1, 2**63, size=MAX_WORD_CHARS + 1, dtype=np.uint64) * 2 + 1
_char_classes: tuple[np.ndarray, np.ndarray] | None = None


def _classes() -> tuple[np.ndarray, np.ndarray]:
    """Per code point: whether ``words`` counts it as a word character, and whether it joins two words."""
    global _char_classes
    if _char_classes is None:
        letters = np.zeros(0x110000, dtype=bool)
        for low, high in ((0, 0xD800), (0xE000, 0x110000)):  # every code point but the surrogates
            chars = np.arange(low, high, dtype=np.uint32).tobytes().decode("utf-32-le")
            for run in _WORD_CHAR_RUN.finditer(chars):
                letters[low + run.start() : low + run.end()] = True
        joiners = np.zeros(0x110000, dtype=bool)
        joiners[[ord(c) for c in _JOINERS]] = True
        _char_classes = letters, joiners
    return _char_classes


def text_word_hashes(text: str) -> np.ndarray:
    """``word_hashes(words(text))``, computed over the text's code points at once: the words found by the same
    rule as ``words`` (runs of letters and marks, joined by a single apostrophe or hyphen between two of them),
    each hashed from its characters and their positions in it."""
    letters, joiners = _classes()
    points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    if not len(points):
        return np.zeros(0, dtype=np.uint64)
    is_letter = letters[points]
    in_word = is_letter.copy()
    in_word[1:-1] |= joiners[points[1:-1]] & is_letter[:-2] & is_letter[2:]
    edges = np.diff(in_word.astype(np.int8), prepend=np.int8(0), append=np.int8(0))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    if not len(starts):
        return np.zeros(0, dtype=np.uint64)
    lengths = ends - starts
    word_starts = np.cumsum(lengths) - lengths  # where each word begins among the word characters alone
    offsets = np.arange(int(lengths.sum())) - np.repeat(word_starts, lengths)  # each character's place in its word
    with np.errstate(over="ignore"):
        terms = points[in_word].astype(np.uint64) * _WORD_KEYS[offsets & (MAX_WORD_CHARS - 1)]
        combined = np.add.reduceat(terms, word_starts) + lengths.astype(np.uint64) * _WORD_KEYS[MAX_WORD_CHARS]
    return _mix(combined)


def _mix(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, in place: spreads a sum over all 64 bits."""
    with np.errstate(over="ignore"):
        values ^= values >> np.uint64(30)
        values *= np.uint64(0xBF58476D1CE4E5B9)
        values ^= values >> np.uint64(27)
        values *= np.uint64(0x94D049BB133111EB)
        values ^= values >> np.uint64(31)
    return values


MAX_NGRAM = 256  # the longest word n-gram hashed (dedup shingles, decontamination n-grams)
# Odd multipliers, one per position in an n-gram, so "a b" and "b a" hash apart.
_POSITION = np.random.default_rng(0x1D1C).integers(1, 2**63, size=MAX_NGRAM, dtype=np.uint64)
_POSITION = _POSITION * np.uint64(2) + np.uint64(1)


def ngram_hashes(hashes: np.ndarray, n: int) -> np.ndarray:
    """64-bit hashes of every run of `n` consecutive words; a text shorter than `n` gives one hash of all of it."""
    if not 1 <= n <= MAX_NGRAM:
        raise ValueError(f"n-grams of 1 to {MAX_NGRAM} words can be hashed, not {n}")
    n = min(n, len(hashes))
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    count = len(hashes) - n + 1
    combined = np.zeros(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):
            combined += hashes[j : j + count] * _POSITION[j]
    return _mix(combined)

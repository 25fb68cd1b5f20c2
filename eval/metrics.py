"""Metrics, and how sure we are of a difference between two models scored on the same items.

Every comparison is paired: the base and the candidate answered the same items, so the interval is
a paired bootstrap (items resampled, both models on the same resample) and, for right/wrong
outcomes, McNemar's exact test on the items where exactly one of them was right.
"""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections import Counter
from typing import Callable

import numpy as np

LN2 = math.log(2)


def bits_per_unit(nll_nats: list[float], units: list[int]) -> float:
    """Total information in bits divided by characters (or bytes): comparable across tokenizers."""
    return sum(nll_nats) / LN2 / sum(units)


# What each metric can be: (lowest, highest, whether the lowest itself is possible). No model predicts
# text for free, so 0 bits or 0 tokens per word means the text was not scored at all.
POSSIBLE_RANGE = {
    "bits_per_character": (0.0, math.inf, False),
    "bits_per_byte": (0.0, math.inf, False),
    "tokens_per_word": (0.0, math.inf, False),
    "accuracy": (0.0, 100.0, True),
    "accuracy_bytes": (0.0, 100.0, True),
    "chrf++": (0.0, 100.0, True),
    "exact_match": (0.0, 100.0, True),
    "f1": (0.0, 100.0, True),
}


def out_of_range(metric: str, value: float) -> str | None:
    """Why ``value`` cannot be a true ``metric`` score, or None when it can."""
    low, high, low_possible = POSSIBLE_RANGE[metric]
    if not math.isfinite(value) or value > high or value < low or (value == low and not low_possible):
        bound = f"{'[' if low_possible else '('}{low:g}, {high:g}]"
        return f"{metric} = {value!r} is outside its possible range {bound}"
    return None


def paired_bootstrap(
    statistic: Callable[[np.ndarray], np.ndarray],
    base: np.ndarray,
    candidate: np.ndarray,
    samples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """Delta statistic(candidate) - statistic(base) over the same items, with a paired bootstrap interval.

    ``base`` and ``candidate`` hold one row per item (any trailing shape); ``statistic`` maps the
    per-item rows summed over a sample, shape (samples, ...), to one value per sample.
    """
    base, candidate = np.asarray(base, dtype=float), np.asarray(candidate, dtype=float)
    if base.shape != candidate.shape:
        raise ValueError(f"paired items differ: base {base.shape}, candidate {candidate.shape}")
    delta = float(statistic(candidate.sum(0)[None])[0] - statistic(base.sum(0)[None])[0])
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(base), size=(samples, len(base)))
    resampled = statistic(candidate[index].sum(1)) - statistic(base[index].sum(1))
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(resampled, [tail, 100 - tail])
    return delta, float(low), float(high)


def paired_bootstrap_delta(
    base: list[float],
    candidate: list[float],
    units: list[int],
    samples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """Delta of bits per unit (candidate - base) over the same text chunks, with its paired interval."""
    units_arr = np.asarray(units, dtype=float)
    return paired_bootstrap(
        lambda s: s[..., 0] / LN2 / s[..., 1],
        np.stack([base, units_arr], 1),
        np.stack([candidate, units_arr], 1),
        samples,
        seed,
        confidence,
    )


def mean_delta(
    base: list[float], candidate: list[float], samples: int = 1000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float, float]:
    """Delta of a per-item mean (accuracy, F1) with its paired bootstrap interval."""
    ones = np.ones(len(base))
    return paired_bootstrap(
        lambda s: s[..., 0] / s[..., 1],
        np.stack([base, ones], 1),
        np.stack([candidate, ones], 1),
        samples,
        seed,
        confidence,
    )


def mcnemar_p(base_correct: list[bool], candidate_correct: list[bool]) -> float:
    """Two-sided exact McNemar p: are the items only one model got right split unevenly between them?"""
    b = sum(1 for x, y in zip(base_correct, candidate_correct) if x and not y)
    c = sum(1 for x, y in zip(base_correct, candidate_correct) if y and not x)
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


# ---- multiple choice ----------------------------------------------------------------------------------


def choice_correct(
    loglikelihoods: list[list[float]], golds: list[int], choice_bytes: list[list[int]] | None = None
) -> list[bool]:
    """Per item: is the gold choice the most likely one (raw, or per UTF-8 byte of the choice)?"""
    correct = []
    for i, (scores, gold) in enumerate(zip(loglikelihoods, golds)):
        if choice_bytes is not None:
            scores = [s / max(n, 1) for s, n in zip(scores, choice_bytes[i])]
        correct.append(int(np.argmax(scores)) == gold)
    return correct


# ---- translation --------------------------------------------------------------------------------------


def chrf_statistics(predictions: list[str], references: list[list[str]]) -> tuple[list[list[int]], str]:
    """Per-sentence chrF++ statistics (they add up to the corpus score) and sacrebleu's signature."""
    from sacrebleu.metrics import CHRF

    metric = CHRF(word_order=2)
    width = max(map(len, references))
    streams = [[refs[i] if i < len(refs) else "" for refs in references] for i in range(width)]
    return metric._extract_corpus_statistics(predictions, streams), str(metric.get_signature())


def chrf_from_statistics(stats: np.ndarray) -> np.ndarray:
    """chrF++ for each row of summed statistics."""
    from sacrebleu.metrics import CHRF

    metric = CHRF(word_order=2)
    rows = np.atleast_2d(stats)
    return np.array([metric._compute_score_from_stats([int(round(v)) for v in row]).score for row in rows])


# ---- extractive QA ------------------------------------------------------------------------------------

# Nukta signs of the Indic scripts: a word written with or without one is the same answer.
_NUKTAS = dict.fromkeys(map(ord, "\u093c\u09bc\u0a3c\u0abc\u0b3c\u0c3c\u0cbc"))
_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"))
_PUNCTUATION = re.compile(
    r"[\u0964\u0965\u0970\u2018\u2019\u201c\u201d\u2013\u2014\u2026" + re.escape(string.punctuation) + "]"
)
_ENGLISH_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str, lang: str | None = None) -> str:
    """SQuAD's answer normalisation made Indic-aware: NFC, no nukta, no zero-width characters, dandas
    and punctuation as spaces, lower case; English articles dropped for English only."""
    text = unicodedata.normalize("NFD", unicodedata.normalize("NFC", text)).translate(_NUKTAS)
    text = unicodedata.normalize("NFC", text).translate(_ZERO_WIDTH).lower()
    text = _PUNCTUATION.sub(" ", text)
    if lang in (None, "en"):
        text = _ENGLISH_ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, references: list[str], lang: str | None = None) -> float:
    answer = normalize_answer(prediction, lang)
    return float(any(answer == normalize_answer(r, lang) for r in references))


def token_f1(prediction: str, references: list[str], lang: str | None = None) -> float:
    """Best token-overlap F1 of the prediction against any reference."""
    predicted = normalize_answer(prediction, lang).split()
    best = 0.0
    for reference in references:
        gold = normalize_answer(reference, lang).split()
        common = sum((Counter(predicted) & Counter(gold)).values())
        if not predicted or not gold:
            best = max(best, float(predicted == gold))
        elif common:
            precision, recall = common / len(predicted), common / len(gold)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


# ---- worked numeric answers (grade-school math) --------------------------------------------------------

# A number as models write them: digits grouped by commas (1,000,000 or India's 10,00,000), a decimal part,
# a sign. Applied after every Unicode decimal digit (Devanagari, Bengali, Telugu, Tamil, ...) is read as ASCII.
_NUMBER = re.compile(r"(?<![\d.])-?\d+(?:,\d+)*(?:\.\d+)?")


def ascii_digits(text: str) -> str:
    """Every decimal digit of any script as its ASCII digit: ४२, ৪২, ౪౨ and ௪௨ are all 42."""
    return "".join(str(unicodedata.decimal(c)) if c.isdecimal() else c for c in text)


def final_number(text: str) -> float | None:
    """The last number in a worked answer (its conclusion), or None if it has none."""
    numbers = _NUMBER.findall(ascii_digits(text))
    return float(numbers[-1].replace(",", "")) if numbers else None


def numeric_match(prediction: str, references: list[str], lang: str | None = None) -> float:
    """1.0 if the prediction's final number equals a reference's number, else 0.0 (no number: 0.0)."""
    answer = final_number(prediction)
    if answer is None:
        return 0.0
    return float(any((gold := final_number(r)) is not None and math.isclose(answer, gold) for r in references))

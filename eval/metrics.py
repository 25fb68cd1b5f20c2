"""Metrics and their uncertainty."""

from __future__ import annotations

import math

import numpy as np

LN2 = math.log(2)


def bits_per_unit(nll_nats: list[float], units: list[int]) -> float:
    """Total information in bits divided by characters (or bytes): comparable across tokenizers."""
    return sum(nll_nats) / LN2 / sum(units)


def paired_bootstrap_delta(base: list[float], candidate: list[float], units: list[int], samples: int = 1000,
                           seed: int = 0, confidence: float = 0.95) -> tuple[float, float, float]:
    """Delta of bits per unit (candidate - base) over the same items, with a paired bootstrap interval.

    Items (text chunks) are resampled with replacement and both models are scored on the same
    resample, so the interval reflects how much the difference, not each score, depends on the sample.
    """
    base_bits = np.asarray(base) / LN2
    candidate_bits = np.asarray(candidate) / LN2
    units_arr = np.asarray(units, dtype=float)
    delta = (candidate_bits.sum() - base_bits.sum()) / units_arr.sum()
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(units_arr), size=(samples, len(units_arr)))
    resampled = (candidate_bits[index].sum(1) - base_bits[index].sum(1)) / units_arr[index].sum(1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(resampled, [tail, 100 - tail])
    return float(delta), float(low), float(high)

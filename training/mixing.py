"""How much of each language a tokenizer or a training run sees: temperature sampling and English replay."""

from __future__ import annotations

import math
import random


def temperature_shares(
    sizes: dict[str, float], temperature: float, fixed: dict[str, float] | None = None
) -> dict[str, float]:
    """Each language's share of the mix, proportional to (its share of `sizes`)^(1/temperature).

    Temperature 1 keeps the corpus proportions; a higher temperature moves toward equal shares, so a small
    language is not drowned by a large one. Languages in `fixed` get exactly their given share (English
    replay, for instance) and the others divide the rest.
    """
    fixed = fixed or {}
    rest = {lang: size for lang, size in sizes.items() if lang not in fixed and size > 0}
    total = sum(rest.values())
    weights = {lang: (size / total) ** (1.0 / temperature) for lang, size in rest.items()}
    norm = sum(weights.values())
    remaining = 1.0 - sum(fixed.values())
    return {**{lang: remaining * w / norm for lang, w in weights.items()}, **fixed}


def repeat_to_quota(lengths: list[int], quota: float, rng: random.Random) -> list[int]:
    """Indices into `lengths` whose lengths sum to about `quota`: every item as many whole times as fit,
    then a random selection for the remainder (so a language below its share is repeated, one above it
    is subsampled)."""
    size = sum(lengths)
    whole = int(quota // size) if size else 0
    chosen = list(range(len(lengths))) * whole
    order = list(range(len(lengths)))
    rng.shuffle(order)
    left = quota - whole * size
    for index in order:
        if left <= 0 or math.isclose(left, 0.0, abs_tol=0.5):
            break
        chosen.append(index)
        left -= lengths[index]
    return chosen

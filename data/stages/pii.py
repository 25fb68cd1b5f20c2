"""pii: replace personal identifiers with typed placeholders and count them per type.

Numbers are matched in any script's digits (Devanagari ४५६७ as well as 4567): the text is matched
through a copy with every digit folded to ASCII, which keeps character offsets, and the original is
edited. An Aadhaar number must pass its Verhoeff checksum, so an ordinary 12-digit number stays.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa

from data import languages
from data.recipe import field
from data.stages import Record, Stage

# Verhoeff check digits: multiplication in the dihedral group D5, and the position permutation.
_D5 = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 0, 6, 7, 8, 9, 5], [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
    [3, 4, 0, 1, 2, 8, 9, 5, 6, 7], [4, 0, 1, 2, 3, 9, 5, 6, 7, 8], [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
    [6, 5, 9, 8, 7, 1, 0, 4, 3, 2], [7, 6, 5, 9, 8, 2, 1, 0, 4, 3], [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
    [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
]
_PERMUTATION = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 5, 7, 6, 2, 8, 3, 0, 9, 4], [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
    [8, 9, 1, 6, 0, 4, 3, 5, 2, 7], [9, 4, 5, 3, 1, 2, 6, 8, 7, 0], [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
    [2, 7, 9, 3, 8, 0, 6, 4, 1, 5], [7, 0, 4, 6, 9, 1, 3, 2, 5, 8],
]


def verhoeff_valid(digits: str) -> bool:
    check = 0
    for position, digit in enumerate(reversed(digits)):
        check = _D5[check][_PERMUTATION[position % 8][int(digit)]]
    return check == 0


def _digits(match: re.Match) -> str:
    return re.sub(r"[^0-9]", "", match.group())


# Checked in this order; a later pattern never sees what an earlier one replaced.
PATTERNS: list[tuple[str, re.Pattern, Callable[[re.Match], bool] | None]] = [
    ("email", re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"), None),
    ("aadhaar", re.compile(r"(?<![0-9])[2-9][0-9]{3}[ -]?[0-9]{4}[ -]?[0-9]{4}(?![0-9])"),
     lambda m: verhoeff_valid(_digits(m))),
    ("pan", re.compile(r"(?<![A-Z0-9])[A-Z]{3}[PCHFATBLJG][A-Z][0-9]{4}[A-Z](?![A-Z0-9])"), None),
    # Mobile: an optional +91 / 0091 / 0, then ten digits starting 6-9.
    ("phone", re.compile(r"(?<![0-9+])(?:(?:\+91|0091)[ -]?|0)?[6-9][0-9]{4}[ -]?[0-9]{5}(?![0-9])"), None),
    # Landline: 0, a two- to four-digit STD code, a separator, the number; eleven digits in all.
    ("phone", re.compile(r"(?<![0-9+])0[1-9][0-9]{1,3}[ -][0-9]{6,8}(?![0-9])"), lambda m: len(_digits(m)) == 11),
]
KINDS = tuple(dict.fromkeys(kind for kind, _, _ in PATTERNS))


def redact(text: str) -> tuple[str, dict[str, int]]:
    counts = dict.fromkeys(KINDS, 0)
    for kind, pattern, valid in PATTERNS:
        folded = languages.to_ascii_digits(text)  # same length as text: offsets carry over
        pieces, last = [], 0
        for match in pattern.finditer(folded):
            if valid is None or valid(match):
                pieces += [text[last : match.start()], f"[{kind.upper()}]"]
                last = match.end()
                counts[kind] += 1
        text = "".join(pieces) + text[last:]
    return text, counts


@dataclass
class PiiConfig:
    enabled: bool = True
    drop_if_more_than: int | None = field(None, help="drop a record with more identifiers than this (None: never)")


class Pii(Stage):
    name = "pii"
    columns = {f"pii_{kind}": pa.int32() for kind in KINDS}

    def __init__(self, config: PiiConfig):
        self.config = config

    def process(self, record: Record) -> str | None:
        record["text"], counts = redact(record["text"])
        record.update({f"pii_{kind}": n for kind, n in counts.items()})
        if self.config.drop_if_more_than is not None and sum(counts.values()) > self.config.drop_if_more_than:
            return "pii_dense"
        return None

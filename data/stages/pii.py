"""pii: replace personal identifiers with typed placeholders and count them per type.

Numbers are matched in any script's digits (Devanagari ४५६७ as well as 4567): the text is matched
through a copy with every digit folded to ASCII, which keeps character offsets, and the original is
edited. Checksums and registries keep ordinary text out: an Aadhaar number must pass its Verhoeff
checksum and a GSTIN its mod-36 check character, a vehicle registration must start with a state or
union-territory code, and a UPI ID needs a handle without a dot (a dot makes it an e-mail domain).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pyarrow as pa

from indictune.core import languages
from indictune.core.recipe import field
from indictune.data.stages import Record, Stage, StageConfig, stage

# Verhoeff check digits: multiplication in the dihedral group D5, and the position permutation.
_D5 = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    [1, 2, 3, 4, 0, 6, 7, 8, 9, 5],
    [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
    [3, 4, 0, 1, 2, 8, 9, 5, 6, 7],
    [4, 0, 1, 2, 3, 9, 5, 6, 7, 8],
    [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
    [6, 5, 9, 8, 7, 1, 0, 4, 3, 2],
    [7, 6, 5, 9, 8, 2, 1, 0, 4, 3],
    [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
    [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
]
_PERMUTATION = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    [1, 5, 7, 6, 2, 8, 3, 0, 9, 4],
    [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
    [8, 9, 1, 6, 0, 4, 3, 5, 2, 7],
    [9, 4, 5, 3, 1, 2, 6, 8, 7, 0],
    [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
    [2, 7, 9, 3, 8, 0, 6, 4, 1, 5],
    [7, 0, 4, 6, 9, 1, 3, 2, 5, 8],
]


def verhoeff_valid(digits: str) -> bool:
    check = 0
    for position, digit in enumerate(reversed(digits)):
        check = _D5[check][_PERMUTATION[position % 8][int(digit)]]
    return check == 0


_GSTIN_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def gstin_valid(gstin: str) -> bool:
    """The 15th character of a GSTIN is a mod-36 check over the first 14 (weights 1, 2, 1, 2, ...)."""
    total = 0
    for i, char in enumerate(gstin[:14]):
        product = _GSTIN_ALPHABET.index(char) * (2 if i % 2 else 1)
        total += product // 36 + product % 36
    return _GSTIN_ALPHABET[(36 - total % 36) % 36] == gstin[14]


# State and union-territory codes of Indian registration plates (and BH, the Bharat series).
_VEHICLE_STATES = (
    "AN AP AR AS BR CG CH DD DL DN GA GJ HP HR JH JK KA KL LA LD MH ML MN MP MZ NL OD OR PB PY RJ "
    "SK TN TR TS UK UA UP WB"
).split()


def _digits(match: re.Match) -> str:
    return re.sub(r"[^0-9]", "", match.group())


# Where two could match at one place, the first listed wins.
PATTERNS: list[tuple[str, re.Pattern, Callable[[re.Match], bool] | None]] = [
    ("email", re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"), None),
    # UPI: name@handle, the handle without a dot (okaxis, ybl, paytm); e-mails are gone by now.
    ("upi", re.compile(r"(?<![\w.@-])[A-Za-z0-9][A-Za-z0-9._-]{1,255}@[A-Za-z][A-Za-z0-9]{1,63}(?![\w.@-])"), None),
    (
        "gstin",
        re.compile(r"(?<![A-Z0-9])[0-3][0-9][A-Z]{5}[0-9]{4}[A-Z][1-9A-Z]Z[0-9A-Z](?![A-Z0-9])"),
        lambda m: gstin_valid(m.group()),
    ),
    ("ifsc", re.compile(r"(?<![A-Z0-9])[A-Z]{4}0[A-Z0-9]{6}(?![A-Z0-9])"), None),
    (
        "aadhaar",
        # One separator throughout, so that a number beside a phone number is not read as one; never after a "+".
        re.compile(r"(?<![0-9+])[2-9][0-9]{3}(?P<sep>[ -]?)[0-9]{4}(?P=sep)[0-9]{4}(?![0-9])"),
        lambda m: verhoeff_valid(_digits(m)),
    ),
    ("pan", re.compile(r"(?<![A-Z0-9])[A-Z]{3}[PCHFATBLJG][A-Z][0-9]{4}[A-Z](?![A-Z0-9])"), None),
    # Mobile: an optional +91 / 0091 / 0, then ten digits starting 6-9.
    ("phone", re.compile(r"(?<![0-9+])(?:(?:\+91|0091)[ -]?|0)?[6-9][0-9]{4}[ -]?[0-9]{5}(?![0-9])"), None),
    ("phone", re.compile(r"(?<![0-9+])(?:(?:\+91|0091)[ -]?|0)?[6-9][0-9]{2}[ -][0-9]{3}[ -][0-9]{4}(?![0-9])"), None),
    # Landline: 0, a two- to four-digit STD code, a separator, the number; eleven digits in all.
    ("phone", re.compile(r"(?<![0-9+])0[1-9][0-9]{1,3}[ -][0-9]{6,8}(?![0-9])"), lambda m: len(_digits(m)) == 11),
]
PATTERNS += [
    (
        "vehicle",
        re.compile(r"(?<![A-Z0-9])(?P<state>[A-Z]{2})[ -]?[0-9]{1,2}[ -]?[A-Z]{1,3}[ -]?[0-9]{4}(?![A-Z0-9])"),
        lambda m: m["state"] in _VEHICLE_STATES,
    ),
    ("vehicle", re.compile(r"(?<![A-Z0-9])[0-9]{2}[ -]?BH[ -]?[0-9]{4}[ -]?[A-Z]{1,2}(?![A-Z0-9])"), None),
]
KINDS = tuple(dict.fromkeys(kind for kind, _, _ in PATTERNS))


# Every identifier is a run of ASCII letters, digits and a few separators (digits already folded to
# ASCII). The patterns run only on such runs: scanning whole Indic documents with look-behinds at every
# character would cost more than the rest of the cleaning chain.
_CANDIDATE = re.compile(r"[A-Za-z0-9@+][A-Za-z0-9@+._%\- ]{5,}")


def _matches(pattern: re.Pattern, valid: Callable[[re.Match], bool] | None, folded: str) -> Iterator[re.Match]:
    """The valid matches of `pattern`, left to right, not overlapping. A candidate that fails its check is
    retried one character on, not skipped whole: in "2024 7181 9093 7865" the year starts a twelve-digit
    candidate that fails the checksum, and the Aadhaar number begins inside it."""
    position = 0
    while match := pattern.search(folded, position):
        if valid is None or valid(match):
            yield match
            position = match.end()
        else:
            position = match.start() + 1


def _redact_run(text: str, folded: str, counts: dict[str, int]) -> str:
    for kind, pattern, valid in PATTERNS:
        pieces, folded_pieces, last = [], [], 0
        for match in _matches(pattern, valid, folded):
            placeholder = f"[{kind.upper()}]"
            pieces += [text[last : match.start()], placeholder]
            folded_pieces += [folded[last : match.start()], placeholder]
            last = match.end()
            counts[kind] += 1
        if pieces:
            text, folded = "".join(pieces) + text[last:], "".join(folded_pieces) + folded[last:]
    return text


def redact(text: str) -> tuple[str, dict[str, int]]:
    counts = dict.fromkeys(KINDS, 0)
    folded = languages.to_ascii_digits(text)  # same length as text: offsets carry over
    pieces, last = [], 0
    for run in _CANDIDATE.finditer(folded):
        start, end = run.span()
        pieces += [text[last:start], _redact_run(text[start:end], folded[start:end], counts)]
        last = end
    return "".join(pieces) + text[last:], counts


@dataclass
class PiiConfig(StageConfig):
    drop_if_more_than: int | None = field(
        None, minimum=0, help="drop a record with more identifiers than this (None: never)"
    )


@stage("pii", order=50, config=PiiConfig, help="emails, phones, Indian identifiers -> placeholders")
class Pii(Stage):
    columns = {f"pii_{kind}": pa.int32() for kind in KINDS}

    def process(self, record: Record) -> str | None:
        record["text"], counts = redact(record["text"])
        record.update({f"pii_{kind}": n for kind, n in counts.items()})
        if self.config.drop_if_more_than is not None and sum(counts.values()) > self.config.drop_if_more_than:
            return "pii_dense"
        return None

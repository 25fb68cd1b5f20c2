"""Text units shared by the stages: words that keep their vowel signs, lines, n-grams."""

from __future__ import annotations

import regex

# `regex`'s \w includes combining marks (Mn/Mc); the standard library's splits Hindi words at every matra.
_WORD = regex.compile(r"[\w\p{M}]+(?:['’\-][\w\p{M}]+)*")


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def nonempty_lines(text: str) -> list[str]:
    return [line.strip() for line in text.split("\n") if line.strip()]

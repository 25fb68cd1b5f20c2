"""normalize: NFC, indic-nlp-library's per-language normalizer, whitespace; idempotent.

indic-nlp-library deletes ZWJ/ZWNJ, which carry meaning in Malayalam chillus, Bengali khanda-ta and
Marathi eyelash-ra, and turns any colon after a Devanagari letter into a visarga, which corrupts
labels ("नाम: ...") and times. Both are shielded from it: ZWJ/ZWNJ always, a colon unless it sits
between two Indic letters, where it is an OCR or typing slip for the visarga ("दु:ख").
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from data import languages
from data.recipe import field
from data.stages import Record, Stage

_INDIC = "\u0900-\u0dff"
_COLON_TO_SHIELD = re.compile(rf"(?<![{_INDIC}]):|:(?![{_INDIC}])")
_SHIELDS = {"\u200c": "\ue000", "\u200d": "\ue001", ":": "\ue002"}
_UNSHIELD = str.maketrans({v: k for k, v in _SHIELDS.items()})
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufeff]")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_BLANK_RUN = re.compile(r"\n{3,}")


@lru_cache(maxsize=None)
def _indic_normalizer(code: str):
    from indicnlp.normalize.indic_normalize import IndicNormalizerFactory

    return IndicNormalizerFactory().get_normalizer(code)


def normalize_text(text: str, lang: str | None = None, digits: str = "keep") -> str:
    """The text every later stage, the tokenizer and training see. ``lang`` None: by dominant script."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _CONTROL.sub("", text)
    if lang is None:
        script = languages.dominant_script(text)
        candidates = languages.languages_for_script(script) if script else ()
        language = candidates[0] if candidates else None
    else:
        language = languages.get(lang)
    if language is not None and language.indicnlp:
        shielded = _COLON_TO_SHIELD.sub(_SHIELDS[":"], text)
        shielded = shielded.replace("\u200c", _SHIELDS["\u200c"]).replace("\u200d", _SHIELDS["\u200d"])
        text = _indic_normalizer(language.indicnlp).normalize(shielded).translate(_UNSHIELD)
        text = unicodedata.normalize("NFC", text)
    if digits == "ascii":
        text = languages.to_ascii_digits(text)
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return _BLANK_RUN.sub("\n\n", "\n".join(lines)).strip()


@dataclass
class NormalizeConfig:
    enabled: bool = True
    digits: Literal["keep", "ascii"] = field("keep", help="keep native digits, or map all digits to ASCII")


class Normalize(Stage):
    name = "normalize"

    def __init__(self, config: NormalizeConfig):
        self.config = config

    def process(self, record: Record) -> str | None:
        record["text"] = normalize_text(record["text"], record["lang"], self.config.digits)
        return None

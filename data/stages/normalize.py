"""normalize: NFC, indic-nlp-library's per-language normalizer, spelling-variant policies, whitespace; idempotent.

indic-nlp-library deletes ZWJ/ZWNJ, which carry meaning in Malayalam chillus, Bengali khanda-ta and
Marathi eyelash-ra, and turns any colon after a Devanagari letter into a visarga, which corrupts
labels ("नाम: ...") and times. Both are shielded from it: ZWJ/ZWNJ always, a colon unless it sits
between two Indic letters, where it is an OCR or typing slip for the visarga ("दु:ख").

It also turns every zero-width space (U+200B) into a space, which splits the words where web text uses
one as a joiner (Telugu "యూనిట్​కు", "శాన్​ఫ్రాన్సిస్కో": 2% of FLORES Telugu). A zero-width space between two
letters or marks of one script other than Latin is therefore resolved first (``text.join_zero_width_spaces``),
by what it does to the rendering (checked with HarfBuzz and the Noto fonts of each script):
- after a virama (Devanagari, Bengali, Gurmukhi, Gujarati, Odia, Tamil, Telugu, Kannada, Malayalam, Meetei
  Mayek), it ends the syllable and so keeps the virama visible, exactly as ZWNJ does; removing it would form
  a conjunct, a subjoined or half form, or a reph (ట్​క: ట్‌క, not ట్క). It becomes ZWNJ.
- between other letters and marks of those scripts, and in Ol Chiki, nothing shapes across it: removing it
  renders the same. Before a vowel sign or other mark it detached the mark from its letter (a dotted circle),
  a slip that removing repairs.
- in Perso-Arabic (Urdu, Kashmiri, Sindhi) it is transparent to cursive joining (Unicode gives format
  characters joining type T), so the letters on both sides already join: it is removed. ZWNJ would cut them.
Any other zero-width space (next to a space, punctuation, a digit, Latin, or between two scripts) is left
as before: a space for the languages indic-nlp-library normalizes, kept for the others.

Policies (each idempotent, and the output is always NFC): nukta letters kept or folded to their base
letter; curly quotes, dashes and ellipses kept (indic-nlp-library would fold them) or written in
ASCII; candrabindu kept or written as anusvara (हैँ / हैं, interchangeable in modern Hindi); ``||``,
``।।`` and a ``|`` after Indic text written as the Unicode danda and double danda; digits kept, mapped
to ASCII, or mapped to the language's own digits. Urdu gets its Arabic-script letter variants and
presentation forms folded here, because indic-nlp-library's Urdu normalizer needs urduhack, a
package it does not declare.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import regex

from indictune.core import languages
from indictune.core import text as text_units
from indictune.core.recipe import field
from indictune.data.stages import Record, Stage, StageConfig, stage

_INDIC = "\u0900-\u0dff"
# A colon between two Indic letters (not digits: "१०:३०" is a time) is a visarga slip; any other is a colon.
_INDIC_LETTER = rf"(?!\p{{Nd}})[{_INDIC}]"
_COLON_TO_SHIELD = regex.compile(rf"(?<!{_INDIC_LETTER}):|:(?!{_INDIC_LETTER})")
# Shields are Unicode noncharacters (U+FDD0-FDEF, for a program's internal use); input holding any loses them
# with the control characters, so unshielding never turns an input character into something else.
_SHIELDS = {"\u200c": "\ufdd0", "\u200d": "\ufdd1", ":": "\ufdd2", "|": "\ufdd3"}
# What indic-nlp-library rewrites and we keep: typographic punctuation it folds to ASCII (curly quotes,
# dashes, ellipsis; the punctuation policy decides), Malayalam's au length mark (ൗ, the modern form FLORES
# and current text use), which it turns into the two-part ൌ, and Odia's ଵ (va), which it respells as ବ (ba).
_TYPOGRAPHIC = "\u2018\u2019\u201c\u201d\u2013\u2014\u2026"
_KEPT = _TYPOGRAPHIC + "\u0d57\u0b35"
_SHIELDS.update({c: chr(0xFDE0 + i) for i, c in enumerate(_KEPT)})
_SHIELD_KEPT = regex.compile(f"[{_KEPT}\u200c\u200d]")
_UNSHIELD_ALL = regex.compile("[\ufdd0-\ufdef]")
_SHIELDED = {v: k for k, v in _SHIELDS.items()}
_TYPOGRAPHIC_RE = regex.compile(f"[{_TYPOGRAPHIC}]")
_TYPOGRAPHIC_ASCII = {
    "\u2018": "'",
    "\u2019": "'",
    "\u201c": '"',
    "\u201d": '"',
    "\u2013": "-",
    "\u2014": "-",
    "\u2026": "...",
}
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufeff\ufdd0-\ufdef]")
_SPACE = r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]"
_SPACES = re.compile(_SPACE + "+")
_BLANK_RUN = re.compile(r"\n{3,}")
# Spaces of any kind and number (zero-width ones included) may stand between: they are collapsed later, and
# the second pass must see a "|" the way the first did.
_INDIC_BEFORE = rf"(?<=[{_INDIC}](?:{_SPACE}|\u200b)*)"
_DOUBLE_DANDA = regex.compile(rf"{_INDIC_BEFORE}(?:\|\||।।)|।।")
_SINGLE_DANDA = regex.compile(rf"{_INDIC_BEFORE}\|(?!\|)")
# Nukta signs of the Brahmic scripts (Devanagari, Bengali, Gurmukhi, Gujarati, Odia, Telugu, Kannada).
_NUKTAS = dict.fromkeys(map(ord, "\u093c\u09bc\u0a3c\u0abc\u0b3c\u0c3c\u0cbc"))
# Candrabindu -> anusvara, script by script.
_CANDRABINDU = str.maketrans(dict(zip("\u0901\u0981\u0a01\u0a81\u0b01\u0c01", "\u0902\u0982\u0a02\u0a82\u0b02\u0c02")))
# Arabic letters Urdu writes with its own code points, and presentation forms from PDFs (NFKC folds those).
_URDU_LETTERS = str.maketrans({"\u064a": "\u06cc", "\u0643": "\u06a9", "\u0649": "\u06cc"})
_PRESENTATION_FORMS = re.compile("[\ufb50-\ufdff\ufe70-\ufeff]+")


@lru_cache(maxsize=None)
def _indic_normalizer(code: str):
    from indicnlp.normalize.indic_normalize import IndicNormalizerFactory

    return IndicNormalizerFactory().get_normalizer(code)


def normalize_text(
    text: str,
    lang: str | None = None,
    digits: str = "keep",
    nukta: str = "keep",
    candrabindu: str = "keep",
    danda: str = "unicode",
    punctuation: str = "keep",
) -> str:
    """The text every later stage, the tokenizer and training see. ``lang`` None: by dominant script."""
    text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    # before NFC: a zero-width space removed from a word can bring a letter and its mark together
    text = unicodedata.normalize("NFC", text_units.join_zero_width_spaces(text))
    if lang is None:
        script = languages.dominant_script(text)
        candidates = languages.languages_for_script(script) if script else ()
        language = candidates[0] if candidates else None
    else:
        language = languages.get(lang)
    if danda == "unicode":
        text = _SINGLE_DANDA.sub("।", _DOUBLE_DANDA.sub("॥", text))
    if language is not None and language.indicnlp:
        # indic-nlp-library turns every "|" into a danda; only one after Indic text is one (not "a|b", URLs, tables)
        shielded = _COLON_TO_SHIELD.sub(_SHIELDS[":"], text).replace("|", _SHIELDS["|"])
        shielded = _SHIELD_KEPT.sub(lambda m: _SHIELDS[m.group()], shielded)
        normalized = _indic_normalizer(language.indicnlp).normalize(shielded)
        text = _UNSHIELD_ALL.sub(lambda m: _SHIELDED.get(m.group(), m.group()), normalized)
        text = unicodedata.normalize("NFC", text)
    if language is not None and language.script == "Arab":
        text = _PRESENTATION_FORMS.sub(lambda m: unicodedata.normalize("NFKC", m.group()), text)
        if language.code == "ur":
            text = text.translate(_URDU_LETTERS)
    if punctuation == "ascii":
        text = _TYPOGRAPHIC_RE.sub(lambda m: _TYPOGRAPHIC_ASCII[m.group()], text)
    if nukta == "remove":
        text = unicodedata.normalize("NFC", unicodedata.normalize("NFD", text).translate(_NUKTAS))
    if candrabindu == "anusvara":
        text = text.translate(_CANDRABINDU)
    if digits == "ascii":
        text = languages.to_ascii_digits(text)
    elif digits == "native" and language is not None and languages.SCRIPTS[language.script].digit_zero:
        zero = languages.SCRIPTS[language.script].digit_zero
        text = text.translate({ord("0") + i: zero + i for i in range(10)})
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return _BLANK_RUN.sub("\n\n", "\n".join(lines)).strip()


@dataclass
class NormalizeConfig(StageConfig):
    digits: Literal["keep", "ascii", "native"] = field(
        "keep", help="keep digits as written, map all to ASCII, or map ASCII digits to the language's own"
    )
    nukta: Literal["keep", "remove"] = field("keep", help="keep nukta letters (क़ ज़ ড়), or fold them to the base letter")
    candrabindu: Literal["keep", "anusvara"] = field("keep", help="keep candrabindu, or write it as anusvara")
    danda: Literal["unicode", "keep"] = field("unicode", help="write | || ।। after Indic text as । and ॥")
    punctuation: Literal["keep", "ascii"] = field("keep", help="keep curly quotes, dashes and … or write them in ASCII")


@stage("normalize", order=10, config=NormalizeConfig, help="NFC + indic-nlp-library + policies")
class Normalize(Stage):
    def process(self, record: Record) -> str | None:
        record["text"] = normalize_text(
            record["text"],
            record["lang"],
            self.config.digits,
            self.config.nukta,
            self.config.candrabindu,
            self.config.danda,
            self.config.punctuation,
        )
        return None

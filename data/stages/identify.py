"""identify: which script a record is written in and, where the source did not say, which language.

Scripts come from the Unicode ranges of the language table, counted per document and per line. A
script used by one language decides the language. For a shared script (Devanagari: hi, mr, ne, ...;
Bengali: bn, as) langid.py, which ships its model in the package, chooses among the languages it
knows (hi, mr, ne; bn, as; ur); a user with a GlotLID or IndicLID fastText model can name it
instead, and then it labels every record. Records also get two flags: ``romanized`` (Indic language
in Latin letters, "yeh bahut accha hai") and ``code_mixed`` (an Indic-script text with many
Latin-script words). A Latin-letter text declared Indic that reads like a legacy 8-bit font
(Krutidev/DevLys: "vkSj" for और, "gS" for है) is rejected with that reason: it is mojibake, not
romanization.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import pyarrow as pa
import regex

from indictune.core import languages, text
from indictune.core.recipe import field
from indictune.data.stages import Record, Stage, StageConfig, stage

# Krutidev 010 / DevLys 010 spellings of frequent Hindi words: है का के की में और से को कि यह था भी पर एक नहीं हैं इस लिए
KRUTIDEV_WORDS = frozenset("gS dk ds dh esa vkSj ls dks fd ;g Fkk Hkh ij ,d ugha gSa bl fy,".split())


def legacy_font_score(content: str) -> float:
    """Share of tokens that are Krutidev spellings of frequent Hindi words (0 below two such tokens)."""
    tokens = content.split()
    hits = sum(token in KRUTIDEV_WORDS for token in tokens)
    return hits / len(tokens) if hits >= 2 else 0.0


def romanized_score(tokens: list[str]) -> float:
    return sum(token.lower() in languages.ROMANIZED_HINDI for token in tokens) / len(tokens) if tokens else 0.0


_LATIN_WORD = regex.compile(r"(?<![\w\p{M}])[A-Za-z\u00c0-\u024f]")  # a word that starts with a Latin letter


@lru_cache(maxsize=None)
def _foreign_letter(scripts: tuple[str, ...]) -> "regex.Pattern":
    """A letter outside `scripts`: lines without one need no counting."""
    ranges = "".join(
        f"{regex.escape(chr(lo))}-{regex.escape(chr(hi))}" for s in scripts for lo, hi in languages.SCRIPTS[s].ranges
    )
    return regex.compile(f"[[\\p{{L}}\\p{{M}}]--[{ranges}]]", regex.V1)


@lru_cache(maxsize=None)
def _langid_for(codes: tuple[str, ...]):
    from langid.langid import LanguageIdentifier, model

    identifier = LanguageIdentifier.from_modelstring(model, norm_probs=True)
    identifier.set_languages(list(codes))
    return identifier


# Languages langid.py knows, per shared script.
LANGID_CODES = {"Deva": ("hi", "mr", "ne"), "Beng": ("bn", "as"), "Arab": ("ur",)}


def guess_language(content: str, script: str) -> tuple[str | None, float]:
    """(language, probability) for text in `script`; probability 1.0 where the script decides alone."""
    candidates = languages.languages_for_script(script)
    if not candidates:
        return None, 0.0
    codes = LANGID_CODES.get(script, ())
    if len(candidates) == 1 or len(codes) < 2:
        return candidates[0].code, 1.0
    code, probability = _langid_for(codes).classify(content)
    return code, float(probability)


@lru_cache(maxsize=4)
def _fasttext_model(path: str):
    try:
        import fasttext
    except ImportError as err:
        raise ImportError(
            f"identify.fasttext_model is set ({path}) but fasttext is not installed: pip install fasttext-wheel"
        ) from err
    return fasttext.load_model(path)


def fasttext_language(content: str, path: str) -> tuple[str | None, float]:
    # model.f.predict: fasttext's own predict() breaks on NumPy 2 (np.array(copy=False)).
    ((probability, label),) = _fasttext_model(path).f.predict(" ".join(content.split()) + "\n", 1, 0.0, "strict")
    try:
        return languages.get(label.removeprefix("__label__")).code, float(probability)
    except KeyError:  # a language outside the table (GlotLID knows 2000)
        return None, float(probability)


@dataclass
class IdentifyConfig(StageConfig):
    trust_declared: bool = field(
        True, help="keep a declared language when its script matches; false re-guesses shared-script languages"
    )
    fasttext_model: str | None = field(
        None, help="a GlotLID or IndicLID fastText .bin (labels like __label__hin_Deva); None: langid.py"
    )
    min_lang_score: float = field(
        0.0, minimum=0, maximum=1, help="reject a guessed language below this probability (FineWeb-2 hi: 0.69)"
    )
    romanized: Literal["keep", "drop"] = field("keep", help="keep or drop Indic text in Latin letters")
    min_romanized_score: float = field(
        0.12, minimum=0, maximum=1, help="share of romanized Hindi function words that flags a Latin text"
    )
    code_mixed_latin_words: float = field(
        0.15, minimum=0, maximum=1, help="share of Latin-script words from which an Indic text is code-mixed"
    )


@stage("identify", order=20, config=IdentifyConfig, help="script fractions, language, romanized")
class Identify(Stage):
    columns = {
        "script_fraction": pa.float32(),
        "off_script_lines": pa.float32(),
        "lang_score": pa.float32(),
        "romanized": pa.bool_(),
        "code_mixed": pa.bool_(),
    }

    def _guess(self, content: str, script: str) -> tuple[str | None, float]:
        if self.config.fasttext_model:
            return fasttext_language(content, self.config.fasttext_model)
        return guess_language(content, script)

    def process(self, record: Record) -> str | None:
        content = record["text"]
        counts = languages.script_counts(content)
        total = sum(counts.values())
        counts.pop(languages.UNKNOWN_SCRIPT, None)
        record.update(script_fraction=0.0, off_script_lines=0.0, lang_score=None, romanized=False, code_mixed=False)
        if not counts:
            return "no_letters"
        script = max(counts, key=counts.get)
        record["script"] = script
        declared = languages.get(record["lang"]) if record["lang"] else None
        tokens = text.words(content)
        if script == "Latn" and (declared is None or declared.is_indic):
            if declared is not None and legacy_font_score(content) >= 0.05:
                return "legacy_font:krutidev"
            if romanized_score(tokens) >= self.config.min_romanized_score:
                record["romanized"] = True
                record["lang"] = declared.code if declared else "hi"
                record["script_fraction"] = counts["Latn"] / total
                return "romanized" if self.config.romanized == "drop" else None
        if declared is not None and script not in declared.scripts:
            return f"script_mismatch:{script}"
        lang, score = declared.code if declared else None, 1.0
        if declared is None or (not self.config.trust_declared and len(languages.languages_for_script(script)) > 1):
            lang, score = self._guess(content, script)
            if lang is None:
                return "unsupported_language"
            if score < self.config.min_lang_score:
                record["lang_score"] = score
                return "low_lang_score"
        language = languages.get(lang)
        record["lang"], record["lang_score"] = lang, score
        record["script_fraction"] = sum(counts.get(s, 0) for s in language.scripts) / total
        if set(counts) - set(language.scripts):  # only a text with other scripts in it can have lines in them
            foreign = _foreign_letter(language.scripts)
            lines = text.nonempty_lines(content)
            record["off_script_lines"] = sum(
                foreign.search(line) is not None and languages.dominant_script(line) not in (*language.scripts, None)
                for line in lines
            ) / len(lines)
        if language.is_indic and script != "Latn" and tokens:
            latin = len(_LATIN_WORD.findall(content))
            record["code_mixed"] = latin / len(tokens) >= self.config.code_mixed_latin_words
        return None

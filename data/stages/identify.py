"""identify: which script a record is written in and, where the source did not say, which language.

Scripts come from the Unicode ranges of the language table. A script used by one language decides
the language; for a shared script (Devanagari: hi, mr, ne, sa, ...; Bengali: bn, as) the language
whose stop words the text uses most wins, and the script's default (hi, bn) breaks ties.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from data import languages, text
from data.recipe import field
from data.stages import Record, Stage


def guess_language(content: str, script: str) -> str | None:
    candidates = languages.languages_for_script(script)
    if not candidates:
        return None
    if len(candidates) == 1:
        return candidates[0].code
    tokens = text.words(content)
    hits = [sum(token in stopwords for token in tokens) for stopwords in (set(c.stopwords) for c in candidates)]
    return candidates[max(range(len(candidates)), key=lambda i: (hits[i], -i))].code


@dataclass
class IdentifyConfig:
    enabled: bool = True
    trust_declared: bool = field(
        True, help="keep a declared language when its script matches; false re-guesses shared-script languages"
    )


class Identify(Stage):
    name = "identify"
    columns = {"script_fraction": pa.float32()}

    def __init__(self, config: IdentifyConfig):
        self.config = config

    def process(self, record: Record) -> str | None:
        counts = languages.script_counts(record["text"])
        total = sum(counts.values())
        counts.pop(languages.UNKNOWN_SCRIPT, None)
        if not counts:
            record["script_fraction"] = 0.0
            return "no_letters"
        script = max(counts, key=counts.get)
        lang = record["lang"]
        if lang is not None and script not in languages.get(lang).scripts:
            record["script"] = script
            record["script_fraction"] = 0.0
            return f"script_mismatch:{script}"
        if lang is None or (not self.config.trust_declared and len(languages.languages_for_script(script)) > 1):
            lang = guess_language(record["text"], script)
        record["lang"] = lang
        record["script"] = script
        record["script_fraction"] = sum(counts.get(s, 0) for s in languages.get(lang).scripts) / total
        return None

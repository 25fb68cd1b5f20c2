"""dedup: exact duplicates, by a hash of the text after folding what does not change meaning.

The key folds compatibility forms (NFKC), case, zero-width joiners and whitespace, and keeps every
vowel sign, virama and nukta: stripping combining marks, as several dedup tools do for their keys,
makes different Indic words collide. The first record with a key is kept; later ones are dropped as
``duplicate_of:<id of the first>``.
"""

from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass

import pyarrow as pa

from data.stages import Record, Stage

_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"))


def dedup_key(text: str) -> str:
    folded = unicodedata.normalize("NFKC", text).casefold().translate(_ZERO_WIDTH)
    return hashlib.blake2b(" ".join(folded.split()).encode("utf-8"), digest_size=16).hexdigest()


@dataclass
class DedupConfig:
    enabled: bool = True


class ExactDedup(Stage):
    name = "dedup"
    columns = {"text_hash": pa.string()}

    def __init__(self, config: DedupConfig):
        self.config = config
        self.first_seen: dict[str, str] = {}

    def process(self, record: Record) -> str | None:
        key = record["text_hash"] = dedup_key(record["text"])
        first = self.first_seen.setdefault(key, record["id"])
        return None if first == record["id"] else f"duplicate_of:{first}"

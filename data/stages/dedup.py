"""Corpus-wide stages: lines repeated across a source's documents, exact duplicates, near duplicates.

Each of them must see the whole corpus before it can judge one record, so the pipeline runs them
after the per-record stages, in two steps over the surviving records: ``observe`` every record in
order, then ``process`` every record in the same order. The kept copy of a duplicate is always the
first in input order, so the result does not depend on how the work was split.

Keys come from ``text.comparison_key``: folded for spacing, case, digits and compatibility forms,
with every vowel sign, virama and nukta kept.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Container
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import xxhash

from indictune.core import text
from indictune.core.recipe import field
from indictune.data.stages import CorpusStage, Record, StageConfig, StageError, stage


@dataclass
class RepeatedLinesConfig(StageConfig):
    min_documents: int = field(
        10,
        minimum=2,
        help="a line found in this many documents of one source is boilerplate (menus, bylines, share buttons)",
    )
    min_line_chars: int = field(1, minimum=0, help="shorter lines are never counted or removed")
    kinds: list[Literal["web", "ocr", "asr"]] = field(
        default_factory=lambda: ["web"], help="record kinds it applies to"
    )
    min_words_left: int = field(5, minimum=0, help="reject a document left with fewer words: only_repeated_lines")


@stage("repeated_lines", order=80, config=RepeatedLinesConfig, help="lines repeated across many documents of a source")
class RepeatedLines(CorpusStage):
    columns = {"repeated_lines_removed": pa.int32()}

    def setup(self) -> None:
        self.kinds = tuple(self.config.kinds)
        self.documents_with: Counter[int] = Counter()

    def _keys(self, record: Record) -> list[int | None]:
        return [
            xxhash.xxh64_intdigest(f"{record['source']}\n{text.comparison_key(line)}".encode())
            if len(line.strip()) >= self.config.min_line_chars
            else None
            for line in record["text"].split("\n")
        ]

    def document_keys(self, record: Record) -> set[int]:
        """The keys of the record's distinct countable lines: what one document adds to each line's count."""
        return {key for key in self._keys(record) if key is not None}

    def observe(self, record: Record) -> None:
        self.documents_with.update(self.document_keys(record))

    def finish_observing(self) -> None:
        self.repeated = {key for key, count in self.documents_with.items() if count >= self.config.min_documents}
        self.documents_with = Counter()  # the repeated keys are all that judging needs

    def process(self, record: Record) -> str | None:
        return self.remove_lines(record, self.repeated)

    def remove_lines(self, record: Record, repeated: Container[int]) -> str | None:
        """``process`` given the keys of the lines found in at least ``min_documents`` documents (at least
        those of this record's lines; the Ray executor counts them without one process holding them all)."""
        lines = record["text"].split("\n")
        keep = [key not in repeated for key in self._keys(record)]
        record["repeated_lines_removed"] = keep.count(False)
        if all(keep):
            return None
        record["text"] = "\n".join(line for line, k in zip(lines, keep) if k).strip()
        if len(text.words(record["text"])) < self.config.min_words_left:
            return "only_repeated_lines"
        return None


def exact_key(folded: str) -> str:
    """A record's ``text_hash``, the key of exact duplicates: a 128-bit hash of ``text.comparison_key(text)``,
    computed from ``folded = text.key_words_text(text)``."""
    return xxhash.xxh3_128_hexdigest(" ".join(folded.split()).encode())


MAX_PERMUTATIONS = 1024  # each costs 4 bytes per record until the clusters are settled


@dataclass
class DedupConfig(StageConfig):
    exact: bool = field(True, help="drop records whose comparison key equals an earlier record's")
    near: bool = field(True, help="MinHash LSH near-duplicate clusters, one record kept per cluster")
    ngram: int = field(
        5, minimum=1, maximum=text.MAX_NGRAM, help="words per shingle (vowel signs and viramas stay inside words)"
    )
    num_perm: int = field(
        112, minimum=1, maximum=MAX_PERMUTATIONS, help="MinHash permutations; must equal bands x rows"
    )
    bands: int = field(
        14, minimum=1, help="LSH bands; rows = num_perm / bands; threshold about (1/bands)^(1/rows) (0.72)"
    )
    threshold: float = field(
        0.7, minimum=0, maximum=1, help="estimated Jaccard similarity a candidate pair must reach to be merged"
    )
    seed: int = field(1, minimum=0, help="seed of the permutations: signatures from different seeds do not compare")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_perm % self.bands:
            raise StageError(f"num_perm ({self.num_perm}) must be a multiple of bands ({self.bands})")


@stage("dedup", order=90, config=DedupConfig, help="exact and MinHash near duplicates")
class Dedup(CorpusStage):
    """Exact duplicates by a 128-bit hash of the comparison key; near duplicates by MinHash LSH.

    Each band of a signature that an earlier record already filled names a candidate; a candidate is
    merged when the signatures agree on at least ``threshold`` of their values, and clusters grow by
    union-find, so A~B and B~C put all three together. The earliest record of a cluster is kept; the
    others are rejected with ``duplicate_of`` naming it, and every record carries its cluster size
    (for FineWeb-2-style rehydration).
    """

    columns = {"text_hash": pa.string(), "duplicate_of": pa.string(), "cluster_size": pa.int32()}

    def setup(self) -> None:
        config = self.config
        self.rows = config.num_perm // config.bands
        rng = np.random.default_rng(config.seed)
        self.multipliers = rng.integers(1, 2**63, size=config.num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self.offsets = rng.integers(0, 2**63, size=config.num_perm, dtype=np.uint64)
        self.first_with_hash: dict[str, int] = {}
        self.buckets: list[dict[int, int]] = [{} for _ in range(config.bands)]
        self.signatures: list[np.ndarray] = []
        self.parent: list[int] = []
        self.observed = 0
        self.cursor = 0
        self.representative_ids: dict[int, str] = {}

    def signature(self, content: str, folded: str | None = None) -> np.ndarray:
        """MinHash signature: per permutation, the least of (a*x + b) mod 2^64, top 32 bits, over the shingles.
        `folded` is ``text.key_words_text(content)`` when the caller has it already."""
        folded = text.key_words_text(content) if folded is None else folded
        shingles = text.ngram_hashes(text.text_word_hashes(folded), self.config.ngram)
        least = np.full(self.config.num_perm, np.iinfo(np.uint64).max, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for start in range(0, len(shingles), 4096):  # bounded memory for book-length texts
                block = shingles[start : start + 4096, None] * self.multipliers
                block += self.offsets
                np.minimum(least, block.min(axis=0), out=least)
        return (least >> np.uint64(32)).astype(np.uint32)  # the top bits' minimum is the minimum's top bits

    def band_keys(self, signature: np.ndarray) -> list[int]:
        """One LSH bucket key per band: records sharing any one are candidates."""
        return [
            xxhash.xxh64_intdigest(signature[start : start + self.rows].tobytes())
            for start in range(0, len(signature), self.rows)
        ]

    def similar(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Whether candidates are merged: signatures agreeing on at least ``threshold`` of their values (row by
        row for matrices)."""
        return np.count_nonzero(a == b, axis=-1) >= self.config.threshold * self.config.num_perm

    def _root(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def _union(self, a: int, b: int) -> None:
        ra, rb = self._root(a), self._root(b)
        if ra != rb:  # the earlier record is the root: it is the one kept
            self.parent[max(ra, rb)] = min(ra, rb)

    def observe(self, record: Record) -> None:
        index = self.observed
        self.observed += 1
        self.parent.append(index)
        folded = text.key_words_text(record["text"])
        key = exact_key(folded)
        if self.config.exact:
            first = self.first_with_hash.setdefault(key, index)
            if first != index:
                self._union(first, index)
                self.signatures.append(self.signatures[first])
                return
        if not self.config.near:
            self.signatures.append(np.zeros(0, dtype=np.uint32))
            return
        signature = self.signature(record["text"], folded)
        self.signatures.append(signature)
        for bucket, band_key in zip(self.buckets, self.band_keys(signature)):
            other = bucket.setdefault(band_key, index)
            if other != index and self._root(other) != self._root(index):
                if self.similar(self.signatures[other], signature):
                    self._union(other, index)

    def finish_observing(self) -> None:
        roots = np.array([self._root(i) for i in range(self.observed)], dtype=np.int64)
        self.roots = roots
        self.cluster_sizes = np.bincount(roots, minlength=self.observed)
        self.signatures = []  # the clusters are settled; free the memory
        self.buckets = []

    def process(self, record: Record) -> str | None:
        index = self.cursor
        self.cursor += 1
        key = exact_key(text.key_words_text(record["text"]))
        root = int(self.roots[index])
        cluster_size = int(self.cluster_sizes[root])
        if root == index:
            if cluster_size > 1:
                self.representative_ids[index] = record["id"]
            return self.mark(record, key, cluster_size)
        exact = self.config.exact and self.first_with_hash[key] != index
        return self.mark(record, key, cluster_size, self.representative_ids[root], exact)

    @staticmethod
    def mark(
        record: Record, key: str, cluster_size: int, duplicate_of: str | None = None, exact: bool = False
    ) -> str | None:
        """Fill the record's columns from its cluster (`duplicate_of`: the id of the record kept, None for that
        one) and return the reason it is dropped; `exact` when an earlier record has its `key`."""
        record["text_hash"] = key
        record["cluster_size"] = cluster_size
        if duplicate_of is None:
            return None
        record["duplicate_of"] = duplicate_of
        return "exact_duplicate" if exact else "near_duplicate"

"""asr: clean speech transcripts (records of kind ``asr``; one text line per segment).

Drops segments the recogniser itself scored as unreliable (Whisper's ``avg_logprob`` and
``no_speech_prob``), removes event tags, speaker labels and the language's fillers, collapses
stutters and repetition loops (a phrase said three or more times in a row, as in a "धन्यवाद" loop on
silent audio), and merges the segments into paragraphs at pauses. Loops are found on words, and
repetitive segments by a compression ratio taken on script-folded text (one byte per code point):
on UTF-8 bytes ordinary Hindi already scores about 2.6, above Whisper's 2.4 hallucination threshold,
so Whisper's own ``compression_ratio`` is not used. Where timings exist, a segment with implausibly
many or few characters per second of audio is dropped.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Literal

import pyarrow as pa
import regex

from indictune.core import languages
from indictune.core.recipe import field
from indictune.data.stages import Record, Stage, StageConfig, StageError, stage

_TAG = regex.compile(
    r"\[[^\]\n]{1,40}\]|<[^>\n]{1,20}>|\((?:laughter|laughs|applause|music|noise|inaudible|cough|silence|"
    r"हंसी|हँसी|तालियाँ|संगीत|சிரிப்பு|இசை|হাসি|সঙ্গীত|నవ్వు|సంగీతం)\)",
    regex.IGNORECASE,
)
# ">>", "SPEAKER_01:", or a one- or two-word name, maybe numbered ("वक्ता 2:"), and a colon opening a segment
# that goes on after it (a segment that is only "name:" is speech ending in a colon).
_SPEAKER = regex.compile(r"^\s*(?:>>|(?:SPEAKER_\d+|[\p{L}\p{M}]+(?: [\p{L}\p{M}]+)?(?: ?\d+)?)\s*:)\s*(?=\S)")


_PUNCTUATION = regex.compile(r"\p{P}+")


def collapse_loops(words: list[str], min_repeats: int = 3, max_ngram: int = 8) -> tuple[list[str], int]:
    """Replace any k-gram repeated `min_repeats`+ times in a row with one copy; return words, words removed."""
    out: list[str] = []
    removed = 0
    i = 0
    while i < len(words):
        for k in range(1, min(max_ngram, (len(words) - i) // min_repeats) + 1):
            gram = words[i : i + k]
            repeats = 1
            while words[i + repeats * k : i + (repeats + 1) * k] == gram:
                repeats += 1
            if repeats >= min_repeats:
                out.extend(gram)
                removed += (repeats - 1) * k
                i += repeats * k
                break
        else:
            out.append(words[i])
            i += 1
    return out, removed


def folded_compression_ratio(content: str) -> float:
    """zlib compression ratio of `content` with every code point folded to one byte (the low 7 bits of
    its code point, high bit set outside ASCII): comparable across scripts, unlike UTF-8 bytes."""
    folded = bytes((cp & 0x7F) | 0x80 if cp > 0x7F else cp for cp in map(ord, content))
    return len(folded) / len(zlib.compress(folded)) if folded else 0.0


@dataclass
class AsrConfig(StageConfig):
    min_avg_logprob: float = field(
        -1.0, maximum=0, help="drop a segment scored below this (Whisper's logprob_threshold)"
    )
    max_no_speech_prob: float = field(0.6, minimum=0, maximum=1, help="drop a segment more likely silence than speech")
    paragraph_pause: float = field(
        2.0, minimum=0, help="seconds of silence between segments that start a new paragraph"
    )
    max_loop_fraction: float = field(
        0.5, minimum=0, maximum=1, help="drop a transcript when loops make up more of its words than this"
    )
    max_compression_ratio: float = field(
        2.4, minimum=0, help="drop a paragraph of 60+ characters whose script-folded compression ratio is above this"
    )
    punctuation: Literal["keep", "strip"] = field("keep", help="strip for ASR-style references (no punctuation)")
    chars_per_second: list[float] = field(
        default_factory=lambda: [1.0, 30.0],
        minimum=0,
        help="[min, max] characters per second where a segment has timings",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.chars_per_second) != 2 or self.chars_per_second[0] > self.chars_per_second[1]:
            raise StageError(f"chars_per_second must be [min, max] with min <= max, got {self.chars_per_second}")


@stage("asr", order=40, config=AsrConfig, help="timestamps, tags, fillers, loops (kind: asr)")
class Asr(Stage):
    kinds = ("asr",)
    columns = {
        "asr_segments_dropped": pa.int32(),
        "asr_tags_removed": pa.int32(),
        "asr_fillers_removed": pa.int32(),
        "asr_loop_words_removed": pa.int32(),
        "asr_compression_ratio": pa.float32(),
    }

    def _unreliable(self, segment: dict) -> bool:
        return segment.get("avg_logprob", 0.0) < self.config.min_avg_logprob or (
            segment.get("no_speech_prob", 0.0) > self.config.max_no_speech_prob
        )

    def _implausible(self, line: str, segment: dict) -> bool:
        """Too fast or too slow for its audio."""
        chars = len("".join(line.split()))
        duration = (segment.get("end") or 0.0) - (segment.get("start") or 0.0)
        if duration > 0 and chars:
            low, high = self.config.chars_per_second
            return not low <= chars / duration <= high
        return False

    def process(self, record: Record) -> str | None:
        fillers = set(languages.get(record["lang"]).fillers) if record["lang"] else set()
        lines = record["text"].split("\n")
        segments = record["meta"].get("segments") or [{} for _ in lines]
        if len(segments) != len(lines):  # text edited before this stage: judge lines without scores
            segments = [{} for _ in lines]
        counts = dict.fromkeys(self.columns, 0)
        cleaned: list[tuple[list[str], dict]] = []
        for line, segment in zip(lines, segments):
            if self._unreliable(segment):
                counts["asr_segments_dropped"] += 1
                continue
            line, tags = _TAG.subn(" ", _SPEAKER.sub("", line))
            counts["asr_tags_removed"] += tags
            if self._implausible(line, segment):
                counts["asr_segments_dropped"] += 1
                continue
            if self.config.punctuation == "strip":
                line = _PUNCTUATION.sub("", line)
            words = line.split()
            kept = [w for w in words if w.strip(".,!?।") not in fillers]
            counts["asr_fillers_removed"] += len(words) - len(kept)
            if kept:
                cleaned.append((kept, segment))
        total_words = sum(len(words) for words, _ in cleaned) or 1
        paragraphs: list[list[str]] = []
        previous_end = None
        for words, segment in cleaned:
            pause = (
                segment.get("start") is not None
                and previous_end is not None
                and (segment["start"] - previous_end >= self.config.paragraph_pause)
            )
            if not paragraphs or pause:
                paragraphs.append([])
            paragraphs[-1].extend(words)
            previous_end = segment.get("end", previous_end)
        texts = []
        for words in paragraphs:  # loops often span segments ("धन्यवाद।" as ten segments)
            words, removed = collapse_loops(words)
            counts["asr_loop_words_removed"] += removed
            paragraph = " ".join(words)
            # what exact repeats miss ("धन्यवाद। धन्यवाद, धन्यवाद!") still compresses far better than speech
            if len(paragraph) >= 60 and folded_compression_ratio(paragraph) > self.config.max_compression_ratio:
                counts["asr_loop_words_removed"] += len(words)
                continue
            texts.append(paragraph)
        counts.pop("asr_compression_ratio")
        record.update(counts)
        record["text"] = "\n\n".join(texts)
        record["asr_compression_ratio"] = folded_compression_ratio(record["text"])
        if counts["asr_loop_words_removed"] / total_words > self.config.max_loop_fraction:
            return "asr_repetition_loop"
        if not record["text"].strip():
            return "asr_empty"
        return None

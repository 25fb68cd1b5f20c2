"""Speech transcripts: SRT, WebVTT, Whisper JSON, JSONL manifests and Kaldi ``text`` files.

A subtitle or Whisper file becomes one record whose text holds one line per segment; ``meta.segments``
keeps each line's timing and, for Whisper, its scores, so the ASR stage can judge segments one by one.
Timestamps, cue numbers and subtitle markup are format, not text, and are left out here; transcript
tags such as ``[noise]`` or ``<unk>`` are text the ASR stage removes and counts. Like every text format, files may be
gzip/zstd/bzip2/xz compressed and UTF-8, UTF-16 or UTF-32 (see the package docstring); manifests and Kaldi files
are read line by line, subtitle and Whisper files whole.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from indictune.data.readers import Source, json_lines, make_record, read_text_file, reader, text_lines

_TIMING = re.compile(r"(?P<start>[\d:.,]+)\s*-->\s*(?P<end>[\d:.,]+)")
_MARKUP = re.compile(r"</?(?:i|b|u|c|v|lang|ruby|rt)(?:[.\s][^>]*)?>|<\d{1,2}:[\d:.]+>|\{\\[^}]*\}")


def _seconds(stamp: str) -> float | None:
    parts = stamp.replace(",", ".").split(":")
    try:
        return sum(float(p) * 60**i for i, p in enumerate(reversed(parts)))
    except ValueError:
        return None


@reader("srt", "vtt")
def read_subtitles(source: Source, path: Path) -> Iterator[dict[str, Any]]:
    text = read_text_file(path)
    lines, segments = [], []
    for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n").lstrip("\ufeff")):
        block_lines = block.strip().split("\n")
        timing_at = next((i for i, line in enumerate(block_lines) if _TIMING.search(line)), None)
        if timing_at is None:  # the WEBVTT header, NOTE and STYLE blocks, stray text
            continue
        timing = _TIMING.search(block_lines[timing_at])
        cue = " ".join(_MARKUP.sub("", line).strip() for line in block_lines[timing_at + 1 :]).strip()
        if cue:
            lines.append(cue)
            segments.append({"start": _seconds(timing["start"]), "end": _seconds(timing["end"])})
    if not lines:
        yield make_record(source, path, 0, "", read_error="no_cues")
        return
    yield make_record(source, path, 0, "\n".join(lines), segments=segments)


@reader("whisper_json")
def read_whisper_json(source: Source, path: Path) -> Iterator[dict[str, Any]]:
    """openai-whisper's ``result`` dict (``segments``, ``language``), or a bare list of segments."""
    raw = read_text_file(path)
    try:
        result = json.loads(raw)
    except json.JSONDecodeError as err:
        yield make_record(source, path, 0, "", read_error=f"invalid_json:{err.msg}")
        return
    segments = result.get("segments") if isinstance(result, dict) else result
    if not isinstance(segments, list) or not all(isinstance(s, dict) and "text" in s for s in segments):
        yield make_record(source, path, 0, "", read_error="no_segments")
        return
    lines, kept = [], []
    scores = ("start", "end", "avg_logprob", "no_speech_prob", "compression_ratio")
    for segment in segments:
        line = " ".join(str(segment["text"]).split())
        if line:
            lines.append(line)
            kept.append({k: segment[k] for k in scores if k in segment})
    lang = result.get("language") if isinstance(result, dict) else None
    yield make_record(source, path, 0, "\n".join(lines), lang=lang, segments=kept)


@reader("kaldi")
def read_kaldi_text(source: Source, path: Path) -> Iterator[dict[str, Any]]:
    """Kaldi ``text``: ``<utterance-id> <transcript>`` per line (space or tab), one record per utterance."""

    def utterance(position: int, where: str, line: str) -> dict[str, Any]:
        name, _, transcript = line.strip().replace("\t", " ", 1).partition(" ")
        error = None if transcript.strip() else "empty_transcript"
        return make_record(source, path, position, transcript.strip(), read_error=error, where=where, utterance=name)

    return text_lines(source, path, utterance)


@reader("asr_manifest")
def read_asr_manifest(source: Source, path: Path) -> Iterator[dict[str, Any]]:
    """NeMo-style JSON lines: ``audio_filepath``, ``text`` (or ``source.text_field``), ``duration`` in seconds."""

    def utterance(position: int, where: str, row: dict) -> dict[str, Any]:
        if not isinstance(row.get(source.text_field), str):
            return make_record(
                source,
                path,
                position,
                json.dumps(row, ensure_ascii=False),
                read_error=f"missing_field:{source.text_field}",
                where=where,
            )
        duration = row.get("duration")
        segment = {"start": 0.0, "end": float(duration)} if isinstance(duration, (int, float)) else {}
        return make_record(
            source,
            path,
            position,
            " ".join(row[source.text_field].split()),
            lang=row.get("lang"),
            where=where,
            audio_filepath=row.get("audio_filepath"),
            segments=[segment],
        )

    return json_lines(source, path, utterance)

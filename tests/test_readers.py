"""Readers: every format becomes records of the common schema; unreadable input becomes a counted reject."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data.readers import Source, read


def records(tmp_path, name, content, **source):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return list(read(Source(path=str(path), **source)))


def test_record_schema_and_stable_ids(tmp_path):
    out = records(tmp_path, "a.jsonl", '{"text": "नमस्ते दुनिया", "url": "u"}\n\n{"text": "दूसरा"}\n', format="jsonl",
                  lang="hi")
    assert [r["id"] for r in out] == [f"{tmp_path}/a.jsonl#0", f"{tmp_path}/a.jsonl#1"]
    assert set(out[0]) == {"id", "text", "lang", "script", "source", "kind", "meta"}
    assert out[0]["lang"] == "hi" and out[0]["kind"] == "web" and out[0]["meta"]["fields"] == {"url": "u"}
    assert out[0]["meta"]["where"] == "line 1" and out[1]["meta"]["where"] == "line 3"


def test_jsonl_bad_lines_are_read_errors_not_crashes(tmp_path):
    content = b'{"text": "ok"}\n{"text": "broken\n{"url": "no text"}\n[1, 2]\n\xff\xfe bad bytes\n{"text": 5}\n'
    out = records(tmp_path, "b.jsonl", content, format="jsonl")
    errors = [r.get("read_error", "") for r in out]
    assert errors[0] == ""
    assert errors[1].startswith("invalid_json:")
    assert errors[2:] == ["missing_field:text", "not_an_object", "invalid_utf8", "not_text:text"]


def test_language_per_record_and_unknown_codes(tmp_path):
    out = records(tmp_path, "c.jsonl", '{"text": "a", "l": "mar_Deva"}\n{"text": "b", "l": "xx"}\n', format="jsonl",
                  lang_field="l")
    assert out[0]["lang"] == "mr"
    assert out[1]["read_error"] == "unknown_lang:xx"


def test_parquet_and_csv(tmp_path):
    pq.write_table(pa.table({"body": ["পাঠ্য এক", "পাঠ্য দুই"], "label": ["x", "y"]}), tmp_path / "d.parquet")
    out = list(read(Source(path=str(tmp_path / "d.parquet"), format="parquet", text_field="body", lang="bn")))
    assert [r["text"] for r in out] == ["পাঠ্য এক", "পাঠ্য দুই"] and out[1]["meta"]["fields"] == {"label": "y"}
    out = records(tmp_path, "e.tsv", "label\tText\nsport\t\"quoted\"\tmore\nnews\tline\n", format="tsv", text_field="Text")
    assert [r["text"] for r in out] == ["quoted", "line"]
    with pytest.raises(ValueError, match="has no column 'text'.*columns: label, Text.*set text_field"):
        records(tmp_path, "f.csv", "label,Text\nx,y\n", format="csv")


def test_plain_text_units(tmp_path):
    content = "पहला अनुच्छेद\nदूसरी पंक्ति\n\n\nदूसरा अनुच्छेद\n"
    assert len(records(tmp_path, "g.txt", content, format="txt")) == 1
    assert [r["text"] for r in records(tmp_path, "g.txt", content, format="txt", unit="paragraph")] == [
        "पहला अनुच्छेद\nदूसरी पंक्ति", "दूसरा अनुच्छेद"]
    assert len(records(tmp_path, "g.txt", content, format="txt", unit="line")) == 3


def test_globs_directories_limits_and_missing_paths(tmp_path):
    for i in range(3):
        (tmp_path / f"p{i}.txt").write_text(f"text {i}")
    assert len(list(read(Source(path=str(tmp_path / "p*.txt"), format="txt")))) == 3
    assert len(list(read(Source(path=str(tmp_path), format="txt", limit=2)))) == 2
    with pytest.raises(FileNotFoundError, match="no file matches"):
        list(read(Source(path=str(tmp_path / "nothing*.jsonl"), format="jsonl")))


def test_ocr_pages_form_a_book(tmp_path):
    out = records(tmp_path, "book.txt", "page one\fpage two\fpage three\f", format="pages", kind="ocr")
    assert [r["text"] for r in out] == ["page one", "page two", "page three"]
    assert {r["meta"]["book"] for r in out} == {f"{tmp_path}/book.txt"} and out[2]["meta"]["page"] == 3


def test_srt_and_vtt_drop_cue_numbers_timing_and_markup(tmp_path):
    srt = "1\n00:00:01,000 --> 00:00:02,500\nपहली <i>पंक्ति</i>\nजारी\n\n2\n00:00:03,000 --> 00:00:04,000\n[संगीत]\n"
    out = records(tmp_path, "a.srt", srt, format="srt", kind="asr")
    assert out[0]["text"] == "पहली पंक्ति जारी\n[संगीत]"  # tags are text: the ASR stage removes and counts them
    assert out[0]["meta"]["segments"] == [{"start": 1.0, "end": 2.5}, {"start": 3.0, "end": 4.0}]
    vtt = "WEBVTT\n\nNOTE a comment\n\ncue-1\n00:01.000 --> 00:02.000\n<v Asha>नमस्ते\n"
    assert records(tmp_path, "a.vtt", vtt, format="vtt")[0]["text"] == "नमस्ते"
    assert records(tmp_path, "empty.srt", "WEBVTT\n", format="srt")[0]["read_error"] == "no_cues"


def test_whisper_json_keeps_segment_scores(tmp_path):
    result = {"language": "hindi", "segments": [
        {"start": 0, "end": 1, "text": " एक ", "avg_logprob": -0.2, "no_speech_prob": 0.1, "tokens": [1]},
        {"start": 1, "end": 2, "text": "  ", "avg_logprob": -0.2},
    ]}
    out = records(tmp_path, "w.json", json.dumps(result), format="whisper_json", kind="asr")
    assert out[0]["text"] == "एक" and out[0]["lang"] == "hi"
    assert out[0]["meta"]["segments"] == [{"start": 0, "end": 1, "avg_logprob": -0.2, "no_speech_prob": 0.1}]
    assert records(tmp_path, "bad.json", "{not json", format="whisper_json")[0]["read_error"].startswith("invalid_json")
    assert records(tmp_path, "odd.json", '{"x": 1}', format="whisper_json")[0]["read_error"] == "no_segments"


def test_kaldi_text(tmp_path):
    out = records(tmp_path, "text", "utt_1 வணக்கம் நண்பர்களே\nutt_2\n", format="kaldi", kind="asr", lang="ta")
    assert out[0]["text"] == "வணக்கம் நண்பர்களே" and out[0]["meta"]["utterance"] == "utt_1"
    assert out[1]["read_error"] == "empty_transcript"

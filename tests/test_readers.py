"""Readers: every format becomes records of the common schema; unreadable input becomes a counted reject."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from indictune.data.readers import Source, SourceError, read


def records(tmp_path, name, content, **source):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return list(read(Source(path=str(path), **source)))


def test_record_schema_and_stable_ids(tmp_path):
    out = records(
        tmp_path, "a.jsonl", '{"text": "नमस्ते दुनिया", "url": "u"}\n\n{"text": "दूसरा"}\n', format="jsonl", lang="hi"
    )
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
    out = records(
        tmp_path,
        "c.jsonl",
        '{"text": "a", "l": "mar_Deva"}\n{"text": "b", "l": "xx"}\n',
        format="jsonl",
        lang_field="l",
    )
    assert out[0]["lang"] == "mr"
    assert out[1]["read_error"] == "unknown_lang:xx"


def test_parquet_and_csv(tmp_path):
    pq.write_table(pa.table({"body": ["পাঠ্য এক", "পাঠ্য দুই"], "label": ["x", "y"]}), tmp_path / "d.parquet")
    out = list(read(Source(path=str(tmp_path / "d.parquet"), format="parquet", text_field="body", lang="bn")))
    assert [r["text"] for r in out] == ["পাঠ্য এক", "পাঠ্য দুই"] and out[1]["meta"]["fields"] == {"label": "y"}
    out = records(
        tmp_path, "e.tsv", 'label\tText\nsport\t"quoted"\tmore\nnews\tline\n', format="tsv", text_field="Text"
    )
    assert [r["text"] for r in out] == ["quoted", "line"]
    with pytest.raises(ValueError, match="has no column 'text'.*columns: label, Text.*set text_field"):
        records(tmp_path, "f.csv", "label,Text\nx,y\n", format="csv")


def test_plain_text_units(tmp_path):
    content = "पहला अनुच्छेद\nदूसरी पंक्ति\n\n\nदूसरा अनुच्छेद\n"
    assert len(records(tmp_path, "g.txt", content, format="txt")) == 1
    assert [r["text"] for r in records(tmp_path, "g.txt", content, format="txt", unit="paragraph")] == [
        "पहला अनुच्छेद\nदूसरी पंक्ति",
        "दूसरा अनुच्छेद",
    ]
    assert len(records(tmp_path, "g.txt", content, format="txt", unit="line")) == 3


def test_globs_directories_limits_and_missing_paths(tmp_path):
    for i in range(3):
        (tmp_path / f"p{i}.txt").write_text(f"text {i}")
    assert len(list(read(Source(path=str(tmp_path / "p*.txt"), format="txt")))) == 3
    assert len(list(read(Source(path=str(tmp_path), format="txt", limit=2)))) == 2
    with pytest.raises(SourceError, match="matched nothing"):
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
    result = {
        "language": "hindi",
        "segments": [
            {"start": 0, "end": 1, "text": " एक ", "avg_logprob": -0.2, "no_speech_prob": 0.1, "tokens": [1]},
            {"start": 1, "end": 2, "text": "  ", "avg_logprob": -0.2},
        ],
    }
    out = records(tmp_path, "w.json", json.dumps(result), format="whisper_json", kind="asr")
    assert out[0]["text"] == "एक" and out[0]["lang"] == "hi"
    assert out[0]["meta"]["segments"] == [{"start": 0, "end": 1, "avg_logprob": -0.2, "no_speech_prob": 0.1}]
    assert records(tmp_path, "bad.json", "{not json", format="whisper_json")[0]["read_error"].startswith("invalid_json")
    assert records(tmp_path, "odd.json", '{"x": 1}', format="whisper_json")[0]["read_error"] == "no_segments"


def test_kaldi_text(tmp_path):
    out = records(tmp_path, "text", "utt_1 வணக்கம் நண்பர்களே\nutt_2\n", format="kaldi", kind="asr", lang="ta")
    assert out[0]["text"] == "வணக்கம் நண்பர்களே" and out[0]["meta"]["utterance"] == "utt_1"
    assert out[1]["read_error"] == "empty_transcript"


# the bad-input matrix: each is a clear error or a counted reject, never a traceback or a silent loss ------------------


@pytest.mark.parametrize(
    "content, expected",
    [
        ('\ufeff{"text": "बीओएम वाली फ़ाइल"}\n'.encode("utf-8"), "बीओएम वाली फ़ाइल"),
        ('{"text": "यूटीएफ़-16 फ़ाइल"}\n'.encode("utf-16"), "यूटीएफ़-16 फ़ाइल"),
    ],
)
def test_byte_order_marks_and_utf16_are_decoded(tmp_path, content, expected):
    (out,) = records(tmp_path, "bom.jsonl", content, format="jsonl")
    assert out["text"] == expected and "read_error" not in out


@pytest.mark.parametrize(
    "fmt, name",
    [("jsonl", "x.jsonl"), ("txt", "x.txt"), ("kaldi", "text"), ("srt", "x.srt"), ("pages", "x.txt"), ("csv", "x.csv")],
)
def test_empty_and_binary_files_are_counted_rejects(tmp_path, fmt, name):
    assert [r["read_error"] for r in records(tmp_path, name, b"", format=fmt)] == ["empty_file"]
    binary = bytes(range(256)) * 8
    assert [r["read_error"] for r in records(tmp_path, name, binary, format=fmt)] == ["binary_file"]


@pytest.mark.parametrize(
    "fmt, meta",
    [
        ("csv", {"where": "file"}),
        ("txt", {"where": "file"}),
        ("srt", {}),
        ("whisper_json", {}),
        ("pages", "book"),
        ("tesseract_tsv", "book"),
        ("hocr", "book"),
    ],
)
def test_a_whole_file_that_is_not_utf8_is_one_reject(tmp_path, fmt, meta):
    (out,) = records(tmp_path, "x", "café\n".encode("latin-1"), format=fmt)
    meta = {"book": f"{tmp_path}/x", "page": 1} if meta == "book" else meta  # page 1 of its book
    assert (out["id"], out["text"], out["read_error"], out["meta"]) == (f"{tmp_path}/x#0", "", "invalid_utf8", meta)


@pytest.mark.parametrize(
    "fmt, line, unit",
    [
        ("jsonl", '{"text": "ठीक"}', "file"),
        ("asr_manifest", '{"text": "ठीक"}', "file"),
        ("kaldi", "utt ठीक", "file"),
        ("txt", "ठीक", "line"),
    ],
)
def test_a_line_that_is_not_utf8_is_one_reject_and_the_next_lines_are_read(tmp_path, fmt, line, unit):
    out = records(
        tmp_path, "x", f"{line}\n".encode() + "café\n".encode("latin-1") + f"{line}\n".encode(), format=fmt, unit=unit
    )
    assert [(r.get("read_error"), r["text"], r["meta"]["where"]) for r in out] == [
        (None, "ठीक", "line 1"),
        ("invalid_utf8", "", "line 2"),
        (None, "ठीक", "line 3"),
    ]


def test_a_50_mb_single_line_document_is_rejected_as_too_long(tmp_path):
    line = json.dumps({"text": "क" * 20_000_000}, ensure_ascii=False)  # 60 MB of UTF-8 on one line
    (out,) = records(tmp_path, "huge.jsonl", line + "\n", format="jsonl")
    assert out["read_error"] == "too_long:20000000_chars" and len(out["text"]) == 1000


def test_a_missing_text_column_names_the_file_and_the_fix(tmp_path):
    with pytest.raises(ValueError, match=r"x\.csv has no column 'body'.*set text_field"):
        records(tmp_path, "x.csv", "text,lang\nनमस्ते,hi\n", format="csv", text_field="body")


# more formats ------------------------------------------------------------------------------------------------------

WIKI = """<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/">
  <page><title>भारत</title><ns>0</ns><id>1</id><revision><text xml:space="preserve">{{ज्ञानचौकट|नाम=भारत}}
'''भारत''' दक्षिण [[एशिया]] का एक [[देश|राष्ट्र]] है।&lt;ref&gt;स्रोत&lt;/ref&gt;
== इतिहास ==
यहाँ की सभ्यता बहुत पुरानी है।
[[चित्र:Flag.png|thumb|झंडा]]
[[वर्ग:देश]]</text></revision></page>
  <page><title>इंडिया</title><ns>0</ns><id>2</id><redirect title="भारत" /><revision><text>#REDIRECT [[भारत]]</text></revision></page>
  <page><title>साँचा:ज्ञानचौकट</title><ns>10</ns><id>3</id><revision><text>{{{नाम}}}</text></revision></page>
  <page><title>कटा हुआ</title><ns>0</ns><id>4</id><revision><text>यह पन्ना बीच में"""


@pytest.mark.parametrize("suffix", ["xml", "xml.bz2", "xml.xz"])
def test_mediawiki_dump_strips_markup_skips_redirects_and_survives_truncation(tmp_path, suffix):
    import bz2
    import lzma

    raw = WIKI.encode("utf-8")
    packed = {"xml": raw, "xml.bz2": bz2.compress(raw), "xml.xz": lzma.compress(raw)}[suffix]
    out = records(tmp_path, f"dump.{suffix}", packed, format="mediawiki", lang="hi")
    assert [r.get("read_error") for r in out] == [None, "redirect", "namespace:10", "truncated_dump"]
    assert out[0]["text"] == "भारत दक्षिण एशिया का एक राष्ट्र है।\nइतिहास\nयहाँ की सभ्यता बहुत पुरानी है।"
    assert out[0]["meta"] == {"title": "भारत", "page_id": "1"}


def test_hugging_face_dataset_saved_to_disk(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"text": ["पहला", "दूसरा"], "lang": ["hi", "mr"]}).save_to_disk(tmp_path / "ds")
    out = list(read(Source(path=str(tmp_path / "ds"), format="hf", lang_field="lang")))
    assert [(r["text"], r["lang"]) for r in out] == [("पहला", "hi"), ("दूसरा", "mr")]
    with pytest.raises(ValueError, match="no split 'test'"):
        datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["x"]})}).save_to_disk(tmp_path / "dd")
        list(read(Source(path=str(tmp_path / "dd"), format="hf", split="test")))


TESSERACT_TSV = "\t".join("level page_num block_num par_num line_num word_num left top width height conf text".split())
TESSERACT_ROWS = [
    (1, 1, 0, 0, 0, 0, -1, ""),
    (5, 1, 1, 1, 1, 1, 91.5, "गाँव"),
    (5, 1, 1, 1, 1, 2, 88.0, "की"),
    (5, 1, 1, 1, 2, 1, 95.0, "कहानी"),
    (5, 1, 2, 1, 1, 1, 40.5, "नया"),
    (5, 2, 1, 1, 1, 1, 20.0, "धुँधला"),
]


def test_tesseract_tsv_pages_lines_paragraphs_and_confidence(tmp_path):
    rows = [TESSERACT_TSV] + [
        "\t".join(map(str, (lv, pg, b, p, ln, w, 0, 0, 10, 10, conf, t)))
        for lv, pg, b, p, ln, w, conf, t in TESSERACT_ROWS
    ]
    out = records(tmp_path, "book.tsv", "\n".join(rows) + "\n", format="tesseract_tsv", kind="ocr", lang="hi")
    assert [r["text"] for r in out] == ["गाँव की\nकहानी\n\nनया", "धुँधला"]
    assert [r["meta"]["mean_confidence"] for r in out] == [78.75, 20.0]
    assert out[0]["meta"]["book"] == out[1]["meta"]["book"] and [r["meta"]["page"] for r in out] == [1, 2]


def test_hocr_words_lines_and_confidence(tmp_path):
    hocr = """<html><body><div class='ocr_page' title='bbox 0 0 100 100'>
      <p class='ocr_par'><span class='ocr_line'><span class='ocrx_word' title='bbox 0 0 1 1; x_wconf 90'>நல்ல</span>
      <span class='ocrx_word' title='bbox 1 1 2 2; x_wconf 80'>நாள்</span></span></p>
      <p class='ocr_par'><span class='ocr_line'><span class='ocrx_word' title='x_wconf 70'>&amp;</span></span></p>
    </div></body></html>"""
    (out,) = records(tmp_path, "page.hocr", hocr, format="hocr", kind="ocr", lang="ta")
    assert out["text"] == "நல்ல நாள்\n\n&" and out["meta"]["mean_confidence"] == 80.0


def test_asr_manifest_keeps_duration_as_timing(tmp_path):
    lines = ['{"audio_filepath": "a.wav", "text": "வணக்கம்  நண்பர்களே", "duration": 2.5}', '{"audio_filepath": "b.wav"}']
    out = records(tmp_path, "manifest.jsonl", "\n".join(lines), format="asr_manifest", kind="asr", lang="ta")
    assert out[0]["text"] == "வணக்கம் நண்பர்களே" and out[0]["meta"]["segments"] == [{"start": 0.0, "end": 2.5}]
    assert out[0]["meta"]["audio_filepath"] == "a.wav" and out[1]["read_error"] == "missing_field:text"

"""The readers' bad-input matrix, part two: files as real corpora ship them (compressed, UTF-16/32, sharded
Parquet folders) and as hostile users write them. Each case is a counted reject with a reason or a SourceError
that names the source, the file and the fix; never a traceback, a lost row, merged rows or an invented one."""

from __future__ import annotations

import bz2
import datetime
import decimal
import gzip
import json
import lzma
import os
import subprocess
import sys
import zipfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from indictune.core import recipe
from indictune.data import readers
from indictune.data.readers import Source, SourceError, read


def records(tmp_path, name, content, **source):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return list(read(Source(path=str(path), **source)))


def errors(out):
    return [r.get("read_error") for r in out]


# 1. a stray quote ---------------------------------------------------------------------------------------------------

ROWS = [f"{i}\tपंक्ति संख्या {i}" for i in range(1, 21)]


def test_a_stray_quote_in_tsv_cannot_swallow_rows(tmp_path):
    rows = list(ROWS)
    rows[2] = '3\t"उद्धरण जो कभी बंद नहीं होता'
    rows[18] = '19\tअंत में "उद्धरण'
    out = records(tmp_path, "s.tsv", "id\ttext\n" + "\n".join(rows) + "\n", format="tsv")
    assert [r["meta"]["fields"]["id"] for r in out] == [str(i) for i in range(1, 21)]
    assert out[2]["text"] == '"उद्धरण जो कभी बंद नहीं होता' and errors(out) == [None] * 20
    assert [r["meta"]["where"] for r in out[:2]] == ["line 2", "line 3"]


@pytest.mark.parametrize(
    "closing",
    [
        None,  # the file ends inside the quotes
        '15,"a quoted field"',  # the next quote closes the stray one, text follows it
        '15,5" screen,extra',
    ],
)
def test_a_stray_quote_in_csv_is_one_reject_and_the_rows_after_it_are_read(tmp_path, closing):
    rows = [row.replace("\t", ",") for row in ROWS]
    rows[2] = '3,"उद्धरण जो कभी बंद नहीं होता'
    if closing:
        rows[14] = closing
    out = records(tmp_path, "s.csv", "id,text\n" + "\n".join(rows) + "\n", format="csv")
    assert len(out) == 20 and [r["id"].rsplit("#")[1] for r in out] == [str(i) for i in range(20)]
    assert errors(out)[2] == "unbalanced_quote" and out[2]["meta"]["where"] == "line 4"
    assert out[2]["text"] == '3,"उद्धरण जो कभी बंद नहीं होता'
    assert [r["meta"]["fields"]["id"] for r in out if not r.get("read_error")][2:5] == ["4", "5", "6"]
    assert all("\n" not in r["text"] for r in out)


def test_a_quoted_csv_field_may_hold_line_breaks(tmp_path):
    out = records(tmp_path, "m.csv", 'id,text\n1,"पहली पंक्ति\nदूसरी, पंक्ति"\n2,अगला\n', format="csv")
    assert [(r["text"], r["meta"]["where"]) for r in out] == [("पहली पंक्ति\nदूसरी, पंक्ति", "line 2"), ("अगला", "line 4")]


# 2. a field over csv's default limit -------------------------------------------------------------------------------


def test_a_csv_field_over_131072_characters_is_read(tmp_path):
    content = "id,text\n1," + "क" * 200_000 + "\n2,छोटा\n"
    out = records(tmp_path, "big.csv", content, format="csv")
    assert [len(r["text"]) for r in out] == [200_000, 4] and errors(out) == [None, None]
    out = records(tmp_path, "big.csv", content, format="csv", max_chars=150_000)
    assert errors(out) == ["too_long:200000_chars", None]


# 3. memory does not grow with the file ------------------------------------------------------------------------------

PEAK = """
import sys
from indictune.data.readers import Source, read


def peak_mb():  # this process's own high-water mark (ru_maxrss would include the parent's, kept across exec)
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) // 1024


fmt, path, unit = sys.argv[1:4]
before = peak_mb()
n = sum(1 for _ in read(Source(path=path, format=fmt, unit=unit)))
print(n, peak_mb() - before)
"""


@pytest.mark.parametrize(
    "fmt, name, unit",
    [("csv", "m.csv", "file"), ("tsv", "m.tsv", "file"), ("txt", "m.txt", "paragraph"), ("mediawiki", "m.xml", "file")],
)
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the peak from /proc")
def test_readers_stream_so_memory_does_not_grow_with_the_file(tmp_path, fmt, name, unit):
    """A 40 MB file (200,000 pages of a dump) costs under 10 MB: reading it whole would cost 2-4 times its size
    (a dump's root keeping every page: 17 MB)."""
    body = "यह एक लंबा अनुच्छेद है, जिसमें बहुत से शब्द हैं। " * 10
    if fmt == "mediawiki":
        page = "<page><title>t</title><ns>0</ns><id>1</id><revision><text>लेख</text></revision></page>\n"
        count, content = 200_000, "<mediawiki>\n" + page * 200_000 + "</mediawiki>\n"
    else:
        count = 40_000_000 // len(body.encode())
        sep = {"csv": ",", "tsv": "\t"}.get(fmt)
        head, line = (f"id{sep}text\n", f"1{sep}{body}\n") if sep else ("", body + "\n\n")
        content = head + line * count
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    del content
    result = subprocess.run([sys.executable, "-c", PEAK, fmt, str(path), unit], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    records_read, growth_mb = map(int, result.stdout.split())
    assert records_read == count and growth_mb < 10, f"{fmt}: peak memory grew by {growth_mb} MB"


# 4. NUL bytes and binaries ------------------------------------------------------------------------------------------


def test_a_stray_nul_costs_only_its_line(tmp_path):
    lines = [json.dumps({"text": f"पंक्ति {i}"}, ensure_ascii=False) for i in range(61)]
    lines[0] = '{"text": "NUL\x00 यहाँ"}'
    out = records(tmp_path, "n.jsonl", "\n".join(lines) + "\n", format="jsonl")
    assert len(out) == 61 and errors(out)[0].startswith("invalid_json") and errors(out)[1:] == [None] * 60
    out = records(tmp_path, "n.txt", "एक\nदो\x00\nतीन\n", format="txt", unit="line")
    assert errors(out) == [None, "nul_byte", None]
    (out,) = records(tmp_path, "e.jsonl", '{"text": "escaped \\u0000 NUL"}\n', format="jsonl")
    assert out["read_error"] == "nul_byte"


def _png() -> bytes:
    return b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + os.urandom(4000)


def _zip(tmp_path) -> bytes:
    with zipfile.ZipFile(tmp_path / "z.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("data.jsonl", os.urandom(3000).hex() * 3)
    return (tmp_path / "z.zip").read_bytes()


@pytest.mark.parametrize("make", [_png, _zip])
def test_a_truly_binary_file_is_one_binary_file_reject(tmp_path, make):
    content = make() if make is _png else make(tmp_path)
    assert errors(records(tmp_path, "b.jsonl", content, format="jsonl")) == ["binary_file"]


# 5. UTF-16 and UTF-32, with and without BOM -------------------------------------------------------------------------

LINES = [f"पंक्ति {i}: தமிழ் and English" for i in range(10)]


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"])
@pytest.mark.parametrize("bom", [True, False])
@pytest.mark.parametrize("fmt, unit", [("jsonl", "file"), ("txt", "line"), ("txt", "file")])
def test_utf16_and_utf32_with_and_without_bom(tmp_path, encoding, bom, fmt, unit):
    lines = [json.dumps({"text": line}, ensure_ascii=False) for line in LINES] if fmt == "jsonl" else LINES
    content = (("\ufeff" if bom else "") + "\n".join(lines) + "\n").encode(encoding)
    out = records(tmp_path, "w", content, format=fmt, unit=unit)
    assert errors(out) == [None] * len(out)
    assert [r["text"] for r in out] == (["\n".join(LINES)] if fmt == "txt" and unit == "file" else LINES)


def test_devanagari_utf16_without_bom_and_few_spaces(tmp_path):
    text = "नमस्तेदुनिया यहकईशब्दोंकाएकलंबावाक्यहै\n" * 20
    out = records(tmp_path, "d.txt", text.encode("utf-16-le"), format="txt", unit="line")
    assert [r["text"] for r in out] == text.splitlines()


# 6. a file that gives no record -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, content, source",
    [
        ("blank.jsonl", "\n\n\n", {"format": "jsonl"}),
        ("space.txt", "  \n\t\n", {"format": "txt", "unit": "paragraph"}),
        ("space.txt", "  \n\t\n", {"format": "txt", "unit": "line"}),
        ("header.csv", "id,text\n", {"format": "csv"}),
        ("header.tsv", "id\ttext\n\n", {"format": "tsv"}),
        ("text", "\n", {"format": "kaldi"}),
    ],
)
def test_a_file_that_gives_no_record_is_one_reject(tmp_path, name, content, source):
    (out,) = records(tmp_path, name, content, **source)
    assert (out["read_error"], out["id"], out["meta"]) == ("no_records", f"{tmp_path}/{name}#0", {"where": "file"})


def test_an_empty_parquet_file_is_one_reject(tmp_path):
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), tmp_path / "e.parquet")
    assert errors(read(Source(path=str(tmp_path / "e.parquet"), format="parquet"))) == ["no_records"]


# 7. compressed files ------------------------------------------------------------------------------------------------

SRT = "1\n00:00:01,000 --> 00:00:02,000\nनमस्ते\n"
HOCR = (
    "<div class='ocr_page'><span class='ocr_line'><span class='ocrx_word' title='x_wconf 90'>नमस्ते</span></span></div>"
)
TESSERACT = "level\tpage_num\tblock_num\tpar_num\tline_num\tword_num\tconf\ttext\n5\t1\t1\t1\t1\t1\t90\tनमस्ते\n"
WIKI = "<mediawiki><page><title>t</title><ns>0</ns><id>1</id><revision><text>नमस्ते</text></revision></page></mediawiki>"
FORMATS = [
    ("jsonl", '{"text": "नमस्ते"}\n', {}),
    ("csv", "text\nनमस्ते\n", {}),
    ("tsv", "text\nनमस्ते\n", {}),
    ("txt", "नमस्ते\n", {}),
    ("txt", "नमस्ते\n\n", {"unit": "paragraph"}),
    ("txt", "नमस्ते\n", {"unit": "line"}),
    ("pages", "नमस्ते", {"kind": "ocr"}),
    ("tesseract_tsv", TESSERACT, {"kind": "ocr"}),
    ("hocr", HOCR, {"kind": "ocr"}),
    ("srt", SRT, {"kind": "asr"}),
    ("vtt", "WEBVTT\n\n00:01.000 --> 00:02.000\nनमस्ते\n", {"kind": "asr"}),
    ("whisper_json", '{"segments": [{"text": "नमस्ते"}]}', {"kind": "asr"}),
    ("asr_manifest", '{"audio_filepath": "a.wav", "text": "नमस्ते"}\n', {"kind": "asr"}),
    ("kaldi", "utt1 नमस्ते\n", {"kind": "asr"}),
    ("mediawiki", WIKI, {}),
]


def _zstd_frames(data: bytes) -> bytes:
    """Two frames, the first with a window beyond zstd's default limit (as --long=31 writes)."""
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=30, enable_ldm=True)
    half = len(data) // 2
    first = zstandard.ZstdCompressor(compression_params=params).compress(data[:half])
    return first + zstandard.ZstdCompressor().compress(data[half:])


COMPRESS = {
    "gz": lambda data: gzip.compress(data[:3]) + gzip.compress(data[3:]),  # two members, as pigz -i or cat writes
    "zst": _zstd_frames,
    "bz2": bz2.compress,
    "xz": lzma.compress,
}


@pytest.mark.parametrize("fmt, content, source", FORMATS, ids=[f"{f}-{s.get('unit', '')}" for f, _, s in FORMATS])
@pytest.mark.parametrize("compression", ["gz", "zst", "bz2", "xz"])
@pytest.mark.parametrize("named", [True, False])
def test_compressed_files_are_read_in_every_text_format(tmp_path, fmt, content, source, compression, named):
    packed = COMPRESS[compression](content.encode("utf-8"))
    (out,) = records(tmp_path, f"f.{fmt}.{compression}" if named else "f", packed, format=fmt, **source)
    assert (out.get("read_error"), out["text"]) == (None, "नमस्ते")


def test_a_compression_suffix_on_a_plain_file_does_no_harm(tmp_path):
    (out,) = records(tmp_path, "plain.jsonl.gz", '{"text": "नमस्ते"}\n', format="jsonl")
    assert out["text"] == "नमस्ते" and "read_error" not in out


@pytest.mark.parametrize("compression", ["gz", "zst", "bz2", "xz"])
@pytest.mark.parametrize("damage", ["cut", "corrupt"])
def test_a_damaged_compressed_file_ends_with_a_counted_reject(tmp_path, compression, damage):
    lines = "".join(json.dumps({"text": f"पंक्ति {i} " + os.urandom(30).hex()}) + "\n" for i in range(3000))
    compress = {"gz": gzip.compress, "zst": zstandard.ZstdCompressor().compress, "xz": lzma.compress}
    packed = compress.get(compression, lambda data: bz2.compress(data, 1))(lines.encode())  # bz2: 100 kB blocks
    middle = len(packed) // 2
    packed = packed[:middle] if damage == "cut" else packed[:middle] + bytes(64) + packed[middle + 64 :]
    out = records(tmp_path, f"d.jsonl.{compression}", packed, format="jsonl")
    assert errors(out)[-1] == "truncated_compressed_file" and out[-1]["id"].endswith(f"#{len(out) - 1}")
    assert errors(out)[0] is None and len(out) > 100  # what came before the damage is read
    if damage == "cut":  # at most the line cut in two is broken
        assert set(errors(out)[:-1]) <= {None, "invalid_json:Unterminated string starting at"}


# 8. lone surrogates -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("line", ['{"text": "\\ud800 टूटा"}', '{"text": "ठीक", "url": "http://x/\\udc00"}'])
def test_a_lone_surrogate_is_an_invalid_unicode_reject_that_can_be_written(tmp_path, line):
    (out,) = records(tmp_path, "s.jsonl", line + "\n", format="jsonl")
    assert out["read_error"] == "invalid_unicode"
    out["text"].encode("utf-8"), json.dumps(out["meta"], ensure_ascii=False).encode("utf-8")  # no error


# 9. languages -------------------------------------------------------------------------------------------------------


def test_a_lang_field_that_is_not_a_string_is_a_reject(tmp_path):
    content = '{"text": "एक", "l": ["hi", "mr"]}\n{"text": "दो", "l": 5}\n{"text": "तीन", "l": "hi"}\n'
    out = records(tmp_path, "l.jsonl", content, format="jsonl", lang_field="l")
    assert errors(out) == ["not_text:l", "not_text:l", None] and [r["lang"] for r in out] == [None, None, "hi"]


def test_an_unknown_source_language_is_a_recipe_error_naming_the_code(tmp_path):
    from indictune.data.pipeline import PrepareConfig

    with pytest.raises(SourceError, match=r"source 'web': unknown language code 'hni'; did you mean 'hi'"):
        Source(path="x.jsonl", format="jsonl", lang="hni", name="web")
    config = tmp_path / "r.yaml"
    config.write_text("sources:\n  - {path: x.jsonl, format: jsonl, lang: xx, name: web}\n")
    with pytest.raises(recipe.RecipeError, match=r"r\.yaml: sources\.0: source 'web': unknown language code 'xx'"):
        recipe.load(PrepareConfig, config)


# 10. Parquet values that JSON lacks ---------------------------------------------------------------------------------


def test_parquet_columns_of_every_type_become_json_safe_meta(tmp_path):
    moment = datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.timezone.utc)
    table = pa.table(
        {
            "text": ["पाठ"],
            "at": pa.array([moment], pa.timestamp("us", tz="UTC")),
            "day": pa.array([datetime.date(2024, 5, 1)]),
            "price": pa.array([decimal.Decimal("12.50")], pa.decimal128(6, 2)),
            "blob": pa.array([b"\x00\x01\x02"]),
            "nested": pa.array([{"a": [1, 2], "b": {"c": "d"}}]),
            "took": pa.array([datetime.timedelta(seconds=90)]),
        }
    )
    pq.write_table(table, tmp_path / "t.parquet")
    (out,) = read(Source(path=str(tmp_path / "t.parquet"), format="parquet"))
    assert "read_error" not in out
    assert json.loads(json.dumps(out["meta"]))["fields"] == {
        "at": "2024-05-01T12:30:00+00:00",
        "day": "2024-05-01",
        "price": "12.50",
        "blob": "<3 bytes>",
        "nested": {"a": [1, 2], "b": {"c": "d"}},
        "took": "0:01:30",
    }


# 11. not Parquet, and Parquet folders -------------------------------------------------------------------------------


def test_a_file_that_is_not_parquet_is_one_reject_and_the_others_are_read(tmp_path):
    pq.write_table(pa.table({"text": ["एक", "दो"]}), tmp_path / "a.parquet")
    (tmp_path / "b.parquet").write_text("not parquet at all")
    out = list(read(Source(path=str(tmp_path / "*.parquet"), format="parquet")))
    assert [(r["text"], r.get("read_error")) for r in out] == [("एक", None), ("दो", None), ("", "invalid_parquet")]


def test_a_parquet_folder_is_read_in_name_order_without_its_metadata_files(tmp_path):
    for lang, words in (("mr", ["तीन"]), ("hi", ["एक", "दो"])):
        (tmp_path / f"lang={lang}").mkdir()
        pq.write_table(pa.table({"text": words}), tmp_path / f"lang={lang}" / "part-0.parquet")
    (tmp_path / "_SUCCESS").write_text("")
    (tmp_path / "lang=hi" / ".part-0.parquet.crc").write_bytes(b"\x00\x01crc")
    (tmp_path / "_temporary").mkdir()
    (tmp_path / "_temporary" / "part-9.parquet").write_text("half written")
    out = list(read(Source(path=str(tmp_path), format="parquet")))
    assert [(r["text"], r.get("read_error")) for r in out] == [("एक", None), ("दो", None), ("तीन", None)]


# 12. paths that name nothing, loops, and a file listed twice --------------------------------------------------------


def test_paths_that_name_nothing_are_source_errors(tmp_path):
    def error(path):
        with pytest.raises(SourceError) as caught:
            Source(path=str(path), format="jsonl", name="crawl").files()
        return str(caught.value)

    assert "source 'crawl'" in error(tmp_path / "missing.jsonl") and "does not exist" in error(tmp_path / "m.jsonl")
    assert "matched nothing" in error(tmp_path / "*.jsonl")
    (tmp_path / "empty").mkdir()
    assert "holds no file" in error(tmp_path / "empty")
    os.symlink("loop", tmp_path / "loop")
    assert f"{tmp_path}/loop is a symlink loop" in error(tmp_path / "loop")


def test_a_symlink_loop_or_broken_link_in_a_folder_is_a_source_error(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "एक"}\n')
    os.symlink("self.jsonl", tmp_path / "self.jsonl")
    with pytest.raises(SourceError, match=r"source 'crawl': .*/self\.jsonl is a symlink loop; remove it"):
        list(read(Source(path=str(tmp_path), format="jsonl", name="crawl")))
    os.remove(tmp_path / "self.jsonl")
    os.symlink("gone.jsonl", tmp_path / "b.jsonl")
    with pytest.raises(SourceError, match=r"b\.jsonl is a broken link \(to gone\.jsonl\)"):
        list(read(Source(path=str(tmp_path / "*.jsonl"), format="jsonl", name="crawl")))


def test_check_sources_refuses_a_file_listed_twice(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.jsonl").write_text('{"text": "एक"}\n')
    (tmp_path / "d" / "b.jsonl").write_text('{"text": "दो"}\n')
    one = Source(path=str(tmp_path / "d" / "a.jsonl"), format="jsonl", name="one")
    every = Source(path=str(tmp_path / "d" / "*.jsonl"), format="jsonl", name="every")
    readers.check_sources([one, Source(path=str(tmp_path / "d" / "b.jsonl"), format="jsonl", name="two")])
    with pytest.raises(
        SourceError, match=r"a\.jsonl and .*a\.jsonl are the same file: source 'every' and source 'one'"
    ):
        readers.check_sources([one, every])
    os.link(tmp_path / "d" / "a.jsonl", tmp_path / "d" / "c.jsonl")  # a hard link: another name, the same file
    with pytest.raises(SourceError, match=r"same file: source 'every' lists it twice; list each file once"):
        readers.check_sources([every])
    with pytest.raises(SourceError, match="matched nothing"):  # a bad path fails before any work
        readers.check_sources([one, Source(path=str(tmp_path / "*.csv"), format="csv")])


# 13. numeric ranges -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key, value", [("limit", -1), ("limit", 0), ("max_chars", 0)])
def test_source_numbers_are_checked_against_their_ranges(tmp_path, key, value):
    from indictune.data.pipeline import PrepareConfig

    config = tmp_path / "r.yaml"
    config.write_text("sources:\n  - {path: x.jsonl, format: jsonl}\n")
    with pytest.raises(recipe.RecipeError, match=rf"'sources\.0\.{key}' must be at least 1, got {value}"):
        recipe.load(PrepareConfig, config, [f"--sources.0.{key}", str(value)])
    with pytest.raises(ValueError, match=rf"'{key}' must be at least 1"):
        Source(path="x.jsonl", format="jsonl", **{key: value})


# 14. Hugging Face datasets ------------------------------------------------------------------------------------------


def test_a_saved_dataset_that_cannot_be_loaded_is_a_source_error(tmp_path):
    import datasets

    features = datasets.Features({"text": datasets.Value("string")})
    datasets.Dataset.from_dict({"text": []}, features=features).save_to_disk(tmp_path / "ds")
    (tmp_path / "not-a-dataset").mkdir()
    for name in ("ds", "not-a-dataset"):
        with pytest.raises(SourceError, match=rf"source 'saved': cannot load .*{name} as a saved dataset"):
            list(read(Source(path=str(tmp_path / name), format="hf", name="saved")))

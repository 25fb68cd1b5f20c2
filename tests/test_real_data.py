"""The pipeline on real Indic data from ../shared/data (INDICTUNE_SHARED_DATA)."""

from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer, LlamaTokenizer

from data import pipeline, recipe
from data.stages.identify import guess_language
from eval.tasks import load_task
from training.tokenizer.build import TokenizerConfig, build

REPO = Path(__file__).resolve().parent.parent
FLORES = ["hin_Deva", "mar_Deva", "ben_Beng", "tam_Taml", "tel_Telu", "kan_Knda", "mal_Mlym", "guj_Gujr", "pan_Guru",
          "ory_Orya", "urd_Arab", "eng_Latn"]


@pytest.fixture(scope="module")
def prepared_shared(shared_data, tmp_path_factory, monkeypatch_module):
    monkeypatch_module.setenv("INDICTUNE_SHARED_DATA", str(shared_data))
    out = tmp_path_factory.mktemp("shared") / "data"
    config = recipe.load(pipeline.PrepareConfig, REPO / "recipes/data/shared.yaml", [f"--output_dir={out}"])
    return out, pipeline.run(config)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_prepare_data_on_the_shared_data(prepared_shared):
    out, report = prepared_shared
    assert report["totals"]["input"] > 40_000
    for source, counts in report["sources"].items():
        assert counts["input"] == counts["kept"] + counts["rejected"], source
        assert counts["kept"] > 0.5 * counts["input"], source
    kept = pq.read_table(out / "data", columns=["lang", "script", "kind"]).to_pandas()
    assert set(kept.lang) == {"hi", "mr", "bn", "ta", "te", "kn", "ml", "gu", "pa", "or", "ur", "en"}
    assert set(kept.kind) == {"web", "ocr", "asr"}
    assert (kept[kept.lang == "ur"].script == "Arab").all() and (kept[kept.lang == "pa"].script == "Guru").all()
    rejected = pq.read_table(out / "rejected", columns=["reason"]).to_pandas()
    assert rejected.reason.str.startswith("duplicate_of:").sum() > 100  # the transcript files share utterances


def test_language_of_shared_script_sentences(shared_data):
    """Floors for the stop-word guess on single FLORES sentences (documents do better)."""
    for code, lang, floor in (("hin_Deva", "hi", 0.95), ("mar_Deva", "mr", 0.7), ("ben_Beng", "bn", 0.95)):
        lines = (shared_data / "flores200" / "dev" / f"{code}.dev").read_text().splitlines()
        guesses = Counter(guess_language(line, code.split("_")[1]) for line in lines)
        assert guesses[lang] / len(lines) >= floor, (code, guesses.most_common(3))


def test_extend_the_llama2_tokenizer_with_hindi_and_tamil(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("INDICTUNE_SHARED_DATA", str(shared_data))
    # The Llama-2 SentencePiece model as a Hugging Face tokenizer folder, as on the Hub.
    base = tmp_path / "llama2"
    (tmp_path / "spm").mkdir()
    (tmp_path / "spm" / "tokenizer.model").write_bytes((shared_data / "tokenizers/llama2/tokenizer.model").read_bytes())
    LlamaTokenizer.from_pretrained(tmp_path / "spm", add_bos_token=True).save_pretrained(base)
    (base / "tokenizer.model").write_bytes((tmp_path / "spm" / "tokenizer.model").read_bytes())

    # Train on the first 600 FLORES sentences; measure on the other 397.
    heldout = tmp_path / "heldout"
    heldout.mkdir()
    for code in ("hin_Deva", "tam_Taml", "eng_Latn"):
        lines = (shared_data / "flores200" / "dev" / f"{code}.dev").read_text().splitlines()
        (heldout / f"{code}.txt").write_text("\n".join(lines[600:]) + "\n")
    data = tmp_path / "prepared"
    config = recipe.load(pipeline.PrepareConfig, None, [
        f"--output_dir={data}", "--stages.quality.min_words", "3",
        "--sources", "[{path: '${INDICTUNE_SHARED_DATA}/flores200/dev/hin_Deva.dev', format: txt, unit: line, lang: hi, "
        "limit: 600}, {path: '${INDICTUNE_SHARED_DATA}/flores200/dev/tam_Taml.dev', format: txt, unit: line, lang: ta, "
        "limit: 600}]",
    ])
    pipeline.run(config)
    summary = build(TokenizerConfig(
        output_dir=str(tmp_path / "extended"), train_data=[str(data)], base_tokenizer=str(base), vocab_size=6000,
        fertility_text=str(heldout / "{flores}.txt"), fertility_languages=["hi", "ta", "en"],
    ))
    fertility = summary["fertility"]
    print({lang: {k: round(v["tokens_per_word"], 2) for k, v in f.items()} for lang, f in fertility.items()})
    for lang in ("hi", "ta"):
        assert fertility[lang]["extended"]["tokens_per_word"] < 0.6 * fertility[lang]["base"]["tokens_per_word"]
    assert fertility["en"]["extended"]["tokens_per_word"] <= 1.01 * fertility["en"]["base"]["tokens_per_word"]
    extended = AutoTokenizer.from_pretrained(tmp_path / "extended")
    assert len(extended) == 32000 + summary["added_tokens"]
    assert extended.convert_tokens_to_ids("▁the") == AutoTokenizer.from_pretrained(base).convert_tokens_to_ids("▁the")


def test_flores_task_finds_every_language(shared_data, monkeypatch):
    monkeypatch.setenv("INDICTUNE_SHARED_DATA", str(shared_data))
    task = load_task("flores-dev")
    for lang in task.languages:
        assert len(task.texts(lang)) == 997

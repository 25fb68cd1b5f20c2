"""Tokenizer training, extension, fertility and the initialisation of new embedding rows."""

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import tiny_llama
from transformers import AutoTokenizer

from indictune.core import languages
from indictune.training.tokenizer import spm
from indictune.training.tokenizer.embeddings import base_pieces, resize_for_tokenizer
from indictune.training.tokenizer.fertility import fertility

HELDOUT = Path(__file__).resolve().parent.parent / "data" / "sample" / "heldout"


def heldout_lines(*langs):
    return [line for lang in langs for line in (HELDOUT / f"{lang}.txt").read_text().splitlines() if line.strip()]


def test_a_new_tokenizer_loads_adds_bos_and_is_lossless(base_tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(base_tokenizer_dir)
    assert len(tokenizer) == 600 and tokenizer.bos_token_id == 1 and tokenizer.eos_token_id == 2
    ids = tokenizer("Hello there")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    for line in heldout_lines("en", "hi", "ta"):  # Indic text falls back to bytes, losslessly
        assert tokenizer.decode(tokenizer(line, add_special_tokens=False)["input_ids"]) == line


def test_extension_keeps_every_base_id_and_appends(base_tokenizer_dir, extended_tokenizer_dir):
    base = AutoTokenizer.from_pretrained(base_tokenizer_dir)
    extended = AutoTokenizer.from_pretrained(extended_tokenizer_dir)
    base_vocab, vocab = base.get_vocab(), extended.get_vocab()
    assert all(vocab[token] == i for token, i in base_vocab.items())
    assert len(vocab) == len(set(vocab)) and len(extended) > len(base)
    new = json.loads((extended_tokenizer_dir / "new_tokens.json").read_text())
    assert [t["id"] for t in new] == list(range(len(base), len(extended)))
    assert all(extended.convert_ids_to_tokens(t["id"]) == t["token"] for t in new)
    assert (extended.bos_token_id, extended.eos_token_id, extended.unk_token_id) == (1, 2, 0)


def test_extended_tokenizer_matches_its_sentencepiece_model_and_round_trips(extended_tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(extended_tokenizer_dir)
    processor = spm.processor(spm.load(extended_tokenizer_dir / "tokenizer.model"))
    for line in heldout_lines("hi", "mr", "bn", "ta", "te", "en"):
        ids = tokenizer(line, add_special_tokens=False)["input_ids"]
        assert ids == processor.encode(line)
        assert tokenizer.decode(ids) == line


def test_fertility_drops_for_indic_and_holds_for_english(extended_tokenizer_dir):
    report = json.loads((extended_tokenizer_dir / "fertility.json").read_text())["fertility"]
    for lang in ("hi", "ta"):
        assert report[lang]["extended"]["tokens_per_word"] < 0.5 * report[lang]["base"]["tokens_per_word"]
    english = report["en"]
    assert english["extended"]["tokens_per_word"] <= 1.01 * english["base"]["tokens_per_word"]
    assert "| hi |" in (extended_tokenizer_dir / "fertility.md").read_text()


def test_fertility_counts():
    class Whitespace:
        def __call__(self, texts, add_special_tokens=False):
            return {"input_ids": [list(range(len(t.split()) * 2)) for t in texts]}

    assert fertility(Whitespace(), ["एक दो", "तीन"]) == {
        "tokens_per_word": 2.0,
        "bytes_per_token": 22 / 6,
        "characters_per_token": 8 / 6,
        "tokens": 6,
        "words": 3,
    }


def test_merge_appends_below_regular_merges_and_keeps_sentinels_last():
    base = spm.train(heldout_lines("en") * 3, 500)
    sentinel = base.pieces.add()
    sentinel.piece, sentinel.type, sentinel.score = "▁▁", spm.NORMAL, -1e9
    extra = spm.train(heldout_lines("hi") * 3, 500)
    merged, added = spm.merge(base, extra)
    pieces = [p.piece for p in merged.pieces]
    assert len(pieces) == len(set(pieces)) and pieces[: len(base.pieces)] == [p.piece for p in base.pieces]
    regular = min(p.score for p in base.pieces if len(p.piece) > 1 and p.score > -1e6)
    new_scores = [p.score for p in merged.pieces[len(base.pieces) :]]
    assert all(-1e9 < s < regular for s in new_scores) and new_scores == sorted(new_scores, reverse=True)
    assert len(set(new_scores)) == len(new_scores)


def test_merge_refuses_a_different_model_type():
    base = spm.train(heldout_lines("en") * 3, 500)
    unigram = spm.train(heldout_lines("hi") * 3, 340, model_type="unigram")
    with pytest.raises(ValueError, match="train the new pieces with model_type: bpe"):
        spm.merge(base, unigram)


def test_temperature_evens_out_language_shares():
    texts = ["a" * 10] * 90 + ["b" * 10] * 10
    langs = ["hi"] * 90 + ["ta"] * 10
    _, natural = spm.sample_lines(texts, langs, temperature=1.0, max_characters=200)
    _, even = spm.sample_lines(texts, langs, temperature=100.0, max_characters=200)
    assert natural["hi"] > 4 * natural["ta"]
    assert abs(even["hi"] - even["ta"]) <= 10


@pytest.mark.parametrize("tie", [False, True])
def test_new_rows_start_at_the_mean_of_their_base_pieces(base_tokenizer_dir, extended_tokenizer_dir, tie):
    base = AutoTokenizer.from_pretrained(base_tokenizer_dir)
    extended = AutoTokenizer.from_pretrained(extended_tokenizer_dir)
    model = tiny_llama(len(base), tie=tie)
    before_in = model.get_input_embeddings().weight.detach().clone()
    before_out = model.get_output_embeddings().weight.detach().clone()
    new_ids = resize_for_tokenizer(model, extended, base)
    assert new_ids == list(range(len(base), len(extended)))
    weight_in = model.get_input_embeddings().weight
    weight_out = model.get_output_embeddings().weight
    assert weight_in.shape[0] == len(extended) and model.config.vocab_size >= len(extended)
    assert torch.equal(weight_in[: len(base)], before_in)  # base rows untouched
    token = extended.convert_ids_to_tokens(new_ids[0])
    pieces = base_pieces(base, token)
    assert pieces and all(i < len(base) for i in pieces)
    assert torch.allclose(weight_in[new_ids[0]], before_in[pieces].mean(0))
    if not tie:
        assert torch.allclose(weight_out[new_ids[0]], before_out[pieces].mean(0))
    assert (weight_in[len(base) :].norm(dim=1) > 0).all()


def test_a_tokenizer_that_is_not_an_extension_is_refused(base_tokenizer_dir):
    base = AutoTokenizer.from_pretrained(base_tokenizer_dir)
    with pytest.raises(ValueError, match="not an extension of the model's tokenizer"):
        resize_for_tokenizer(tiny_llama(len(base)), _shuffled(base), base)


def _shuffled(tokenizer):
    """The same tokens with two ids swapped, plus one new token: looks like an extension, is not."""
    import tempfile

    from tokenizers import Tokenizer

    data = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = data["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[300:302]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    vocab["▁zzzz"] = len(vocab)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        Tokenizer.from_str(json.dumps(data)).save(f"{tmp}/tokenizer.json")
        return AutoTokenizer.from_pretrained(tmp)


# byte-level BPE (Llama-3, Qwen, GPT style) ---------------------------------------------------------------------


def test_byte_level_bpe_extension_adds_reachable_tokens_and_keeps_base_ids():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from indictune.training.tokenizer import bytelevel

    heldout = Path(__file__).resolve().parent.parent / "data" / "sample" / "heldout"
    english = heldout.joinpath("en.txt").read_text().splitlines()
    hindi = [line for line in heldout.joinpath("hi.txt").read_text().splitlines() if line.strip()]
    base = Tokenizer(models.BPE())
    base.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    base.decoder = decoders.ByteLevel()
    base.train_from_iterator(
        english,
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=["<s>", "</s>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    trained = bytelevel.train(hindi * 3, 300, base, "keep_marks")
    extended, added = bytelevel.extend(base, trained, hindi, "keep_marks")
    assert added and all(extended.get_vocab()[t] >= base.get_vocab_size() for t in added)
    assert all(extended.get_vocab()[t] == i for t, i in base.get_vocab().items())  # base and special ids stay
    for line in hindi + english:
        assert extended.decode(extended.encode(line).ids) == line
    assert sum(len(extended.encode(line).ids) for line in hindi) < 0.5 * sum(
        len(base.encode(line).ids) for line in hindi
    )
    produced = {extended.id_to_token(i) for line in hindi for i in extended.encode(line).ids}
    reachable = produced & set(added)
    for a, b in reversed(json.loads(extended.to_str())["model"]["merges"][-len(added) :]):
        if a + b in reachable:  # the halves a produced token is built from are reached on the way
            reachable.update({a, b} & set(added))
    assert reachable == set(added) and len(produced & set(added)) >= 0.8 * len(added)
    assert [extended.encode(line).ids for line in english] == [base.encode(line).ids for line in english]


@pytest.mark.slow
def test_new_rows_are_the_same_when_the_model_is_sharded_by_zero3(base_tokenizer_dir, extended_tokenizer_dir, tmp_path):
    import socket
    import subprocess
    import sys

    tiny_llama(len(AutoTokenizer.from_pretrained(base_tokenizer_dir))).save_pretrained(tmp_path / "model")
    results = {}
    for zero3 in ("0", "1"):
        with socket.socket() as probe:  # a free port for the single-rank gloo group
            probe.bind(("127.0.0.1", 0))
            port = str(probe.getsockname()[1])
        done = subprocess.run(
            [
                sys.executable,
                "tests/zero3_resize.py",
                str(tmp_path / "model"),
                str(base_tokenizer_dir),
                str(extended_tokenizer_dir),
                port,
                zero3,
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "DS_ACCELERATOR": "cpu"},
        )
        line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
        assert line, done.stderr[-3000:]
        results[zero3] = json.loads(line[len("RESULT ") :])
    assert results["1"]["partitioned"] and not results["0"]["partitioned"]
    assert results["0"]["new_ids"] == results["1"]["new_ids"] and results["0"]["new_ids"]
    for layer in ("input", "output"):
        plain, sharded = torch.tensor(results["0"][layer]), torch.tensor(results["1"][layer])
        assert plain.shape == sharded.shape and torch.equal(plain, sharded)


def test_pieces_per_language_trains_each_language_its_own_pieces(prepared_sample, base_tokenizer_dir, tmp_path):
    from indictune.training.tokenizer.build import TokenizerConfig, build

    summary = build(
        TokenizerConfig(
            output_dir=str(tmp_path / "tok"),
            train_data=[str(prepared_sample[0])],
            base_tokenizer=str(base_tokenizer_dir),
            pieces_per_language={"hi": 500, "tam_Taml": 500},
        )
    )
    added = [entry["token"] for entry in json.loads((tmp_path / "tok" / "new_tokens.json").read_text())]
    scripts = {"Deva": 0, "Taml": 0}
    for token in added:
        script = next((s for s in scripts if any(languages.SCRIPTS[s].contains(c) for c in token)), None)
        if script:
            scripts[script] += 1
    assert summary["added_tokens"] == len(added) and scripts["Deva"] > 100 and scripts["Taml"] > 100
    assert not any(languages.SCRIPTS["Beng"].contains(c) for token in added for c in token)  # no Bengali asked for


def test_byte_level_pieces_per_language_take_turns():
    from indictune.training.tokenizer import bytelevel

    assert bytelevel.interleave([[("a", "b"), ("ab", "c")], [("x", "y")]]) == [("a", "b"), ("x", "y"), ("ab", "c")]


def test_plain_text_files_can_be_the_training_text(base_tokenizer_dir, tmp_path):
    from indictune.training.tokenizer.build import TokenizerConfig, build

    heldout = Path(__file__).resolve().parent.parent / "data" / "sample" / "heldout"
    summary = build(
        TokenizerConfig(
            output_dir=str(tmp_path / "tok"),
            base_tokenizer=str(base_tokenizer_dir),
            train_text={"hi": str(heldout / "hi.txt"), "ta": str(heldout / "ta.txt")},
            vocab_size=700,
        )
    )
    assert summary["added_tokens"] > 100 and set(summary["training_characters"]) == {"hi", "ta"}
    with pytest.raises(ValueError, match="nothing to train on"):
        build(TokenizerConfig(output_dir=str(tmp_path / "none")))

"""A recorded score is the score of those exact bytes: each way a false result was once recorded, refused.

Stale cached scores after an in-place rewrite, an impossible metric from a tokenizer that encodes nothing,
an adapter scored on a base it was not trained on, controls that vanish from the page, pickled adapters,
task options that hang, one over-long prompt that aborts a suite, and outputs teammates cannot read.
"""

import json
import os
import shutil
import stat

import pytest
from conftest import lora_adapter, tiny_llama, write_copa
from transformers import AutoTokenizer

from indictune.core.recipe import RecipeError, build
from indictune.eval import leaderboard, store
from indictune.eval.metrics import out_of_range
from indictune.eval.suite import EvalConfig, EvalError, TaskRun, evaluate
from indictune.eval.tasks import Task, chunks, load_task


def bits(run: dict, lang: str = "hi") -> float:
    return next(s["value"] for s in run["scores"] if s["metric"] == "bits_per_character" and s["lang"] == lang)


def test_weights_rewritten_in_place_with_the_mtime_restored_are_scored_afresh(tmp_path, long_base_dir):
    model_dir = tmp_path / "checkpoint"
    shutil.copytree(long_base_dir, model_dir)
    config = EvalConfig(
        tasks=["sample-heldout"],
        languages=["hi"],
        model=str(model_dir),
        output_dir=str(tmp_path / "eval"),
        db=str(tmp_path / "lb.sqlite"),
    )
    first = evaluate(config)["runs"][0]

    # Other weights of the same size written over the same file (same inode), its times put back (touch -r).
    other = tmp_path / "other"
    tiny_llama(len(AutoTokenizer.from_pretrained(model_dir)), seed=11, positions=4096).save_pretrained(other)
    weights = model_dir / "model.safetensors"
    before = weights.stat()
    assert (other / "model.safetensors").stat().st_size == before.st_size
    with open(other / "model.safetensors", "rb") as source, open(weights, "r+b") as target:
        shutil.copyfileobj(source, target)
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = weights.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)

    again = evaluate(config)["runs"][0]
    assert again["weights_sha256"] != first["weights_sha256"]
    assert bits(again) != bits(first)
    fresh = evaluate(EvalConfig(**{**config.__dict__, "use_cache": False}))["runs"][0]
    assert fresh["weights_sha256"] == again["weights_sha256"] and bits(fresh) == pytest.approx(bits(again))


def save_with_tokenizer(tmp_path, name, tokenizer):
    folder = tmp_path / name
    tokenizer.save_pretrained(folder)
    tiny_llama(max(len(tokenizer), 8)).save_pretrained(folder)
    return folder


def test_a_tokenizer_that_encodes_nothing_records_no_score(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # Three pieces and no unknown token: every text encodes to [] (a SentencePiece file read the wrong way).
    empty = Tokenizer(models.BPE(vocab={"<unk>": 0, "<s>": 1, "</s>": 2}, merges=[]))
    empty_dir = save_with_tokenizer(
        tmp_path, "empty", PreTrainedTokenizerFast(tokenizer_object=empty, bos_token="<s>", eos_token="</s>")
    )
    config = EvalConfig(
        tasks=["sample-heldout"],
        languages=["hi"],
        model=str(empty_dir),
        output_dir=str(tmp_path / "eval"),
        db=str(tmp_path / "lb.sqlite"),
    )
    with pytest.raises(EvalError, match=rf"{empty_dir}, task sample-heldout \(hi\): .* encode to no tokens"):
        evaluate(config)
    assert not (tmp_path / "lb.sqlite").exists() or store.latest_runs(config.db) == []

    # Words it does not know become <unk>: tokens that do not give the text back.
    unknown = Tokenizer(models.WordLevel({"<unk>": 0, "<s>": 1, "</s>": 2, "the": 3}, unk_token="<unk>"))
    unknown.pre_tokenizer = pre_tokenizers.Whitespace()
    unknown_dir = save_with_tokenizer(
        tmp_path,
        "unknown",
        PreTrainedTokenizerFast(tokenizer_object=unknown, bos_token="<s>", eos_token="</s>", unk_token="<unk>"),
    )
    with pytest.raises(EvalError, match=r"task sample-heldout \(hi\): .* do not decode back .*<unk>"):
        evaluate(EvalConfig(**{**config.__dict__, "model": str(unknown_dir)}))


def test_a_score_outside_its_possible_range_is_named():
    assert out_of_range("bits_per_character", 0.0) and out_of_range("bits_per_byte", float("nan"))
    assert out_of_range("accuracy", 100.5) and out_of_range("chrf++", -1.0)
    assert out_of_range("bits_per_character", 1e-3) is None and out_of_range("accuracy", 0.0) is None


@pytest.fixture
def two_bases(tmp_path, long_base_dir):
    """The base an adapter was trained on, that base moved elsewhere, and a different model."""
    trained_on = tmp_path / "trained-on"
    shutil.copytree(long_base_dir, trained_on)
    other = tmp_path / "other-base"
    shutil.copytree(long_base_dir, other)
    tiny_llama(len(AutoTokenizer.from_pretrained(other)), seed=5, positions=4096).save_pretrained(other)
    adapter = lora_adapter(trained_on, tmp_path / "adapter", seed=1)
    return trained_on, other, adapter


def test_an_adapter_on_another_base_is_refused_unless_allowed_and_then_shown(tmp_path, two_bases):
    trained_on, other, adapter = two_bases
    config = EvalConfig(
        tasks=["sample-heldout"],
        languages=["hi", "en"],
        model=str(other),
        adapter=[str(adapter)],
        output_dir=str(tmp_path / "eval"),
        db=str(tmp_path / "lb.sqlite"),
        bootstrap_samples=100,
    )
    with pytest.raises(
        EvalError,
        match=rf"adapter {adapter} was trained on {trained_on} .*not on {other}.*"
        "--allow_base_mismatch",
    ):
        evaluate(config)

    config.allow_base_mismatch = True
    run = evaluate(config)["runs"][1]
    assert str(trained_on) in run["base_mismatch"]
    assert store.latest_runs(config.db)[1]["base_mismatch"] == run["base_mismatch"]
    out = tmp_path / "board"
    leaderboard.render(leaderboard.LeaderboardConfig(db=config.db, out=str(out)))
    assert "base mismatch" in (out / "leaderboard.md").read_text()
    assert "base mismatch" in (out / "leaderboard.html").read_text()


def test_the_base_weight_hash_in_the_lineage_decides_over_names(tmp_path, two_bases):
    from indictune.core.hashing import folder_sha256

    trained_on, other, adapter = two_bases
    (adapter / "lineage.json").write_text(json.dumps({"base_weights_sha256": folder_sha256(trained_on)}))
    moved = tmp_path / "moved"
    shutil.copytree(trained_on, moved)  # the same weights in another folder: the adapter belongs on it
    config = EvalConfig(
        tasks=["sample-heldout"],
        languages=["hi"],
        model=str(moved),
        adapter=[str(adapter)],
        output_dir=str(tmp_path / "eval"),
        db=str(tmp_path / "lb.sqlite"),
        bootstrap_samples=100,
    )
    assert evaluate(config)["runs"][1]["base_mismatch"] is None
    # The folder it names, overwritten with other weights: the name matches, the weights do not.
    shutil.rmtree(trained_on)
    shutil.copytree(other, trained_on)
    with pytest.raises(EvalError, match="weights sha256 .* from its lineage.json"):
        evaluate(EvalConfig(**{**config.__dict__, "model": str(trained_on)}))


def test_a_pickled_adapter_is_refused_with_the_fix(tmp_path, long_base_dir):
    adapter = lora_adapter(long_base_dir, tmp_path / "pickled", seed=1, safe_serialization=False)
    assert (adapter / "adapter_model.bin").is_file() and not (adapter / "adapter_model.safetensors").exists()
    config = EvalConfig(
        tasks=["sample-heldout"],
        languages=["hi"],
        model=str(long_base_dir),
        adapter=[str(adapter)],
        output_dir=str(tmp_path / "eval"),
        db=str(tmp_path / "lb.sqlite"),
    )
    with pytest.raises(EvalError, match=r"adapter_model.bin.*save_pretrained\(dir, safe_serialization=True\)"):
        evaluate(config)


def test_skipped_entries_and_item_counts_are_on_the_page_with_the_controls(tmp_path, long_base_dir, monkeypatch):
    monkeypatch.setenv("INDICTUNE_EVAL_DATA", str(tmp_path / "empty"))
    config = EvalConfig(
        tasks=["sample-heldout", "belebele"],
        languages=["hi", "en"],
        model=str(long_base_dir),
        base=str(long_base_dir),
        output_dir=str(tmp_path / "eval"),
        db=str(tmp_path / "lb.sqlite"),
        bootstrap_samples=100,
        missing_data="skip",
    )
    results = evaluate(config)
    assert {(s["task"], s["lang"]) for s in results["skipped"]} == {("belebele", "hi"), ("belebele", "en")}
    n_chunks = next(s["n"] for s in results["runs"][1]["scores"] if s["lang"] == "en")
    out = tmp_path / "board"
    leaderboard.render(leaderboard.LeaderboardConfig(db=config.db, out=str(out)))
    for page in ((out / "leaderboard.md").read_text(), (out / "leaderboard.html").read_text()):
        assert "belebele en: task belebele (en): no local copy" in page  # skipped, with why
        assert f"en ({n_chunks})" in page and f"n={n_chunks}" in page  # items per run and per cell
        assert (
            f"English control rows: sample-heldout bits_per_byte (n={n_chunks}), "
            f"sample-heldout bits_per_character (n={n_chunks})"
        ) in page
        assert "Not scored: belebele en: task belebele (en): no local copy" in page


def test_no_english_control_is_a_warning_not_a_pass(tmp_path, long_base_dir):
    config = EvalConfig(
        tasks=["sample-heldout"],
        languages=["hi"],
        model=str(long_base_dir),
        base=str(long_base_dir),
        output_dir=str(tmp_path / "eval"),
        db=str(tmp_path / "lb.sqlite"),
        bootstrap_samples=100,
    )
    evaluate(config)
    out = tmp_path / "board"
    leaderboard.render(leaderboard.LeaderboardConfig(db=config.db, out=str(out)))
    assert "⚠ No English control was scored" in (out / "leaderboard.md").read_text()


def test_task_options_are_checked_when_the_task_is_loaded(tmp_path):
    flores = load_task("sample-heldout")
    values = {"name": "tiny-chunks", "data": {"path": flores.data.path}, "languages": ["hi"], "chunk_bytes": 2}
    for chunk_bytes in (2, 0, -1):
        with pytest.raises(RecipeError, match=rf"'chunk_bytes' must be at least 4, got {chunk_bytes}"):
            build(Task, {**values, "chunk_bytes": chunk_bytes}, "tiny-chunks.yaml")
    task_file = tmp_path / "tiny-chunks.yaml"
    task_file.write_text(f"name: tiny-chunks\ndata: {{path: '{flores.data.path}'}}\nlanguages: [hi]\nchunk_bytes: 2\n")
    with pytest.raises(RecipeError, match=r"tiny-chunks.yaml: 'chunk_bytes' must be at least 4"):
        load_task(str(task_file))
    with pytest.raises(ValueError, match="smaller than the character 'क' \\(3 UTF-8 bytes\\)"):
        chunks(["कखग"], 2)  # it used to loop for ever
    with pytest.raises(RecipeError, match="'shots' must be at least 0, got -1"):
        TaskRun("indiccopa", shots=-1)
    with pytest.raises(RecipeError, match="'limit' must be at least 1, got 0"):
        TaskRun("indiccopa", limit=0)


def test_an_over_long_prompt_skips_its_entry_and_says_why(tmp_path, base_tokenizer_dir, monkeypatch):
    write_copa(tmp_path / "eval-data")
    monkeypatch.setenv("INDICTUNE_EVAL_DATA", str(tmp_path / "eval-data"))
    tokenizer = AutoTokenizer.from_pretrained(base_tokenizer_dir)
    short = tmp_path / "short-context"
    tiny_llama(len(tokenizer), positions=160).save_pretrained(short)
    tokenizer.save_pretrained(short)
    config = EvalConfig(
        tasks=[{"task": "indiccopa", "shots": 0}, {"task": "indiccopa", "shots": 8}],
        languages=["hi"],
        model=str(short),
        output_dir=str(tmp_path / "eval"),
        db=str(tmp_path / "lb.sqlite"),
    )
    results = evaluate(config)
    assert {s["shots"] for s in results["runs"][0]["scores"]} == {0}  # the entry that fits is scored
    (skipped,) = results["skipped"]
    assert skipped["task"] == "indiccopa" and skipped["lang"] == "hi" and skipped["shots"] == 8
    assert "longer than the model's 160 positions" in skipped["reason"] and "fewer shots" in skipped["reason"]
    out = tmp_path / "board"
    leaderboard.render(leaderboard.LeaderboardConfig(db=config.db, out=str(out)))
    assert "indiccopa hi (8 shots): task indiccopa (hi, 8 shots)" in (out / "leaderboard.md").read_text()


def test_outputs_are_readable_by_teammates(tmp_path, long_base_dir, monkeypatch):
    monkeypatch.setenv("INDICTUNE_CACHE", str(tmp_path / "cache"))
    previous = os.umask(0o022)
    try:
        config = EvalConfig(
            tasks=["sample-heldout"],
            languages=["hi"],
            model=str(long_base_dir),
            output_dir=str(tmp_path / "eval"),
            db=str(tmp_path / "lb.sqlite"),
        )
        evaluate(config)
        leaderboard.render(leaderboard.LeaderboardConfig(db=config.db, out=str(tmp_path / "board")))
    finally:
        os.umask(previous)
    written = [
        tmp_path / "eval" / "results.json",
        tmp_path / "board" / "leaderboard.md",
        tmp_path / "board" / "leaderboard.html",
        tmp_path / "cache" / "file-hashes.json",
        *(tmp_path / "cache" / "eval" / "results").glob("*.json"),
    ]
    assert len(written) > 4
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path

"""Evaluation: chunking, log-likelihood scoring, metrics and intervals, the store and the leaderboard."""

import json
import math
import multiprocessing
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import lora_adapter, tiny_llama, write_copa
from transformers import AutoTokenizer

from indictune.core.recipe import RecipeError
from indictune.eval import leaderboard, store
from indictune.eval.metrics import LN2, bits_per_unit, paired_bootstrap_delta
from indictune.eval.scoring import text_nll
from indictune.eval.suite import EvalConfig, evaluate
from indictune.eval.tasks import chunks, load_task

REPO = Path(__file__).resolve().parent.parent


def test_chunks_respect_the_byte_limit_and_keep_the_text():
    paragraphs = (REPO / "data/sample/heldout/hi.txt").read_text().splitlines()
    pieces = chunks(paragraphs, 300)
    assert all(len(p.encode()) <= 300 for p in pieces)
    assert "".join("".join(pieces).split()) == "".join("".join(paragraphs).split())
    assert chunks(["a" * 10, "b" * 5], 100) == ["a" * 10 + "\n" + "b" * 5]
    assert chunks(["ककककक"], 7) == ["कक", "कक", "क"]  # no space in reach: cut between characters


def test_tasks_load_by_name_and_fail_with_the_path_to_set():
    task = load_task("sample-heldout")
    assert task.type == "language_modeling" and "hi" in task.languages
    assert task.path("ta") == Path("data/sample/heldout/ta.txt")
    with pytest.raises(RecipeError, match="unknown task 'nope'; tasks in .*sample-heldout"):
        load_task("nope")
    flores = load_task("flores-dev")
    assert flores.path("hi").name == "hin_Deva.dev"
    missing = load_task("sample-heldout")
    missing.data.path = "/nowhere/{lang}.txt"
    with pytest.raises(FileNotFoundError, match=r"task sample-heldout \(hi\): no local copy at /nowhere/hi.txt"):
        missing.texts("hi")


def test_text_nll_matches_a_direct_computation_and_does_not_depend_on_batching(base_tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(base_tokenizer_dir)
    model = tiny_llama(len(tokenizer))
    texts = ["A short one.", "A somewhat longer sentence about the weather today.", "हिन्दी भी", "x"]
    batched = text_nll(model, tokenizer, texts, batch_size=3)
    single = text_nll(model, tokenizer, texts, batch_size=1)
    for text, (nll, n), (nll1, n1) in zip(texts, batched, single):
        ids = torch.tensor([[tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]])
        with torch.no_grad():
            logprobs = F.log_softmax(model(ids).logits[0, :-1], -1).gather(-1, ids[0, 1:, None])
        assert n == n1 == ids.shape[1] - 1
        assert nll == pytest.approx(-logprobs.sum().item(), rel=1e-5) == pytest.approx(nll1, rel=1e-5)


def test_text_nll_refuses_texts_longer_than_the_model(base_tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(base_tokenizer_dir)
    with pytest.raises(ValueError, match="longer than the model's 512 positions.*chunk_bytes"):
        text_nll(tiny_llama(len(tokenizer)), tokenizer, ["ह" * 400])


def test_bits_and_the_paired_bootstrap():
    assert bits_per_unit([LN2 * 10, LN2 * 20], [10, 20]) == pytest.approx(1.0)
    same = [3.0, 5.0, 4.0, 6.0]
    assert paired_bootstrap_delta(same, same, [10, 10, 10, 10]) == (0.0, 0.0, 0.0)
    base = [float(10 + i % 7) for i in range(50)]
    better = [b - 2.0 for b in base]
    delta, low, high = paired_bootstrap_delta(base, better, [10] * 50)
    assert delta == pytest.approx(-2.0 / 10 / LN2) and low == pytest.approx(delta) and high == pytest.approx(delta)
    noisy = [b - 1.0 + (3.0 if i % 2 else -3.0) for i, b in enumerate(base)]
    delta, low, high = paired_bootstrap_delta(base, noisy, [10] * 50, seed=1)
    assert low < delta < high and low < 0


def _write_runs(args):
    db, worker = args
    for i in range(10):
        store.add_run(
            db,
            {
                "created": "now",
                "label": f"m{worker}-{i}",
                "model": "m",
                "adapter": None,
                "base_label": None,
                "suite": "s",
                "tokenizer_sha256": None,
                "code_commit": None,
                "lineage": None,
            },
            [{"task": "t", "lang": "hi", "metric": "bits_per_character", "value": 1.0, "n": 3}],
        )


def test_the_store_takes_concurrent_writers(tmp_path):
    db = tmp_path / "lb.sqlite"
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pool.map(_write_runs, [(str(db), w) for w in range(4)])
    runs = store.latest_runs(db)
    assert len(runs) == 40 and all(len(r["scores"]) == 1 for r in runs)


def test_evaluate_against_a_base_and_render_the_leaderboard(tmp_path, tiny_base_dir):
    config = EvalConfig(
        tasks=["sample-heldout"],
        languages=["hi", "en"],
        model=str(tiny_base_dir),
        base=str(tiny_base_dir),
        output_dir=str(tmp_path / "eval"),
        db=str(tmp_path / "lb.sqlite"),
        bootstrap_samples=200,
    )
    results = evaluate(config)
    base_run, candidate = results["runs"]
    assert base_run["base_label"] is None and candidate["base_label"] == str(tiny_base_dir)
    for score in candidate["scores"]:
        assert score["delta"] == pytest.approx(0.0, abs=1e-9)  # the same model on the same chunks
        assert math.isfinite(score["value"])
    bpc = {s["lang"]: s["value"] for s in base_run["scores"] if s["metric"] == "bits_per_character"}
    assert set(bpc) == {"hi", "en"}
    assert (tmp_path / "eval" / "results.json").is_file()

    out = tmp_path / "board"
    tables = leaderboard.render(leaderboard.LeaderboardConfig(db=config.db, out=str(out)))
    assert [t["metric"] for t in tables] == ["bits_per_character", "tokens_per_word"]
    markdown = (out / "leaderboard.md").read_text()
    assert "| model | base | hi | en |" in markdown
    page = (out / "leaderboard.html").read_text()
    assert page.startswith("<!doctype html>") and "data:image/png;base64," in page
    assert "http://" not in page and "https://" not in page and "<script src" not in page  # self-contained
    assert (out / "sample-heldout-bits_per_character.png").stat().st_size > 1000


def test_english_regression_is_flagged_only_beyond_the_interval():
    row = {"cells": {"en": {"value": 3.2, "delta": 0.1, "delta_low": 0.05, "delta_high": 0.15}}}
    assert leaderboard.english_regressed(row)
    row["cells"]["en"]["delta_low"] = -0.01
    assert not leaderboard.english_regressed(row)
    assert not leaderboard.english_regressed({"cells": {}})


# ---- multiple choice, generation, adapters and the result cache ------------------------------------------


QUESTION_SHAPES = [
    ("राम घर गया क्योंकि ", ["वह थक गया था।", "बारिश"]),
    ("Question: who?\nAnswer:", [" a", " the long answer here", " b c"]),
    ("बहुत लंबा संदर्भ " * 20, [" हाँ", " नहीं बिलकुल नहीं"]),
    # Choices with a common beginning: it is scored once, with the context.
    ("उत्तर चुनें:", [" विकल्प क", " विकल्प ख", " विकल्प ग है"]),
    ("एक", [" दो तीन चार पाँच छह सात आठ नौ दस ग्यारह बारह", " तेरह"]),
    ("अकेला विकल्प", [" केवल यही"]),
]


def direct_loglikelihood(model, tokenizer, context, continuation):
    from indictune.eval.scoring import encode_pair

    ctx, cont = encode_pair(tokenizer, context, continuation)
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logprobs = F.log_softmax(model(ids).logits[0, :-1].double(), -1)
    return logprobs[len(ctx) - 1 :].gather(-1, ids[0, len(ctx) :, None]).sum().item()


@pytest.mark.parametrize("strategy", ["auto", "packed", "shared", "whole"])
@pytest.mark.parametrize("batch_size", [1, 2, 6])
def test_every_scoring_strategy_equals_each_choice_scored_alone(long_base_dir, strategy, batch_size):
    from transformers import AutoModelForCausalLM

    from indictune.eval.scoring import choice_loglikelihoods

    tokenizer = AutoTokenizer.from_pretrained(long_base_dir)
    model = AutoModelForCausalLM.from_pretrained(long_base_dir).eval()
    got = choice_loglikelihoods(model, tokenizer, QUESTION_SHAPES, batch_size=batch_size, strategy=strategy)
    assert [len(s) for s in got] == [len(c) for _, c in QUESTION_SHAPES]
    for (context, continuations), scores in zip(QUESTION_SHAPES, got):
        for continuation, score in zip(continuations, scores):
            assert score == pytest.approx(direct_loglikelihood(model, tokenizer, context, continuation), abs=1e-5)


def test_the_cheaper_strategy_and_passes_are_chosen_from_the_token_counts():
    from indictune.eval.scoring import _Costs, _Question

    # The proportions of the 6-layer benchmark model on a CPU: 19M parameters in the layers, 16M in the output.
    costs = _Costs(layers=19e6, output=16e6, pair=2 * 512 * 6, per_pass=16 * 19e6)
    long_context = [_Question(list(range(400)), 0, [[1, 2, 3]] * 4) for _ in range(8)]
    assert costs.shared(long_context) < costs.whole(long_context) / 3
    # Next to nothing to share: one pass of whole sequences costs less than a context pass and a choices' pass.
    short_context = [_Question([1, 2], 0, [list(range(10)), list(range(10, 20))])]
    assert costs.whole(short_context) < costs.shared(short_context)
    # Choices' remaining tokens run in passes of similar length; nothing left, no pass.
    _, passes = costs.rest_passes([30, 0, 29, 2, 1, 30, 2], context_width=100)
    assert passes == [[0, 5, 2], [3, 6, 4]]


def test_log_likelihoods_are_summed_in_double_precision():
    from indictune.eval.scoring import _target_logprobs

    # 60 terms near -10: a float32 sum is off by several of its last units (about 6e-5 at 600), float64 is exact.
    terms = torch.full((1, 60, 2), -10.0) + torch.linspace(0, 1e-3, 120).reshape(1, 60, 2)
    exact = sum(float(x) for x in terms[0, :, 1].double())
    assert _target_logprobs(terms, [[1] * 60]).item() == pytest.approx(exact, abs=1e-9)


def test_adapters_swap_on_one_base_and_match_single_runs(tmp_path, long_base_dir, monkeypatch):
    from transformers import AutoModelForCausalLM

    write_copa(tmp_path / "eval-data")
    monkeypatch.setenv("INDICTUNE_EVAL_DATA", str(tmp_path / "eval-data"))
    first, second = lora_adapter(long_base_dir, tmp_path / "a1", 1), lora_adapter(long_base_dir, tmp_path / "a2", 2)
    loads = []
    original = AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(
        AutoModelForCausalLM, "from_pretrained", lambda *a, **k: loads.append(a[0]) or original(*a, **k)
    )

    def run(adapters, name):
        return evaluate(
            EvalConfig(
                tasks=["sample-heldout", {"task": "indiccopa", "shots": 1}],
                languages=["hi", "ta"],
                model=str(long_base_dir),
                adapter=[str(a) for a in adapters],
                use_cache=False,
                output_dir=str(tmp_path / name),
                db=str(tmp_path / "lb.sqlite"),
                bootstrap_samples=100,
            )
        )

    both = run([first, second], "both")
    assert loads == [str(long_base_dir)]  # the base once, both adapters on it
    base_run, with_first, with_second = both["runs"]
    assert (
        with_first["base_label"] == base_run["label"] and with_first["adapter_sha256"] != with_second["adapter_sha256"]
    )
    alone = run([second], "alone")["runs"]
    for solo, together in ((alone[0], base_run), (alone[1], with_second)):
        assert [(s["task"], s["lang"], s["metric"]) for s in solo["scores"]] == [
            (s["task"], s["lang"], s["metric"]) for s in together["scores"]
        ]
        for a, b in zip(solo["scores"], together["scores"]):
            assert a["value"] == pytest.approx(b["value"], abs=1e-6)

    def bpc(run):
        return [s["value"] for s in run["scores"] if s["metric"] == "bits_per_character"]

    assert bpc(with_first) != bpc(base_run)  # the adapter is really applied
    accuracy = [s for s in with_first["scores"] if s["metric"] == "accuracy"]
    assert accuracy and all(
        0 <= s["p_value"] <= 1 and s["delta_low"] <= s["delta"] <= s["delta_high"] for s in accuracy
    )
    assert (tmp_path / "both" / "samples").is_dir()


def test_cached_results_are_reused_until_the_weights_change(tmp_path, long_base_dir, monkeypatch):
    import shutil

    from indictune.eval import suite

    model_dir = tmp_path / "checkpoint"
    shutil.copytree(long_base_dir, model_dir)
    config = EvalConfig(
        tasks=["sample-heldout"],
        languages=["hi"],
        model=str(model_dir),
        output_dir=str(tmp_path / "eval"),
        db=str(tmp_path / "lb.sqlite"),
        recheck_fraction=0.0,  # counted below: scoring only, not the batch-size-1 recheck
    )
    first = evaluate(config)["runs"][0]
    scored = []
    original = suite.score_task
    monkeypatch.setattr(suite, "score_task", lambda *a, **k: scored.append(1) or original(*a, **k))
    again = evaluate(config)["runs"][0]
    assert scored == [] and again["scores"] == first["scores"]  # served from the cache
    # The folder is overwritten by a new training run: new weights, new key, fresh scores.
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tiny_llama(len(tokenizer), seed=7, positions=4096).save_pretrained(model_dir)
    retrained = evaluate(config)["runs"][0]
    assert scored == [1] and retrained["weights_sha256"] != first["weights_sha256"]
    assert retrained["scores"][0]["value"] != first["scores"][0]["value"]


def test_offline_suite_skips_what_is_missing_and_the_page_lists_the_runs(tmp_path, long_base_dir, monkeypatch):
    monkeypatch.setenv("INDICTUNE_EVAL_DATA", str(tmp_path / "empty"))
    config = EvalConfig(
        tasks=["sample-heldout", "indiccopa"],
        languages=["hi", "en"],
        model=str(long_base_dir),
        base=str(long_base_dir),
        output_dir=str(tmp_path / "eval"),
        db=str(tmp_path / "lb.sqlite"),
        bootstrap_samples=100,
    )
    with pytest.raises(Exception, match=r"task indiccopa \(hi\): no local copy"):
        evaluate(config)
    config.missing_data = "skip"
    results = evaluate(config)
    assert [s["task"] for s in results["skipped"]] == ["indiccopa"]  # indiccopa has no English
    out = tmp_path / "board"
    leaderboard.render(leaderboard.LeaderboardConfig(db=config.db, out=str(out)))
    page = (out / "leaderboard.html").read_text()
    for run in store.latest_runs(config.db):
        assert html_escape(run["label"]) in page
    assert "Changes of" in page and (out / f"changes-{store.slug(results['runs'][1]['label'])}.png").is_file()


def html_escape(text):
    import html

    return html.escape(text)


def test_cached_results_are_not_reused_when_the_task_data_changes(tmp_path, long_base_dir, monkeypatch):
    from indictune.eval import suite

    text = tmp_path / "hi.txt"
    text.write_text("पहला अनुच्छेद यहाँ है।\nदूसरा अनुच्छेद।\n")
    task = tmp_path / "local-text.yaml"
    task.write_text(
        f"name: local-text\ndescription: a local file\ndata: {{path: '{tmp_path}/{{lang}}.txt'}}\nlanguages: [hi]\n"
    )
    config = EvalConfig(
        tasks=[str(task)],
        model=str(long_base_dir),
        output_dir=str(tmp_path / "eval"),
        db=str(tmp_path / "lb.sqlite"),
        recheck_fraction=0.0,  # counted below: scoring only, not the batch-size-1 recheck
    )
    first = evaluate(config)["runs"][0]["scores"]
    scored = []
    original = suite.score_task
    monkeypatch.setattr(suite, "score_task", lambda *a, **k: scored.append(1) or original(*a, **k))
    assert evaluate(config)["runs"][0]["scores"] == first and scored == []
    text.write_text("पहला अनुच्छेद बदल गया है।\nदूसरा अनुच्छेद।\n")  # a refreshed local copy of the data
    assert evaluate(config)["runs"][0]["scores"] != first and scored == [1]


def test_grade_school_math_generates_and_scores_the_final_number(tmp_path, tiny_base_dir, monkeypatch):
    from test_eval_tasks import write_mgsm

    monkeypatch.setenv("INDICTUNE_EVAL_DATA", str(tmp_path / "data"))
    write_mgsm(tmp_path / "data")
    config = EvalConfig(
        tasks=["mgsm"],
        languages=["en"],  # the tiny base's tokenizer covers English only
        model=str(tiny_base_dir),
        output_dir=str(tmp_path / "eval"),
        db=str(tmp_path / "lb.sqlite"),
        bootstrap_samples=100,
    )
    (run,) = evaluate(config)["runs"]
    (score,) = run["scores"]
    assert (score["task"], score["lang"], score["metric"], score["n"]) == ("mgsm", "en", "exact_match", 1)
    assert score["value"] in (0.0, 100.0)


def test_scores_that_depend_on_the_batch_are_flagged(tmp_path, tiny_base_dir, monkeypatch):
    """A seeded share of the items is rescored one at a time; a model whose outputs depend on what they are
    batched with (here: a bias that grows with the batch, injected in the model's forward) is flagged."""
    from indictune.eval import suite

    monkeypatch.setenv("INDICTUNE_CACHE", str(tmp_path / "cache"))  # the perturbed scores are cached apart

    def config(name, **settings):
        return EvalConfig(
            tasks=["sample-heldout"],
            languages=["en"],
            model=str(tiny_base_dir),
            output_dir=str(tmp_path / name),
            db=str(tmp_path / "lb.sqlite"),
            batch_size=4,
            use_cache=False,
            **settings,
        )

    (run,) = evaluate(config("steady", recheck_fraction=0.5))["runs"]
    assert run["batch_dependent"] == []

    class BatchDependent(suite.Loaded):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)

            def bias(module, inputs, output):
                output.logits[..., 0] += 0.5 * (output.logits.shape[0] - 1)
                return output

            self.model.register_forward_hook(bias)

    monkeypatch.setattr(suite, "Loaded", BatchDependent)
    (run,) = evaluate(config("shifting", recheck_fraction=0.5))["runs"]
    (flag,) = run["batch_dependent"]
    assert (flag["task"], flag["lang"], flag["flagged"]) == ("sample-heldout", "en", True)
    assert flag["largest_move"] > flag["tolerance"] == 1e-3
    recorded = json.loads((tmp_path / "shifting" / "results.json").read_text())
    assert recorded["runs"][0]["batch_dependent"] == run["batch_dependent"]

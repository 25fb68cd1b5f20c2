"""eval/vllm_backend.py scores as eval/scoring.py does, through a stand-in for vLLM that runs a tiny model on CPU.

The stand-in mirrors the names and shapes of vLLM's API (vllm/entrypoints/llm.py ``LLM.generate``,
vllm/sampling_params.py, vllm/outputs.py, vllm/logprobs.py, vllm/lora/request.py, vllm/inputs/data.py) and
records every request, so the tests check both the numbers and what would be sent to a real engine.
"""

from __future__ import annotations

import json
import shutil
import sys
import types
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import pytest
import torch
from conftest import REPO, lora_adapter
from transformers import AutoModelForCausalLM, AutoTokenizer

from indictune.eval import scoring
from indictune.eval.suite import Variant
from indictune.eval.vllm_backend import AdapterNeedsMerge, VllmBackend, VllmBackendError, VllmUnavailable

TEXTS = (REPO / "data/sample/heldout/en.txt").read_text().splitlines()[:4]


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: list[dict[int, Logprob] | None] | None
    outputs: list[CompletionOutput]
    finished: bool


@dataclass
class SamplingParams:
    """The fields the backend sets, with vLLM's defaults and its check on stop strings."""

    temperature: float = 1.0
    max_tokens: int | None = 16
    stop: list[str] | None = None
    prompt_logprobs: int | None = None
    detokenize: bool = True
    skip_special_tokens: bool = True

    def __post_init__(self):
        self.stop = list(self.stop or [])
        if self.stop and not self.detokenize:
            raise ValueError("stop strings are only supported when detokenize is True.")


@dataclass(frozen=True)
class LoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str = ""


class TokensPrompt(TypedDict):
    prompt_token_ids: list[int]


@dataclass
class Request:
    prompts: list[TokensPrompt]
    params: SamplingParams
    lora_request: LoRARequest | None
    use_tqdm: object


class FakeLLM:
    """``vllm.LLM`` run by transformers: prompt log-probabilities from a forward pass, greedy tokens from
    ``model.generate`` cut at stop strings as vLLM cuts them, a LoRA request served by that adapter of a PeftModel
    (loaded from its path the first time its id comes, as vLLM loads it)."""

    def __init__(self, model: str, **options):
        self.options = options
        self.model = AutoModelForCausalLM.from_pretrained(model).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model)  # vLLM detokenizes with the model's tokenizer
        self.requests: list[Request] = []

    def generate(self, prompts, sampling_params, *, use_tqdm=True, lora_request=None):
        self.requests.append(Request(list(prompts), sampling_params, lora_request, use_tqdm))
        bar = use_tqdm(total=len(prompts), desc="Processed prompts") if callable(use_tqdm) else None
        outputs = []
        with self._serving(lora_request), torch.no_grad():
            for number, prompt in enumerate(prompts):
                outputs.append(self._complete(str(number), prompt["prompt_token_ids"], sampling_params))
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
        return outputs

    def _serving(self, lora_request):
        from peft import PeftModel

        if lora_request is None:
            return self.model.disable_adapter() if isinstance(self.model, PeftModel) else nullcontext()
        name = lora_request.lora_name
        if not isinstance(self.model, PeftModel):
            self.model = PeftModel.from_pretrained(self.model, lora_request.lora_path, adapter_name=name).eval()
        elif name not in self.model.peft_config:
            self.model.load_adapter(lora_request.lora_path, adapter_name=name)
        self.model.set_adapter(name)
        return nullcontext()

    def _complete(self, request_id: str, ids: list[int], params: SamplingParams) -> RequestOutput:
        prompt_logprobs = None
        if params.prompt_logprobs is not None:
            logprobs = torch.log_softmax(self.model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
            prompt_logprobs = [None]
            for position in range(1, len(ids)):
                row = logprobs[position - 1]
                rank = int((row > row[ids[position]]).sum()) + 1
                top = row.topk(params.prompt_logprobs) if params.prompt_logprobs else None
                at = {int(t): Logprob(v.item(), r) for r, (v, t) in enumerate(zip(*top), start=1)} if top else {}
                prompt_logprobs.append({**at, ids[position]: Logprob(row[ids[position]].item(), rank)})
        generated = self.model.generate(
            input_ids=torch.tensor([ids]), max_new_tokens=params.max_tokens, do_sample=False, num_beams=1
        )[0, len(ids) :].tolist()
        text = self.tokenizer.decode(generated, skip_special_tokens=params.skip_special_tokens)
        finish, reason = "length", None
        for end in range(1, len(generated) + 1):  # vLLM stops at the token that completes a stop string
            partial = self.tokenizer.decode(generated[:end], skip_special_tokens=params.skip_special_tokens)
            found = sorted((partial.find(s), s) for s in params.stop if s in partial)
            if found:
                (at, reason), generated, finish = found[0], generated[:end], "stop"
                text = partial[:at]
                break
        completion = CompletionOutput(0, text, generated, None, None, finish, reason)
        return RequestOutput(request_id, None, ids, prompt_logprobs, [completion], True)


@pytest.fixture
def fake_vllm(monkeypatch):
    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams, vllm.TokensPrompt = FakeLLM, SamplingParams, TokensPrompt
    lora, request = types.ModuleType("vllm.lora"), types.ModuleType("vllm.lora.request")
    request.LoRARequest = LoRARequest
    vllm.lora, lora.request = lora, request
    for name, module in {"vllm": vllm, "vllm.lora": lora, "vllm.lora.request": request}.items():
        monkeypatch.setitem(sys.modules, name, module)
    return vllm


@pytest.fixture(scope="module")
def reference(tiny_base_dir):
    """The model and tokenizer as the transformers backend scores them, and its vocabulary size."""
    model = AutoModelForCausalLM.from_pretrained(tiny_base_dir).eval()
    return model, AutoTokenizer.from_pretrained(tiny_base_dir), model.get_input_embeddings().weight.shape[0]


@pytest.fixture(scope="module")
def adapter_dirs(tiny_base_dir, tmp_path_factory) -> list[Path]:
    out = tmp_path_factory.mktemp("adapters")
    return [lora_adapter(tiny_base_dir, out / f"a{seed}", seed) for seed in (1, 2)]


def base_backend(tiny_base_dir):
    backend = VllmBackend(str(tiny_base_dir), engine=FakeLLM(str(tiny_base_dir)))
    _, tokenizer, vocab_size = backend.use(Variant(str(tiny_base_dir), str(tiny_base_dir)))
    return backend, tokenizer, vocab_size


def test_text_nll_matches_scoring_and_sends_token_ids(fake_vllm, tiny_base_dir, reference):
    model, tokenizer, rows = reference
    backend, backend_tokenizer, vocab_size = base_backend(tiny_base_dir)
    assert vocab_size == rows
    got = backend.text_nll(backend_tokenizer, TEXTS, batch_size=8, desc="heldout en", vocab_size=vocab_size)
    expected = scoring.text_nll(model, tokenizer, TEXTS, batch_size=3, vocab_size=rows)
    for (nll, tokens), (want_nll, want_tokens) in zip(got, expected):
        assert tokens == want_tokens and nll == pytest.approx(want_nll, rel=1e-5, abs=1e-5)
    (request,) = backend.engine.requests  # one call: every text fits in one batch
    start = tokenizer.bos_token_id
    assert [p["prompt_token_ids"] for p in request.prompts] == [
        [start, *tokenizer(t, add_special_tokens=False)["input_ids"]] for t in TEXTS
    ]
    assert request.params == SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0, detokenize=False)
    assert request.lora_request is None and callable(request.use_tqdm)

    with pytest.raises(scoring.InputTooLong, match="longer than the model's 512 positions"):
        backend.text_nll(backend_tokenizer, [" ".join(TEXTS * 4)])
    with pytest.raises(VllmBackendError, match="cannot limit them to the first 500"):
        backend.text_nll(backend_tokenizer, TEXTS, vocab_size=500)


def test_choices_match_scoring_in_batches_of_questions(fake_vllm, tiny_base_dir, reference):
    model, tokenizer, rows = reference
    backend, backend_tokenizer, vocab_size = base_backend(tiny_base_dir)
    questions = [
        (TEXTS[0][:80] + " Answer:", [" the fox", " a camel", " nobody at all"]),
        (TEXTS[1][:60] + " ", ["water", "ice"]),  # trailing spaces move to the choices, as lm-eval does
        (TEXTS[2][:70], [" clean", " dirty"]),
    ]
    got = backend.choice_loglikelihoods(backend_tokenizer, questions, batch_size=2, vocab_size=vocab_size)
    for strategy in ("shared", "whole"):
        expected = scoring.choice_loglikelihoods(model, tokenizer, questions, 2, rows, strategy)
        for scores, want in zip(got, expected):
            assert scores == pytest.approx(want, rel=1e-5, abs=1e-5)
    # Two questions, then one: each choice whole, its context's tokens then its own.
    first, second = backend.engine.requests
    assert [len(first.prompts), len(second.prompts)] == [5, 2] and first.use_tqdm is False
    context_ids, choice_ids = scoring.encode_pair(tokenizer, questions[1][0], questions[1][1][1])
    assert first.prompts[4]["prompt_token_ids"] == context_ids + choice_ids


def test_generate_matches_scoring_and_stops_where_it_does(fake_vllm, tiny_base_dir, reference):
    model, tokenizer, rows = reference
    backend, backend_tokenizer, vocab_size = base_backend(tiny_base_dir)
    prompts = [t[:50] for t in TEXTS]
    free = backend.generate(backend_tokenizer, prompts, 16, [], vocab_size=vocab_size)
    assert free == scoring.generate(model, tokenizer, prompts, 16, [], batch_size=1, vocab_size=rows)
    # Stop strings taken from the answers themselves, so that they cut some of them.
    stop = [free[0][len(free[0]) // 2 :][:3], free[1][-4:-1]]
    assert all(s.strip() for s in stop)
    got = backend.generate(backend_tokenizer, prompts, 16, stop, batch_size=8, vocab_size=vocab_size)
    assert got == scoring.generate(model, tokenizer, prompts, 16, stop, batch_size=1, vocab_size=rows)
    assert got[0] != free[0]
    request = backend.engine.requests[-1]
    assert request.params == SamplingParams(temperature=0, max_tokens=16, stop=stop)
    assert request.prompts[0]["prompt_token_ids"][0] == tokenizer.bos_token_id


def test_each_adapter_goes_as_its_lora_request(fake_vllm, tiny_base_dir, reference, adapter_dirs):
    from peft import PeftModel

    model, tokenizer, rows = reference
    variants = [
        Variant(f"base + {path}", str(tiny_base_dir), str(path), f"adapter{i}") for i, path in enumerate(adapter_dirs)
    ]
    base = Variant(str(tiny_base_dir), str(tiny_base_dir))
    backend = VllmBackend(str(tiny_base_dir), variants, dtype="float32")  # the engine from vllm.LLM
    assert backend.engine.options == {
        "dtype": "float32",
        "trust_remote_code": False,
        "seed": 0,
        "enable_lora": True,
        "max_lora_rank": 8,  # the adapters' r=4, in vLLM's smallest slot that holds it
        "max_loras": 1,
        "max_cpu_loras": 2,
    }
    peft_model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_base_dir), adapter_dirs[0], adapter_name="adapter0"
    ).eval()
    peft_model.load_adapter(adapter_dirs[1], adapter_name="adapter1")
    for name in ("adapter1", None, "adapter0"):
        context, backend_tokenizer, vocab_size = backend.use(
            next(v for v in [*variants, base] if v.adapter_name == name)
        )
        with context:
            got = backend.text_nll(backend_tokenizer, TEXTS[:2], vocab_size=vocab_size)
        if name is None:
            with peft_model.disable_adapter():
                expected = scoring.text_nll(peft_model, tokenizer, TEXTS[:2], vocab_size=rows)
        else:
            peft_model.set_adapter(name)
            expected = scoring.text_nll(peft_model, tokenizer, TEXTS[:2], vocab_size=rows)
        assert [n for n, _ in got] == pytest.approx([n for n, _ in expected], rel=1e-5, abs=1e-5)
        number = None if name is None else int(name[-1])
        assert backend.engine.requests[-1].lora_request == (
            None if name is None else LoRARequest(name, number + 1, str(adapter_dirs[number].resolve()))
        )
    assert got != scoring.text_nll(model, tokenizer, TEXTS[:2], vocab_size=rows)  # the adapter changed the scores


def _with_new_rows(folder: Path, base_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    tokenizer.add_tokens(["नयाशब्द"])
    tokenizer.save_pretrained(folder)


@pytest.mark.parametrize(
    "change, refusal",
    [
        ({"trainable_token_indices": {"embed_tokens": [600]}}, "trains embedding rows"),
        ({"modules_to_save": ["embed_tokens", "lm_head"]}, r"whole layers \(embed_tokens, lm_head"),
        ({"use_dora": True}, "DoRA"),
        ({"r": 1024}, "rank 1024 is above vLLM's largest, 512"),
        (_with_new_rows, "tokenizer has 601 tokens and the model 600 rows"),
    ],
)
def test_adapters_vllm_cannot_apply_are_refused_with_the_merge(tmp_path, tiny_base_dir, adapter_dirs, change, refusal):
    folder = shutil.copytree(adapter_dirs[0], tmp_path / "adapter")
    if callable(change):
        change(folder, tiny_base_dir)
    else:
        settings = json.loads((folder / "adapter_config.json").read_text())
        (folder / "adapter_config.json").write_text(json.dumps({**settings, **change}))
    variant = Variant("x", str(tiny_base_dir), str(folder), "adapter0")
    with pytest.raises(AdapterNeedsMerge, match=refusal) as refused:
        VllmBackend(str(tiny_base_dir), [variant])  # refused before vLLM is needed: none is installed here
    assert f"python scripts/export.py --model {tiny_base_dir} --adapter {folder} --formats hf --output_dir OUT" in str(
        refused.value
    )
    assert "evaluate OUT/hf with --backend vllm" in str(refused.value)


def test_pickled_adapters_are_never_loaded(tmp_path, tiny_base_dir, adapter_dirs):
    folder = shutil.copytree(adapter_dirs[0], tmp_path / "adapter")
    (folder / "adapter_model.safetensors").rename(folder / "adapter_model.bin")
    with pytest.raises(VllmBackendError, match="no adapter_config.json and adapter_model.safetensors"):
        VllmBackend(str(tiny_base_dir), [Variant("x", str(tiny_base_dir), str(folder), "adapter0")])


def test_without_vllm_it_says_how_to_install_it_or_what_to_use(monkeypatch, tiny_base_dir):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm fails, whether or not it is installed
    with pytest.raises(VllmUnavailable, match="pip install vllm on a CUDA machine.*--backend transformers"):
        VllmBackend(str(tiny_base_dir))


class WithoutPromptLogprobs(FakeLLM):
    """vLLM versions whose V1 engine gave nothing for prompt_logprobs=0 (it tested the count for truth)."""

    def generate(self, *args, **kwargs):
        outputs = super().generate(*args, **kwargs)
        for output in outputs:
            output.prompt_logprobs = None
        return outputs


class WithoutThePromptToken(FakeLLM):
    """An engine that returns only the most likely token at each position."""

    def generate(self, *args, **kwargs):
        outputs = super().generate(*args, **kwargs)
        for output in outputs:
            output.prompt_logprobs = [None] + [{-1: Logprob(0.0, 1)} for _ in output.prompt_logprobs[1:]]
        return outputs


@pytest.mark.parametrize(
    "engine, refusal",
    [(WithoutPromptLogprobs, "returned no prompt log-probabilities"), (WithoutThePromptToken, "position 1 do not")],
)
def test_an_engine_without_the_prompt_tokens_log_probabilities_is_refused(fake_vllm, tiny_base_dir, engine, refusal):
    backend = VllmBackend(str(tiny_base_dir), engine=engine(str(tiny_base_dir)))
    _, tokenizer, _ = backend.use(Variant(str(tiny_base_dir), str(tiny_base_dir)))
    with pytest.raises(VllmBackendError, match=refusal):
        backend.text_nll(tokenizer, TEXTS[:1])


def test_the_suite_scores_through_vllm_as_through_transformers(
    fake_vllm, tmp_path, tiny_base_dir, adapter_dirs, monkeypatch
):
    """backend vllm in the suite: the same scores as transformers for every task type, with and without an adapter,
    the backend recorded with the run and in the store, and no cached result served across backends."""
    from test_eval_tasks import write_mgsm

    from indictune.eval import store
    from indictune.eval.suite import EvalConfig, evaluate

    monkeypatch.setenv("INDICTUNE_EVAL_DATA", str(tmp_path / "data"))
    write_mgsm(tmp_path / "data")
    answers = {f"mc_answer{k + 1}": " ".join(TEXTS[k].split()[:4]) for k in range(4)}
    (tmp_path / "data" / "belebele").mkdir()
    (tmp_path / "data" / "belebele" / "eng_Latn.jsonl").write_text(
        "\n".join(
            json.dumps({"flores_passage": t[:120], "question": "Which?", **answers, "correct_answer_num": "2"})
            for t in TEXTS
        )
    )
    results = {}
    for backend in ("transformers", "vllm"):
        config = EvalConfig(
            tasks=["sample-heldout", "belebele", "mgsm"],
            languages=["en"],
            model=str(tiny_base_dir),
            adapter=[str(adapter_dirs[0])],
            backend=backend,
            output_dir=str(tmp_path / backend),
            db=str(tmp_path / "lb.sqlite"),
            bootstrap_samples=100,
        )
        results[backend] = evaluate(config)["runs"]
    for ours, theirs in zip(results["transformers"], results["vllm"]):
        assert theirs["backend"] == "vllm" and ours["backend"] == "transformers"
        assert [(s["task"], s["metric"], s["n"]) for s in ours["scores"]] == [
            (s["task"], s["metric"], s["n"]) for s in theirs["scores"]
        ]
        for a, b in zip(ours["scores"], theirs["scores"]):
            assert b["value"] == pytest.approx(a["value"], rel=1e-5, abs=1e-5), (a, b)
    assert {run["backend"] for run in store.latest_runs(tmp_path / "lb.sqlite")} == {"vllm"}
    assert len({s["metric"] for run in results["vllm"] for s in run["scores"]}) >= 4  # every task type scored


@pytest.mark.parametrize(
    "settings, refusal",
    [
        ({"backend": "vllm", "device_map": "auto"}, "split it with tensor_parallel_size"),
        ({"tensor_parallel_size": 2}, "tensor_parallel_size is vLLM's"),
    ],
)
def test_how_a_model_is_split_belongs_to_its_backend(tiny_base_dir, settings, refusal):
    from indictune.eval.suite import EvalConfig, EvalError

    with pytest.raises(EvalError, match=refusal):
        EvalConfig(tasks=["sample-heldout"], model=str(tiny_base_dir), **settings)

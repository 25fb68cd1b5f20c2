"""Multiple-choice scoring, ours against lm-evaluation-harness's HF backend, on three task shapes in one run.

The same model, tokenizer, questions and batch size go through both. Each shape is timed in an ABBA order
(ours, theirs, theirs, ours, ...), so that a load that rises or falls during the run weighs on both sides
alike, and the speedup is the ratio of the two sides' median times. The shapes:

- ``copa``: two choices after a short premise (IndicCOPA's task; items written from FLORES-200 dev sentences);
- ``belebele``: four short answers after a passage of three FLORES sentences and a question (Belebele's task);
- ``indicnews``: eleven topic labels after a news headline (L3Cube-IndicNews, from the shared data).

The model is randomly initialised from a real architecture's config (nothing is downloaded).

Agreement is checked against lm-eval with ``softmax_dtype=float64``: with its default float32 sums, its own
per-choice values are off from the exact ones by a few units in the last place of a float32 near -300, up to
1.2e-4 (measured against a float64 model), which would hide any real difference. Both figures are written.

    python scripts/bench_eval.py [--shapes "[copa, belebele, indicnews]"] [--limit 200] [--model small] [--check true]

``--check true`` exits 1 unless, on every shape, the log-likelihoods agree within 1e-4 and ours is at least
1.5x faster (2x on belebele and indicnews, where there is context to share).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, LlamaTokenizer

from indictune.core.paths import shared_data_dir
from indictune.core.recipe import field, parse_cli
from indictune.eval import scoring
from indictune.eval.tasks import load_task

MODELS = {
    # A small Llama for CPU runs, and Llama-3.1-8B's own shape for a GPU.
    "small": dict(
        hidden_size=512, intermediate_size=1376, num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=8
    ),
    "llama-3.1-8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        rope_theta=500000.0,
    ),
}
# The task each shape runs, and the speedup it must reach.
SHAPES = {"copa": ("indiccopa", 1.5), "belebele": ("belebele", 2.0), "indicnews": ("indicnews", 2.0)}
AGREEMENT = 1e-4


@dataclass
class BenchConfig:
    shapes: list[str] = field(default_factory=lambda: list(SHAPES), help=", ".join(SHAPES))
    limit: int = field(200, minimum=1, help="questions per shape")
    repeats: int = field(2, minimum=1, help="timed runs of each side per shape (ABBA order)")
    model: str = field("small", help=", ".join(MODELS))
    tokenizer: str = field(
        "{shared}/tokenizers/llama2/tokenizer.model",
        help="a SentencePiece model file or a tokenizer folder ({shared}: $INDICTUNE_SHARED_DATA)",
    )
    batch_size: int = field(16, minimum=1)
    dtype: str = field("float32", help="float32 for the agreement check; bfloat16 for speed on a GPU")
    device: str | None = field(None, help="default: cuda if available, else cpu")
    output: str = field("runs/bench/eval.json", help="figures as JSON")
    check: bool = field(False, help="exit 1 unless every shape meets its speedup and agrees within 1e-4")

    def __post_init__(self) -> None:
        unknown = sorted(set(self.shapes) - set(SHAPES))
        if unknown:
            raise ValueError(f"unknown shapes {unknown}; choose from {', '.join(SHAPES)}")


def flores_sentences(code: str = "hin_Deva") -> list[str]:
    path = shared_data_dir() / "flores200" / "dev" / f"{code}.dev"
    return [line for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def first_words(sentence: str, n: int) -> str:
    return " ".join(sentence.split()[:n])


def write_items(folder: Path, limit: int) -> None:
    """IndicCOPA- and Belebele-shaped Hindi items made of FLORES dev sentences, as local copies of those tasks'
    data (the shapes matter here, not the answers)."""
    s = flores_sentences()
    copa = [
        {
            "premise": first_words(s[3 * i % len(s)], 7) + "।",
            "choice1": first_words(s[(3 * i + 1) % len(s)], 6),
            "choice2": first_words(s[(3 * i + 2) % len(s)], 6),
            "question": "cause" if i % 2 else "effect",
            "label": i % 2,
        }
        for i in range(limit)
    ]
    belebele = [
        {
            "flores_passage": " ".join(s[(8 * i + k) % len(s)] for k in range(3)),
            "question": first_words(s[(8 * i + 3) % len(s)], 8) + "?",
            **{f"mc_answer{k + 1}": first_words(s[(8 * i + 4 + k) % len(s)], 4) for k in range(4)},
            "correct_answer_num": str(1 + i % 4),
        }
        for i in range(limit)
    ]
    for name, file, rows in (("indiccopa", "hi", copa), ("belebele", "hin_Deva", belebele)):
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / f"{file}.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows))


def load_tokenizer(spec: str):
    path = Path(spec.format(shared=shared_data_dir()))
    if path.is_file():  # a bare SentencePiece model: its folder loads as a Llama tokenizer
        return LlamaTokenizer.from_pretrained(path.parent, add_bos_token=True)
    return AutoTokenizer.from_pretrained(path)


def lm_eval_loglikelihoods(harness, questions) -> list[list[float]]:
    from lm_eval.api.instance import Instance

    requests = [
        Instance(request_type="loglikelihood", doc={}, arguments=(context, choice), idx=j)
        for context, choices in questions
        for j, choice in enumerate(choices)
    ]
    flat = [ll for ll, _ in harness.loglikelihood(requests, disable_tqdm=True)]
    grouped, at = [], 0
    for _, choices in questions:
        grouped.append(flat[at : at + len(choices)])
        at += len(choices)
    return grouped


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def largest_difference(a: list[list[float]], b: list[list[float]]) -> float:
    return max(abs(x - y) for p, q in zip(a, b) for x, y in zip(p, q))


def strategies_chosen(model, tokenizer, questions, batch_size: int) -> dict[str, int]:
    """How many batches ``auto`` scored each way (counted on an untimed run)."""
    counts = {"packed": 0, "shared": 0, "whole": 0}
    originals = {name: getattr(scoring, f"_{name}_batch") for name in counts}

    def counting(name):
        def run(*args):
            counts[name] += 1
            return originals[name](*args)

        return run

    try:
        for name in counts:
            setattr(scoring, f"_{name}_batch", counting(name))
        scoring.choice_loglikelihoods(model, tokenizer, questions, batch_size)
    finally:
        for name, run in originals.items():
            setattr(scoring, f"_{name}_batch", run)
    return counts


def bench_shape(shape: str, model, tokenizer, config: BenchConfig, device: str) -> dict:
    from lm_eval.models.huggingface import HFLM

    task_name, goal = SHAPES[shape]
    task = load_task(task_name)
    items, _ = task.items("hi", 0, config.limit)
    questions = [(item["context"], [task.target_delimiter + c for c in item["choices"]]) for item in items]
    context_tokens = [len(scoring.encode_pair(tokenizer, c, cs[0])[0]) for c, cs in questions]
    choice_tokens = [len(scoring.encode_pair(tokenizer, c, x)[1]) for c, cs in questions for x in cs]

    def harness(softmax_dtype=None):
        return HFLM(
            pretrained=model,
            tokenizer=tokenizer,
            batch_size=config.batch_size,
            device=device,
            add_bos_token=True,
            softmax_dtype=softmax_dtype,
        )

    default, exact = harness(), harness("float64")

    def ours():
        return scoring.choice_loglikelihoods(model, tokenizer, questions, config.batch_size, desc=shape)

    def theirs():
        return lm_eval_loglikelihoods(default, questions)

    warm = questions[: config.batch_size]
    scoring.choice_loglikelihoods(model, tokenizer, warm, config.batch_size)
    lm_eval_loglikelihoods(default, warm)
    seconds = {"indictune": [], "lm-evaluation-harness": []}
    for repeat in range(config.repeats):
        order = [("indictune", ours), ("lm-evaluation-harness", theirs)]
        for name, run in order if repeat % 2 == 0 else order[::-1]:
            result, took = timed(run)
            seconds[name].append(took)
            if name == "indictune":
                our_scores = result
            else:
                their_scores = result
    reference = lm_eval_loglikelihoods(exact, questions)
    median = {name: statistics.median(times) for name, times in seconds.items()}
    agree = sum(max(range(len(x)), key=x.__getitem__) == max(range(len(y)), key=y.__getitem__)
                for x, y in zip(our_scores, reference))  # fmt: skip
    return {
        "task": task_name,
        "questions": len(questions),
        "choices_per_question": len(questions[0][1]),
        "mean_context_tokens": statistics.mean(context_tokens),
        "mean_choice_tokens": statistics.mean(choice_tokens),
        "seconds": seconds,
        "questions_per_second": {name: len(questions) / m for name, m in median.items()},
        "speedup": median["lm-evaluation-harness"] / median["indictune"],
        "speedup_goal": goal,
        "max_abs_loglikelihood_difference": largest_difference(our_scores, reference),
        "max_abs_difference_to_lm_eval_float32_sums": largest_difference(our_scores, their_scores),
        "lm_eval_float32_sums_vs_float64_sums": largest_difference(their_scores, reference),
        "same_argmax": agree / len(questions),
        "batches": strategies_chosen(model, tokenizer, questions, config.batch_size),
    }


def main() -> None:
    config = parse_cli(BenchConfig, description=__doc__)
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(config.tokenizer)
    torch.manual_seed(0)
    model_config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=8192,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **MODELS[config.model],
    )
    model = LlamaForCausalLM(model_config).to(device=device, dtype=getattr(torch, config.dtype)).eval()
    figures = {
        "model": config.model,
        "dtype": config.dtype,
        "device": torch.cuda.get_device_name()
        if device == "cuda"
        else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads",
        "batch_size": config.batch_size,
        "repeats": config.repeats,
        "shapes": {},
    }
    missed = []
    with tempfile.TemporaryDirectory() as items_dir:
        write_items(Path(items_dir), config.limit)
        os.environ["INDICTUNE_EVAL_DATA"] = items_dir
        for shape in config.shapes:
            result = bench_shape(shape, model, tokenizer, config, device)
            figures["shapes"][shape] = result
            print(
                f"{shape:>10}: {result['questions']} questions x {result['choices_per_question']} choices, "
                f"{result['mean_context_tokens']:.0f} context + {result['mean_choice_tokens']:.0f} choice tokens; "
                f"speedup {result['speedup']:.2f}x (goal {result['speedup_goal']}x); largest log-likelihood "
                f"difference {result['max_abs_loglikelihood_difference']:.2e} (to lm-eval's float32 sums "
                f"{result['max_abs_difference_to_lm_eval_float32_sums']:.2e}); batches {result['batches']}"
            )
            if result["speedup"] < result["speedup_goal"]:
                missed.append(f"{shape}: {result['speedup']:.2f}x < {result['speedup_goal']}x")
            if result["max_abs_loglikelihood_difference"] > AGREEMENT:
                missed.append(f"{shape}: difference {result['max_abs_loglikelihood_difference']:.2e} > {AGREEMENT}")
    figures["missed"] = missed
    Path(config.output).parent.mkdir(parents=True, exist_ok=True)
    Path(config.output).write_text(json.dumps(figures, indent=2) + "\n")
    if missed:
        print("goals missed: " + "; ".join(missed))
        if config.check:
            raise SystemExit(1)


if __name__ == "__main__":
    main()

"""Multiple-choice scoring, ours against lm-evaluation-harness's HF backend, in one run.

The same model, tokenizer and questions go through both; the script prints the largest difference in
per-choice log-likelihood and each side's questions per second. The model is randomly initialised
from a real architecture's config (nothing is downloaded); the questions are a project task's.

    python scripts/bench_eval.py --task indicnews --lang hi --limit 300 [--model llama-3.1-8b] [--check true]

``--check true`` exits 1 unless the log-likelihoods agree within 1e-4 (float32) and ours is at least
2x faster.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, LlamaTokenizer

from indictune.core.paths import shared_data_dir
from indictune.core.recipe import field, parse_cli
from indictune.eval.scoring import choice_loglikelihoods
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


@dataclass
class BenchConfig:
    task: str = field("indicnews", help="a multiple_choice task in eval/tasks/")
    lang: str = "hi"
    limit: int = field(300, help="questions scored")
    shots: int = 0
    model: str = field("small", help=", ".join(MODELS))
    tokenizer: str = field(
        "{shared}/tokenizers/llama2/tokenizer.model",
        help="a SentencePiece model file or a tokenizer folder ({shared}: $INDICTUNE_SHARED_DATA)",
    )
    batch_size: int = 16
    dtype: str = field("float32", help="float32 for the agreement check; bfloat16 for speed on a GPU")
    device: str | None = field(None, help="default: cuda if available, else cpu")
    output: str = field("runs/bench/eval.json", help="figures as JSON")
    check: bool = field(False, help="exit 1 unless agreement <= 1e-4 and ours >= 2x faster")


def load_tokenizer(spec: str):
    path = Path(spec.format(shared=shared_data_dir()))
    if path.is_file():  # a bare SentencePiece model: its folder loads as a Llama tokenizer
        return LlamaTokenizer.from_pretrained(path.parent, add_bos_token=True)
    return AutoTokenizer.from_pretrained(path)


def lm_eval_loglikelihoods(model, tokenizer, questions, batch_size: int, device: str) -> list[list[float]]:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    harness = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device, add_bos_token=True)
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
    task = load_task(config.task)
    if task.type != "multiple_choice":
        raise SystemExit(f"error: {config.task} is a {task.type} task; the benchmark compares multiple-choice scoring")
    items, _ = task.items(config.lang, config.shots, config.limit)
    questions = [(item["context"], [task.target_delimiter + c for c in item["choices"]]) for item in items]
    choices = sum(len(c) for _, c in questions)
    print(f"{len(questions)} questions, {choices} choices, {config.task} {config.lang}, {config.model} on {device}")

    warm = questions[: config.batch_size]
    choice_loglikelihoods(model, tokenizer, warm, config.batch_size)
    lm_eval_loglikelihoods(model, tokenizer, warm, config.batch_size, device)
    ours, ours_seconds = timed(lambda: choice_loglikelihoods(model, tokenizer, questions, config.batch_size))
    theirs, theirs_seconds = timed(
        lambda: lm_eval_loglikelihoods(model, tokenizer, questions, config.batch_size, device)
    )
    difference = max(abs(a - b) for x, y in zip(ours, theirs) for a, b in zip(x, y))
    agree = sum(
        max(range(len(x)), key=x.__getitem__) == max(range(len(y)), key=y.__getitem__) for x, y in zip(ours, theirs)
    )
    figures = {
        "task": config.task,
        "lang": config.lang,
        "questions": len(questions),
        "choices": choices,
        "model": config.model,
        "dtype": config.dtype,
        "device": torch.cuda.get_device_name()
        if device == "cuda"
        else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads",
        "batch_size": config.batch_size,
        "indictune": {"seconds": ours_seconds, "questions_per_second": len(questions) / ours_seconds},
        "lm-evaluation-harness": {"seconds": theirs_seconds, "questions_per_second": len(questions) / theirs_seconds},
        "speedup": theirs_seconds / ours_seconds,
        "max_abs_loglikelihood_difference": difference,
        "same_argmax": agree / len(questions),
    }
    for name in ("indictune", "lm-evaluation-harness"):
        print(f"{name:>22}: {figures[name]['seconds']:.2f} s, {figures[name]['questions_per_second']:.1f} questions/s")
    print(
        f"speedup {figures['speedup']:.2f}x; largest per-choice log-likelihood difference {difference:.2e}; "
        f"same answer on {agree}/{len(questions)}"
    )
    Path(config.output).parent.mkdir(parents=True, exist_ok=True)
    Path(config.output).write_text(json.dumps(figures, indent=2) + "\n")
    if config.check and not (difference <= 1e-4 and figures["speedup"] >= 2):
        raise SystemExit(1)


if __name__ == "__main__":
    main()

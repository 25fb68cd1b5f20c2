"""Score a checkpoint and its base on the same tasks, say how they differ, and record both on the leaderboard.

``--model M --adapter A [--adapter B ...]``: the base is M, the candidates are M with each adapter.
``--model C --base B``: a full checkpoint C against its base B.  ``--model M`` alone: M is scored.
Each candidate's delta to the base comes with a 95% paired bootstrap interval over the text chunks.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from data import languages
from data.io import atomic_write_text
from data.recipe import field
from eval import store
from eval.metrics import bits_per_unit, paired_bootstrap_delta
from eval.scoring import text_nll
from eval.tasks import Task, chunks, load_task
from training.lineage import code_commit, tokenizer_hash


@dataclass
class EvalConfig:
    tasks: list[str] = field(help="task names (eval/tasks/<name>.yaml) or paths to task YAML files")
    model: str = field(help="model id or folder; the base when adapters are given")
    languages: list[str] | None = field(None, help="restrict to these languages (default: each task's own)")
    adapter: list[str] = field(default_factory=list, help="adapter folders to score on top of the model")
    base: str | None = field(None, help="a separate base model to compare a full checkpoint with")
    output_dir: str = field("runs/eval", help="results.json goes here")
    db: str = field("runs/leaderboard.sqlite", help="the leaderboard store")
    batch_size: int = 8
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = field("auto", help="auto: bf16 on GPU, fp32 on CPU")
    device: str | None = field(None, help="default: cuda if available, else cpu")
    trust_remote_code: bool = field(False, help="allow custom model code from the model's repository")
    bootstrap_samples: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.adapter and self.base:
            raise ValueError("give --adapter (the base is --model) or --base (for a full checkpoint), not both")


@dataclass
class Variant:
    label: str
    model: str
    adapter: str | None = None


def _dtype(config: EvalConfig, device: str) -> torch.dtype:
    if config.dtype != "auto":
        return getattr(torch, config.dtype)
    return torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32


def load_variant(variant: Variant, config: EvalConfig, device: str):
    tokenizer = AutoTokenizer.from_pretrained(variant.adapter or variant.model, trust_remote_code=config.trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        variant.model, dtype=_dtype(config, device), use_safetensors=True, trust_remote_code=config.trust_remote_code
    )
    if variant.adapter:
        if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:  # an adapter trained with new tokens
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        model = PeftModel.from_pretrained(model, variant.adapter)
    return model.to(device).eval(), tokenizer


def _lineage(variant: Variant) -> dict | None:
    path = Path(variant.adapter or variant.model) / "lineage.json"
    return json.loads(path.read_text()) if path.is_file() else None


def plan(config: EvalConfig) -> tuple[Variant | None, list[Variant]]:
    if config.adapter:
        return Variant(config.model, config.model), [Variant(f"{config.model} + {a}", config.model, a) for a in config.adapter]
    if config.base:
        return Variant(config.base, config.base), [Variant(config.model, config.model)]
    return None, [Variant(config.model, config.model)]


def score_variant(variant: Variant, tasks: list[tuple[Task, list[str]]], config: EvalConfig,
                  device: str) -> tuple[str, dict]:
    """The tokenizer's hash, and per (task, lang) the chunks' nll, characters, bytes, tokens and words."""
    model, tokenizer = load_variant(variant, config, device)
    scored = {}
    for task, langs in tasks:
        for lang in langs:
            pieces = chunks(task.texts(lang), task.chunk_bytes)
            nll = text_nll(model, tokenizer, pieces, config.batch_size, desc=f"{variant.label} {task.name} {lang}")
            scored[task.name, lang] = {
                "nll": [n for n, _ in nll],
                "chars": [len(p) for p in pieces],
                "bytes": [len(p.encode("utf-8")) for p in pieces],
                "tokens": sum(t for _, t in nll),
                "words": sum(len(p.split()) for p in pieces),
            }
    return tokenizer_hash(tokenizer), scored


def scores_for(scored: dict, base: dict | None, config: EvalConfig) -> list[dict]:
    rows = []
    for key, s in scored.items():
        task, lang = key
        n = len(s["chars"])
        for metric, units in (("bits_per_character", "chars"), ("bits_per_byte", "bytes")):
            row = {"task": task, "lang": lang, "metric": metric, "value": bits_per_unit(s["nll"], s[units]), "n": n}
            if base is not None:
                delta, low, high = paired_bootstrap_delta(
                    base[key]["nll"], s["nll"], s[units], config.bootstrap_samples, config.seed
                )
                row.update(delta=delta, delta_low=low, delta_high=high)
            rows.append(row)
        fertility = s["tokens"] / s["words"]
        row = {"task": task, "lang": lang, "metric": "tokens_per_word", "value": fertility, "n": s["words"]}
        if base is not None:
            row["delta"] = fertility - base[key]["tokens"] / base[key]["words"]
        rows.append(row)
    return rows


def evaluate(config: EvalConfig) -> dict:
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    tasks = []
    for name in config.tasks:
        task = load_task(name)
        wanted = [languages.get(code).code for code in (config.languages or task.languages)]
        tasks.append((task, [code for code in wanted if code in task.languages]))
    base, candidates = plan(config)
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")

    def run_record(variant: Variant, result: tuple[str, dict], compare_to: dict | None) -> dict:
        tokenizer_sha256, scored = result
        return {
            "created": created,
            "label": variant.label,
            "model": variant.model,
            "adapter": variant.adapter,
            "base_label": base.label if compare_to is not None else None,
            "suite": ",".join(config.tasks),
            "tokenizer_sha256": tokenizer_sha256,
            "code_commit": code_commit(),
            "lineage": _lineage(variant),
            "scores": scores_for(scored, compare_to, config),
        }

    base_result = score_variant(base, tasks, config, device) if base else None
    runs = [run_record(base, base_result, None)] if base else []
    for candidate in candidates:
        runs.append(run_record(candidate, score_variant(candidate, tasks, config, device),
                               base_result[1] if base_result else None))
    for run in runs:
        store.add_run(config.db, {k: v for k, v in run.items() if k != "scores"}, run["scores"])
    results = {"config": vars(config), "runs": runs}
    atomic_write_text(Path(config.output_dir) / "results.json", json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    return results

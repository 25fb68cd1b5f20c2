"""Score a checkpoint and its base on the same tasks, say how they differ, and record both on the leaderboard.

``--model M --adapter A [--adapter B ...]``: the base is M, loaded once; each adapter is swapped onto it
(nothing merged, nothing written). ``--model C --base B``: a full checkpoint C against its base B.
``--model M`` alone: M is scored. Per task and language, each candidate's delta to the base comes with a
95% paired bootstrap interval and, for right/wrong outcomes, McNemar's exact p.

Nothing false is recorded: an adapter must come as safetensors and belong on M (its lineage's base
weight hash, else its adapter_config's base name), the weights are hashed before loading and again
after scoring, every scored text must be carried by its tokens and every score lie in its metric's
range. A suite entry whose prompts do not fit the model is skipped with its reason.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import random
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from indictune.core import languages
from indictune.core.hashing import tokenizer_sha256
from indictune.core.io import atomic_write_text
from indictune.core.lineage import code_commit
from indictune.core.log import get_logger
from indictune.core.recipe import check_ranges, field, to_dict
from indictune.eval import cache, store
from indictune.eval.metrics import (
    bits_per_unit,
    choice_correct,
    chrf_from_statistics,
    chrf_statistics,
    exact_match,
    mcnemar_p,
    mean_delta,
    numeric_match,
    out_of_range,
    paired_bootstrap,
    paired_bootstrap_delta,
    token_f1,
)
from indictune.eval.scoring import InputTooLong, ScoringError, choice_loglikelihoods, generate, text_nll
from indictune.eval.tasks import MissingTaskData, Task, chunks, load_task

logger = get_logger("eval")


class EvalError(ValueError):
    """An evaluation that cannot record a true result; the message names the model, task and fix."""


@dataclass
class TaskRun:
    task: str = field(help="task name (eval/tasks/<name>.yaml) or path to a task YAML file")
    languages: list[str] | None = field(None, help="default: the suite's languages, else the task's own")
    shots: int = field(0, minimum=0, help="worked examples before each question")
    limit: int | None = field(None, minimum=1, help="score only the first N items per language")

    def __post_init__(self) -> None:
        check_ranges(self, f"task {self.task}")


@dataclass
class EvalConfig:
    tasks: list[TaskRun | str] = field(help="task names, or {task, languages, shots, limit}")
    model: str = field(help="model id or folder; the base when adapters are given")
    languages: list[str] | None = field(None, help="restrict to these languages (default: each task's own)")
    adapter: list[str] = field(default_factory=list, help="adapter folders to score on top of the model")
    base: str | None = field(None, help="a separate base model to compare a full checkpoint with")
    output_dir: str = field("runs/eval", help="results.json and per-item samples go here")
    db: str = field("runs/leaderboard.sqlite", help="the leaderboard store")
    batch_size: int = field(8, minimum=1, help="questions (or text chunks) per forward pass")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = field("auto", help="auto: bf16 on GPU, fp32 on CPU")
    device: str | None = field(None, help="default: cuda if available, else cpu")
    trust_remote_code: bool = field(False, help="allow custom model code from the model's repository")
    missing_data: Literal["error", "skip"] = field(
        "error", help="a task with no local data and no hub access: stop, or skip it and report it"
    )
    share_context: bool = field(True, help="run a question's context once for all its choices")
    use_cache: bool = field(True, help="reuse results cached under the same weights, tokenizer and task")
    allow_base_mismatch: bool = field(
        False, help="score an adapter on a model other than the one it was trained on (recorded and shown as such)"
    )
    bootstrap_samples: int = field(1000, minimum=100, help="resamples for the 95% paired intervals")
    recheck_fraction: float = field(
        0.01,
        minimum=0.0,
        maximum=1.0,
        help="rescore this share of each task's items (at least one) one at a time, to catch scores that depend "
        "on the batch; 0 turns the check off",
    )
    recheck_tolerance: float = field(
        1e-3,
        minimum=0.0,
        help="the most a log-likelihood (nats per choice, per text byte) may move at batch size 1; a generated "
        "answer must not change at all",
    )
    seed: int = field(0, minimum=0, help="seeds few-shot draws and the bootstrap")

    def __post_init__(self) -> None:
        check_ranges(self, "evaluation")
        if self.adapter and self.base:
            raise ValueError("give --adapter (the base is --model) or --base (for a full checkpoint), not both")
        self.tasks = [
            TaskRun(t) if isinstance(t, str) else TaskRun(**t) if isinstance(t, dict) else t for t in self.tasks
        ]


@dataclass
class Variant:
    label: str
    model: str
    adapter: str | None = None
    adapter_name: str | None = None  # its name inside the PeftModel that holds every adapter


def _dtype(config: EvalConfig, device: str) -> torch.dtype:
    if config.dtype != "auto":
        return getattr(torch, config.dtype)
    return torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32


def plan(config: EvalConfig) -> tuple[Variant | None, list[Variant]]:
    if config.adapter:
        candidates = [
            Variant(f"{config.model} + {a}", config.model, a, f"adapter{i}") for i, a in enumerate(config.adapter)
        ]
        return Variant(config.model, config.model), candidates
    if config.base:
        return Variant(config.base, config.base), [Variant(config.model, config.model)]
    return None, [Variant(config.model, config.model)]


class Loaded:
    """A model with its variants' tokenizers; the base once, with every adapter attached to it."""

    def __init__(self, model_path: str, adapters: list[Variant], config: EvalConfig, device: str):
        kwargs = {"trust_remote_code": config.trust_remote_code}
        self.tokenizers = {None: AutoTokenizer.from_pretrained(model_path, **kwargs)}
        model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=_dtype(config, device), use_safetensors=True, **kwargs
        )
        self.base_rows = model.get_input_embeddings().weight.shape[0]
        for variant in adapters:
            self.tokenizers[variant.adapter_name] = AutoTokenizer.from_pretrained(variant.adapter, **kwargs)
        rows = max([self.base_rows] + [len(t) for t in self.tokenizers.values()])
        if rows > self.base_rows:  # adapters trained with new tokens carry those rows; the base never predicts them
            model.resize_token_embeddings(rows, mean_resizing=False)
        if adapters:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapters[0].adapter, adapter_name=adapters[0].adapter_name)
            for variant in adapters[1:]:
                model.load_adapter(variant.adapter, adapter_name=variant.adapter_name)
        self.model = model.to(device).eval()

    def use(self, variant: Variant):
        """Context in which ``self.model`` computes as ``variant``; its tokenizer; its vocabulary size."""
        tokenizer = self.tokenizers[variant.adapter_name]
        if variant.adapter_name is None:
            context = self.model.disable_adapter() if hasattr(self.model, "disable_adapter") else nullcontext()
            return context, tokenizer, self.base_rows
        self.model.set_adapter(variant.adapter_name)
        return nullcontext(), tokenizer, max(self.base_rows, len(tokenizer))


def score_task(model, tokenizer, vocab_size: int, task: Task, items, config: EvalConfig, desc: str) -> dict:
    """Per-item results of one task in one language: what the summaries and paired tests need."""
    if task.type == "language_modeling":
        nll = text_nll(model, tokenizer, items, config.batch_size, desc, vocab_size)
        return {
            "nll": [n for n, _ in nll],
            "chars": [len(p) for p in items],
            "bytes": [len(p.encode()) for p in items],
            "tokens": sum(t for _, t in nll),
            "words": sum(len(p.split()) for p in items),
        }
    ids = [item["id"] for item in items]
    if task.type == "multiple_choice":
        questions = [(item["context"], [task.target_delimiter + c for c in item["choices"]]) for item in items]
        scores = choice_loglikelihoods(
            model, tokenizer, questions, config.batch_size, vocab_size, config.share_context, desc
        )
        return {
            "ids": ids,
            "loglikelihoods": scores,
            "gold": [item["gold"] for item in items],
            "choice_bytes": [[len(c.encode()) for c in item["choices"]] for item in items],
        }
    prompts = [item["context"] + task.target_delimiter.rstrip(" ") for item in items]
    predictions = generate(
        model, tokenizer, prompts, task.max_new_tokens, task.stop, config.batch_size, vocab_size, desc
    )
    return {"ids": ids, "predictions": predictions, "references": [item["references"] for item in items]}


def recheck_alone(model, tokenizer, vocab_size: int, task: Task, lang: str, items, result: dict, config) -> dict:
    """Rescore a seeded sample of the items one at a time and say how far their scores moved. Padding, and kernels
    chosen by a batch's shape, can make a score depend on what it was batched with (on GPUs in bfloat16 above all);
    such a run is flagged rather than trusted."""
    rng = random.Random(f"{config.seed}:{task.name}:{lang}")
    picked = sorted(rng.sample(range(len(items)), max(1, round(config.recheck_fraction * len(items)))))
    alone = score_task(
        model,
        tokenizer,
        vocab_size,
        task,
        [items[i] for i in picked],
        dataclasses.replace(config, batch_size=1),
        desc=f"{task.name} {lang}: rechecking {len(picked)} alone",
    )
    if task.type == "language_modeling":  # nats per byte of each chunk
        moved = [abs(result["nll"][i] - n) / b for i, n, b in zip(picked, alone["nll"], alone["bytes"])]
    elif task.type == "multiple_choice":
        moved = [
            max(abs(x - y) for x, y in zip(result["loglikelihoods"][i], scores))
            for i, scores in zip(picked, alone["loglikelihoods"])
        ]
    else:  # a greedy answer either stays or changes
        moved = [float(result["predictions"][i] != p) for i, p in zip(picked, alone["predictions"])]
    tolerance = 0.0 if task.type == "generation" else config.recheck_tolerance
    worst = max(moved)
    if worst > tolerance:
        logger.warning(
            "task %s (%s): scores depend on the batch: rescored alone, %d of %d items moved, by up to %.3g (tolerance "
            "%g); this run is flagged in results.json",
            task.name,
            lang,
            sum(m > tolerance for m in moved),
            len(moved),
            worst,
            tolerance,
        )
    return {
        "items": [items[i]["id"] if isinstance(items[i], dict) else i for i in picked],
        "largest_move": worst,
        "tolerance": tolerance,
        "flagged": worst > tolerance,
    }


def summarize(task: Task, lang: str, result: dict, base: dict | None, config: EvalConfig) -> list[dict]:
    """Score rows (task, lang, metric, value, n, and against a base: delta, interval, p)."""
    samples, seed = config.bootstrap_samples, config.seed
    rows = []

    def add(metric: str, value: float, n: int, compare=None, p_value=None, detail=None):
        row = {
            "task": task.name,
            "lang": lang,
            "metric": metric,
            "value": float(value),
            "n": n,
            "origin": task.origin,
            "detail": detail,
        }
        if compare:
            delta, low, high = compare()
            row.update(delta=delta, delta_low=low, delta_high=high, p_value=p_value)
        rows.append(row)

    if base is not None and base.get("ids", base.get("chars")) != result.get("ids", result.get("chars")):
        base = None  # not the same items: no paired comparison
    paired = base is not None
    if task.type == "language_modeling":
        n = len(result["chars"])
        for metric, units in (("bits_per_character", "chars"), ("bits_per_byte", "bytes")):
            add(
                metric,
                bits_per_unit(result["nll"], result[units]),
                n,
                paired
                and (lambda u=units: paired_bootstrap_delta(base["nll"], result["nll"], result[u], samples, seed)),
            )
        fertility = result["tokens"] / result["words"]
        add(
            "tokens_per_word",
            fertility,
            result["words"],
            paired and (lambda: (fertility - base["tokens"] / base["words"], None, None)),
        )
    elif task.type == "multiple_choice":
        for metric, lengths in (("accuracy", None), ("accuracy_bytes", "choice_bytes")):

            def correct(r: dict, lengths=lengths) -> list[bool]:
                return choice_correct(r["loglikelihoods"], r["gold"], r[lengths] if lengths else None)

            now = correct(result)
            before = correct(base) if paired else None
            add(
                metric,
                100 * np.mean(now),
                len(now),
                paired
                and (lambda b=before, c=now: mean_delta([100.0 * x for x in b], [100.0 * x for x in c], samples, seed)),
                mcnemar_p(before, now) if paired else None,
            )
    elif task.metric == "chrf":
        stats, signature = chrf_statistics(result["predictions"], result["references"])
        base_stats = chrf_statistics(base["predictions"], base["references"])[0] if paired else None
        add(
            "chrf++",
            chrf_from_statistics(np.asarray(stats).sum(0))[0],
            len(stats),
            paired
            and (
                lambda: paired_bootstrap(chrf_from_statistics, np.asarray(base_stats), np.asarray(stats), samples, seed)
            ),
            detail=signature,
        )
    else:
        scorers = (
            (("exact_match", exact_match), ("f1", token_f1))
            if task.metric == "squad"
            else [("exact_match", numeric_match)]
        )
        for metric, fn in scorers:

            def per_item(r: dict, fn=fn) -> list[float]:
                return [100 * fn(p, refs, lang) for p, refs in zip(r["predictions"], r["references"])]

            now = per_item(result)
            before = per_item(base) if paired else None
            p_value = (
                mcnemar_p([x == 100 for x in before], [x == 100 for x in now])
                if paired and metric == "exact_match"
                else None
            )
            add(
                metric,
                np.mean(now),
                len(now),
                paired and (lambda b=before, v=now: mean_delta(b, v, samples, seed)),
                p_value,
            )
    return rows


def resolve_tasks(config: EvalConfig) -> list[tuple[Task, str, TaskRun]]:
    wanted = []
    for run in config.tasks:
        task = load_task(run.task)
        codes = [languages.get(code).code for code in (run.languages or config.languages or task.languages)]
        wanted += [(task, code, run) for code in codes if code in task.languages]
    return wanted


def evaluate(config: EvalConfig) -> dict:
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    base, candidates = plan(config)
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")

    # Items first: a missing dataset fails (or is skipped) before any model is loaded.
    prepared, skipped, rejected = [], [], {}
    for task, lang, run in resolve_tasks(config):
        try:
            if task.type == "language_modeling":
                items, reasons = chunks(task.texts(lang), task.chunk_bytes), Counter()
            else:
                items, reasons = task.items(lang, run.shots, run.limit, config.seed)
        except MissingTaskData as err:
            if config.missing_data == "error":
                raise
            skipped.append({"task": task.name, "lang": lang, "shots": run.shots, "reason": str(err)})
            continue
        if run.limit is not None and task.type == "language_modeling":
            items = items[: run.limit]
        prepared.append((_entry_key(task, lang, run), task, lang, run, items))
        rejected[f"{task.name}/{lang}"] = dict(reasons)
    if not prepared:
        raise EvalError("no task has data here: " + "; ".join(s["reason"] for s in skipped))
    mismatches = {
        c.label: adapter_problem(c.adapter, c.model, config.allow_base_mismatch) for c in candidates if c.adapter
    }

    results: dict[str, dict] = {}
    groups = [[base, *candidates]] if config.adapter else [[v] for v in ([base] if base else []) + candidates]
    for group in groups:
        identities = {v.label: _file_hashes(v) for v in group}
        loaded = Loaded(group[0].model, [v for v in group if v.adapter], config, device)
        for variant in group:
            results[variant.label] = _score_variant(
                loaded, variant, identities[variant.label], prepared, config, device
            )
        del loaded
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        for variant in group:  # a file rewritten while it was scored: the scores belong to no one set of bytes
            if _file_hashes(variant) != identities[variant.label]:
                raise EvalError(
                    f"{variant.adapter or variant.model} was rewritten while it was evaluated; nothing was "
                    "recorded. Evaluate it again once whatever writes it has finished"
                )

    def run_record(variant: Variant, compare_to: Variant | None) -> dict:
        scored = results[variant.label]
        rows = []
        for key, task, lang, run, _ in prepared:
            if key not in scored["tasks"]:
                continue
            against = results[compare_to.label]["tasks"].get(key) if compare_to else None
            for row in summarize(task, lang, scored["tasks"][key], against, config):
                problem = out_of_range(row["metric"], row["value"])
                if problem:
                    raise EvalError(
                        f"{variant.label}, task {task.name} ({lang}): {problem}; nothing was recorded. "
                        "Check that the tokenizer in the model folder is the one it was trained with"
                    )
                rows.append({**row, "shots": run.shots})
        return {
            "created": created,
            "label": variant.label,
            "model": variant.model,
            "adapter": variant.adapter,
            "base_label": compare_to.label if compare_to else None,
            "suite": ",".join(run.task for run in config.tasks),
            "tokenizer_sha256": scored["tokenizer_sha256"],
            "weights_sha256": scored["weights_sha256"],
            "adapter_sha256": scored["adapter_sha256"],
            "dtype": str(_dtype(config, device)).removeprefix("torch."),
            "code_commit": code_commit(),
            "recipe": json.loads(json.dumps(to_dict(config), default=str)),
            "lineage": _lineage(variant),
            "base_mismatch": mismatches.get(variant.label),
            "skipped": skipped + scored["skipped"],
            "batch_dependent": [
                {"task": task.name, "lang": lang, **scored["tasks"][key]["recheck"]}
                for key, task, lang, _, _ in prepared
                if scored["tasks"].get(key, {}).get("recheck", {}).get("flagged")
            ],
            "scores": rows,
        }

    runs = ([run_record(base, None)] if base else []) + [run_record(c, base) for c in candidates]
    for run in runs:
        store.add_run(config.db, {k: v for k, v in run.items() if k != "scores"}, run["scores"])
        _write_samples(Path(config.output_dir) / "samples" / store.slug(run["label"]), results[run["label"]]["tasks"])
    too_long = [{**entry, "model": label} for label, scored in results.items() for entry in scored["skipped"]]
    summary = {"config": to_dict(config), "runs": runs, "skipped": skipped + too_long, "rejected": rejected}
    atomic_write_text(
        Path(config.output_dir) / "results.json", json.dumps(summary, indent=2, ensure_ascii=False, default=str) + "\n"
    )
    return summary


def _file_hashes(variant: Variant) -> dict:
    return {"weights": cache.weights_sha256(variant.model), "adapter": cache.weights_sha256(variant.adapter)}


def _score_variant(loaded: Loaded, variant: Variant, files: dict, prepared, config: EvalConfig, device: str) -> dict:
    """Results per suite entry (from the cache where the same bytes were scored before), and the entries
    skipped because their inputs do not fit the model."""
    context, tokenizer, vocab_size = loaded.use(variant)
    identity = {
        **files,
        "tokenizer": tokenizer_sha256(tokenizer),
        "dtype": str(_dtype(config, device)),
        "share_context": config.share_context,
        "vocab_size": vocab_size,
    }
    cacheable = identity["weights"] is not None and (variant.adapter is None or identity["adapter"] is not None)
    tasks, skipped = {}, []
    with context:
        for key, task, lang, run, items in prepared:
            # The task's definition and the very items scored: a changed data file is never served stale results.
            definition = {k: v for k, v in to_dict(task).items() if k != "source"}
            content = hashlib.sha256(
                json.dumps([definition, items], sort_keys=True, ensure_ascii=False).encode()
            ).hexdigest()
            cache_key = cache.result_key(**identity, task=content)
            result = cache.load(cache_key) if config.use_cache and cacheable else None
            if result is None:
                try:
                    result = score_task(
                        loaded.model,
                        tokenizer,
                        vocab_size,
                        task,
                        items,
                        config,
                        desc=f"{variant.label[-40:]} {task.name} {lang}",
                    )
                except InputTooLong as err:
                    skipped.append(
                        {
                            "task": task.name,
                            "lang": lang,
                            "shots": run.shots,
                            "reason": f"task {task.name} ({lang}, {run.shots} shots): {err}",
                        }
                    )
                    continue
                except ScoringError as err:
                    raise EvalError(f"{variant.label}, task {task.name} ({lang}): {err}") from None
                if config.recheck_fraction:
                    result["recheck"] = recheck_alone(
                        loaded.model, tokenizer, vocab_size, task, lang, items, result, config
                    )
                if cacheable:
                    cache.save(cache_key, result)
            tasks[key] = result
    return {
        "tokenizer_sha256": identity["tokenizer"],
        "weights_sha256": identity["weights"],
        "adapter_sha256": identity["adapter"],
        "tasks": tasks,
        "skipped": skipped,
    }


def adapter_problem(adapter: str, model: str, allow_base_mismatch: bool) -> str | None:
    """Refuse an adapter that is not safetensors or not trained on ``model``; return the mismatch when the
    user allowed it (it is recorded with the run), None when the adapter belongs on ``model``."""
    folder = Path(adapter)
    config_path = folder / "adapter_config.json"
    if not config_path.is_file():
        raise EvalError(
            f"{adapter}: no adapter_config.json; give the folder an adapter was saved to with save_pretrained"
        )
    if not (folder / "adapter_model.safetensors").is_file():
        found = ", ".join(sorted(p.name for p in folder.glob("adapter_model*"))) or "no weights"
        raise EvalError(
            f"{adapter}: no adapter_model.safetensors ({found}); pickled weights are never loaded. "
            "Save the adapter with save_pretrained(dir, safe_serialization=True)"
        )
    trained_on = json.loads(config_path.read_text(encoding="utf-8")).get("base_model_name_or_path")
    trained_hash = (_read_lineage(folder) or {}).get("base_weights_sha256")
    model_hash = cache.weights_sha256(model) if trained_hash else None
    if trained_hash and model_hash:
        same = trained_hash == model_hash
        mismatch = (
            f"adapter {adapter} was trained on {trained_on} (weights sha256 {trained_hash[:12]}, from its "
            f"lineage.json); {model} has weights {model_hash[:12]}"
        )
    else:
        same = trained_on is not None and _same_model(trained_on, model)
        mismatch = (
            f"adapter {adapter} was trained on {trained_on} (base_model_name_or_path in its "
            f"adapter_config.json), not on {model}"
        )
    if same:
        return None
    if not allow_base_mismatch:
        raise EvalError(
            f"{mismatch}. Score it on --model {trained_on}, or pass --allow_base_mismatch true to score "
            "it anyway (the run is then marked as a base mismatch)"
        )
    return mismatch


def _same_model(a: str, b: str) -> bool:
    if a == b:
        return True
    folders = cache.local_folder(a), cache.local_folder(b)
    return None not in folders and folders[0].resolve() == folders[1].resolve()


def _entry_key(task: Task, lang: str, run: TaskRun) -> str:
    """One task × language × shots × limit of a suite; also the name of its samples file."""
    return f"{task.name}/{lang}/{run.shots}" + (f"/{run.limit}" if run.limit is not None else "")


def _write_samples(folder: Path, tasks: dict[str, dict]) -> None:
    """Per-item outputs as Parquet, one file per task, language and shots, for drill-down and re-analysis."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    for key, result in tasks.items():
        columns = {k: v for k, v in result.items() if isinstance(v, list)}
        path = folder / (key.replace("/", ".") + ".parquet")
        tmp = path.with_name(path.name + ".partial")
        pq.write_table(pa.table(columns), tmp)
        tmp.replace(path)


def _lineage(variant: Variant) -> dict | None:
    return _read_lineage(Path(variant.adapter or variant.model))


def _read_lineage(folder: Path) -> dict | None:
    path = folder / "lineage.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

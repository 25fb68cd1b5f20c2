"""Score a checkpoint and its base on the same tasks, say how they differ, and record both on the leaderboard.

``--model M --adapter A [--adapter B ...]``: the base is M, loaded once; each adapter is swapped onto it
(nothing merged, nothing written). ``--model C --base B``: a full checkpoint C against its base B.
``--model M`` alone: M is scored. Per task and language, each candidate's delta to the base comes with a
95% paired bootstrap interval and, for right/wrong outcomes, McNemar's exact p.

A model too big for one device is split over several with ``device_map`` (accelerate's big-model inference).
Under ``accelerate launch`` or torchrun each process holds a whole copy and scores its share of every task's
items; the main process gathers them in item order and alone reads and writes the cache, the samples,
results.json and the store, so a run on N processes records what one process would.

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
import re
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from accelerate import PartialState, dispatch_model, infer_auto_device_map, init_empty_weights
from accelerate.utils import (
    broadcast_object_list,
    convert_file_size_to_int,
    gather_object,
    get_balanced_memory,
    get_int_from_env,
    get_max_memory,
)
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from indictune.core import languages
from indictune.core.hashing import tokenizer_sha256
from indictune.core.io import atomic_write_text
from indictune.core.lineage import code_commit
from indictune.core.log import get_logger
from indictune.core.recipe import RecipeError, check_ranges, field, to_dict
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


DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


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
    device_map: str | None = field(
        None,
        help="split the model over this machine's devices (accelerate's big-model inference): auto, balanced, "
        "balanced_low_0, sequential, or a JSON file mapping module names to devices (0, cuda:1, cpu, disk); "
        "default: the whole model on `device`",
    )
    max_memory: dict[str, str] | None = field(
        None, help="with device_map: the most each device may hold, e.g. {0: 70GiB, 1: 75GiB, cpu: 200GiB}"
    )
    offload_folder: str | None = field(None, help="with device_map: where weights placed on disk are kept")
    backend: Literal["transformers", "vllm"] = field(
        "transformers",
        help="what runs the model: transformers, or vLLM (installed separately, on CUDA) for faster generation; the "
        "same prompts, token ids and scoring, and the backend is recorded with the scores",
    )
    tensor_parallel_size: int = field(
        1, minimum=1, maximum=64, help="backend vllm: the GPUs one model is split over by vLLM's tensor parallelism"
    )
    trust_remote_code: bool = field(False, help="allow custom model code from the model's repository")
    missing_data: Literal["error", "skip"] = field(
        "error", help="a task with no local data and no hub access: stop, or skip it and report it"
    )
    choice_scoring: Literal["auto", "packed", "shared", "whole"] = field(
        "auto",
        help="multiple choice, per batch: the cheapest for its token counts (auto) of each question as one sequence "
        "with a block mask (packed), each context once with its cache copied to the choices (shared), or every "
        "context + choice whole, as lm-eval runs them (whole); or always one of them",
    )
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
        if self.backend == "vllm" and self.device_map is not None:
            raise EvalError(
                "device_map splits a model for the transformers backend; with backend vllm, split it with "
                "tensor_parallel_size (GPUs per model) instead"
            )
        if self.backend == "transformers" and self.tensor_parallel_size > 1:
            raise EvalError(
                "tensor_parallel_size is vLLM's; with backend transformers split a model with device_map (auto), "
                "or set backend vllm"
            )
        if self.device_map is None:
            if self.max_memory is not None or self.offload_folder is not None:
                raise EvalError(
                    "max_memory and offload_folder apply to a model split with device_map; set device_map (auto, "
                    "or a JSON placement) or leave them out"
                )
        else:
            if self.device is not None:
                raise EvalError(
                    "give device (the whole model on one device) or device_map (the model split over devices), not both"
                )
            _memory_limits(self.max_memory)
            placement = _placement(self.device_map)
            if placement and "disk" in placement.values() and self.offload_folder is None:
                raise EvalError(
                    f"device_map {self.device_map} places modules on disk; set offload_folder to a folder with room "
                    "for their weights"
                )
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


def _placement(device_map: str) -> dict[str, int | str] | None:
    """The module -> device placement a device_map file gives (GPUs as indices); None for a strategy."""
    if device_map in DEVICE_MAP_STRATEGIES:
        return None
    path = Path(device_map)
    if not path.is_file():
        raise EvalError(
            f"device_map {device_map!r} is neither a strategy ({', '.join(DEVICE_MAP_STRATEGIES)}) nor a file; give "
            'one of those, or a JSON file mapping module names to devices, e.g. {"model.embed_tokens": 0, '
            '"model.layers.0": 0, "model.layers.1": 1, "model.norm": 1, "lm_head": 1}'
        )
    try:
        placement = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise EvalError(
            f"device_map {path}: not JSON ({err}); write it as an object of module names to devices"
        ) from None
    if not isinstance(placement, dict) or not placement:
        raise EvalError(
            f"device_map {path}: must be a JSON object mapping module names to devices, "
            f'e.g. {{"model.embed_tokens": 0, "lm_head": 1}}; got {json.dumps(placement)[:80]}'
        )
    return {module: _device_name(device, f"device_map {path}: {module!r}") for module, device in placement.items()}


def _device_name(device, where: str) -> int | str:
    """A device as accelerate takes it: a GPU's index, cpu, mps or disk."""
    if isinstance(device, str) and device in ("cpu", "mps", "disk"):
        return device
    if isinstance(device, int) and not isinstance(device, bool) and device >= 0:
        index = device
    elif isinstance(device, str) and re.fullmatch(r"(cuda:)?\d+", device):
        index = int(device.rsplit(":", 1)[-1])
    else:
        raise EvalError(
            f"{where}: unknown device {device!r}; use a GPU's index (0, 1, ... or cuda:0), cpu, or disk (with "
            "offload_folder)"
        )
    gpus = torch.cuda.device_count()
    if index >= gpus:
        raise EvalError(
            f"{where}: GPU {index}, but this machine has {gpus} GPU(s) (as CUDA_VISIBLE_DEVICES shows them); "
            f"place it on {f'0..{gpus - 1}, ' if gpus else ''}cpu or disk"
        )
    return index


def _memory_limits(max_memory: dict | None) -> dict[int | str, int] | None:
    """max_memory with GPUs as indices and sizes in bytes, as accelerate takes them."""
    if max_memory is None:
        return None
    limits = {}
    for device, size in max_memory.items():
        where = f"max_memory.{device}"
        key = _device_name(device, where)
        try:
            limits[key] = int(size) if str(size).isdigit() else convert_file_size_to_int(size)
        except ValueError:
            raise EvalError(
                f"{where}: {size!r} is not a size; give bytes or a number with its unit, e.g. 70GiB"
            ) from None
    return limits


def _skeleton(model_path: str, load: dict):
    """The model's modules and shapes without its weights (on the meta device): what a placement is made for."""
    model_config = AutoConfig.from_pretrained(model_path, trust_remote_code=load["trust_remote_code"])
    with init_empty_weights():
        return AutoModelForCausalLM.from_config(
            model_config, dtype=load["dtype"], trust_remote_code=load["trust_remote_code"]
        )


def _device_map(skeleton, config: EvalConfig) -> dict[str, int | str]:
    """Where each module of the model goes: the file's placement, checked against the model, or the one accelerate
    works out for the strategy within max_memory."""
    placement = _placement(config.device_map)
    if placement is None:
        limits = _memory_limits(config.max_memory)
        no_split = skeleton._no_split_modules
        if config.device_map == "sequential":
            limits = get_max_memory(limits)
        else:
            limits = get_balanced_memory(
                skeleton, limits, no_split_module_classes=no_split, low_zero=config.device_map == "balanced_low_0"
            )
        placement = infer_auto_device_map(skeleton, max_memory=limits, no_split_module_classes=no_split)
    else:
        _check_covers(placement, skeleton, config.device_map)
    if "disk" in placement.values() and config.offload_folder is None:
        raise EvalError(
            f"device_map {config.device_map}: the model does not fit max_memory on the GPUs and cpu, so part of it "
            "goes to disk; set offload_folder to a folder with room for those weights, or allow more max_memory"
        )
    # Scoring sends its inputs to the first weights' device; offloaded weights wait on the meta device between uses.
    first = next(iter(skeleton.state_dict()))
    offloaded = ("cpu", "disk") if any(isinstance(d, int) for d in placement.values()) else ("disk",)
    if _placed_on(first, placement) in offloaded:
        raise EvalError(
            f"device_map {config.device_map} offloads {first} (the model's first weights) to "
            f"{_placed_on(first, placement)}; scoring sends its inputs to their device, so place "
            f"{first.rsplit('.', 1)[0]} on a GPU" + (" or cpu" if offloaded == ("disk",) else "")
        )
    return placement


def _placed_on(name: str, placement: dict[str, int | str]) -> int | str | None:
    """The device of a weight under a placement: that of the longest module name holding it."""
    holders = [m for m in placement if m == "" or name == m or name.startswith(m + ".")]
    return placement[max(holders, key=len)] if holders else None


def _check_covers(placement: dict[str, int | str], skeleton, device_map: str) -> None:
    """Every module the file names exists, and every weight and buffer of the model has a device."""
    modules = {name for name, _ in skeleton.named_modules()}
    tensors = set(skeleton.state_dict()) | {name for name, _ in skeleton.named_buffers()}
    unknown = [m for m in placement if m not in modules and m not in tensors]
    if unknown:
        examples = ", ".join(sorted(n for n, _ in skeleton.named_children()))
        raise EvalError(
            f"device_map {device_map}: {unknown[0]!r} names no module of the model"
            f"{f' (and {len(unknown) - 1} more)' if len(unknown) > 1 else ''}; module names start from the "
            f"model's top level ({examples}), as model.named_modules() lists them"
        )
    missing = sorted(t for t in tensors if _placed_on(t, placement) is None)
    if missing:
        holder = missing[0].rsplit(".", 1)[0]
        raise EvalError(
            f"device_map {device_map} gives no device for {len(missing)} weights, e.g. {missing[0]}; add {holder!r} "
            "(or a module holding it) to the file"
        )


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
    """A model with its variants' tokenizers; the base once, with every adapter attached to it. With device_map the
    model is split over devices, ``device_map`` saying where each module went (None: all of it on ``device``)."""

    def __init__(self, model_path: str, adapters: list[Variant], config: EvalConfig, device: str):
        kwargs = {"trust_remote_code": config.trust_remote_code}
        self.tokenizers = {None: AutoTokenizer.from_pretrained(model_path, **kwargs)}
        for variant in adapters:
            self.tokenizers[variant.adapter_name] = AutoTokenizer.from_pretrained(variant.adapter, **kwargs)
        rows = max(len(t) for t in self.tokenizers.values())
        load = {"dtype": _dtype(config, device), "use_safetensors": True, **kwargs}
        skeleton = _skeleton(model_path, load) if config.device_map is not None else None
        self.device_map = _device_map(skeleton, config) if skeleton is not None else None
        # Nothing to change once loaded: each weight goes straight to its device, so the model need not fit in memory.
        placed_while_loading = (
            skeleton is not None and not adapters and rows <= skeleton.get_input_embeddings().num_embeddings
        )
        if placed_while_loading:
            model = AutoModelForCausalLM.from_pretrained(
                model_path, device_map=self.device_map, offload_folder=config.offload_folder, **load
            )
        else:
            model = AutoModelForCausalLM.from_pretrained(model_path, **load)
        self.base_rows = model.get_input_embeddings().weight.shape[0]
        if rows > self.base_rows:  # adapters trained with new tokens carry those rows; the base never predicts them
            model.resize_token_embeddings(rows, mean_resizing=False)
        if adapters:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapters[0].adapter, adapter_name=adapters[0].adapter_name)
            for variant in adapters[1:]:
                model.load_adapter(variant.adapter, adapter_name=variant.adapter_name)
        if self.device_map is None:
            model = model.to(device)
        elif not placed_while_loading:
            # New rows and adapters join the whole model in CPU memory (an offloaded embedding cannot be resized,
            # and peft re-places an offloaded model for its first adapter only); then accelerate places it all.
            plain = model.get_base_model() if adapters else model
            dispatch_model(
                plain,
                device_map=self.device_map,
                offload_dir=config.offload_folder,
                skip_keys=plain._skip_keys_device_placement,
            )
        self.model = model.eval()
        self.choice_scoring = config.choice_scoring

    def use(self, variant: Variant):
        """Context in which ``self.model`` computes as ``variant``; its tokenizer; its vocabulary size."""
        tokenizer = self.tokenizers[variant.adapter_name]
        if variant.adapter_name is None:
            context = self.model.disable_adapter() if hasattr(self.model, "disable_adapter") else nullcontext()
            return context, tokenizer, self.base_rows
        self.model.set_adapter(variant.adapter_name)
        return nullcontext(), tokenizer, max(self.base_rows, len(tokenizer))

    # The scoring functions on this model; the vLLM backend has the same three methods.
    def text_nll(self, tokenizer, texts, batch_size, desc, vocab_size):
        return text_nll(self.model, tokenizer, texts, batch_size, desc, vocab_size)

    def choice_loglikelihoods(self, tokenizer, questions, batch_size, vocab_size, desc):
        return choice_loglikelihoods(
            self.model, tokenizer, questions, batch_size, vocab_size, self.choice_scoring, desc
        )

    def generate(self, tokenizer, prompts, max_new_tokens, stop, batch_size, vocab_size, desc):
        return generate(self.model, tokenizer, prompts, max_new_tokens, stop, batch_size, vocab_size, desc)


def load_backend(model_path: str, adapters: list[Variant], config: EvalConfig, device: str):
    """The model with its adapters, in the backend the config names."""
    if config.backend == "transformers":
        return Loaded(model_path, adapters, config, device)
    from indictune.eval.vllm_backend import VllmBackend, VllmBackendError

    try:
        return VllmBackend(
            model_path,
            adapters,
            dtype=str(_dtype(config, device)).removeprefix("torch."),
            trust_remote_code=config.trust_remote_code,
            tensor_parallel_size=config.tensor_parallel_size,
        )
    except VllmBackendError as err:
        raise EvalError(str(err)) from None


def score_task(backend, tokenizer, vocab_size: int, task: Task, items, config: EvalConfig, desc: str) -> dict:
    """Per-item results of one task in one language: what the summaries and paired tests need. ``backend``: a
    ``Loaded`` model or a ``VllmBackend``."""
    if task.type == "language_modeling":
        nll = backend.text_nll(tokenizer, items, config.batch_size, desc, vocab_size)
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
        scores = backend.choice_loglikelihoods(tokenizer, questions, config.batch_size, vocab_size, desc)
        return {
            "ids": ids,
            "loglikelihoods": scores,
            "gold": [item["gold"] for item in items],
            "choice_bytes": [[len(c.encode()) for c in item["choices"]] for item in items],
        }
    prompts = [item["context"] + task.target_delimiter.rstrip(" ") for item in items]
    predictions = backend.generate(
        tokenizer, prompts, task.max_new_tokens, task.stop, config.batch_size, vocab_size, desc
    )
    return {"ids": ids, "predictions": predictions, "references": [item["references"] for item in items]}


def recheck_alone(backend, tokenizer, vocab_size: int, task: Task, lang: str, items, result: dict, config) -> dict:
    """Rescore a seeded sample of the items one at a time and say how far their scores moved. Padding, and kernels
    chosen by a batch's shape, can make a score depend on what it was batched with (on GPUs in bfloat16 above all);
    such a run is flagged rather than trusted."""
    rng = random.Random(f"{config.seed}:{task.name}:{lang}")
    picked = sorted(rng.sample(range(len(items)), max(1, round(config.recheck_fraction * len(items)))))
    alone = score_task(
        backend,
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


class Processes:
    """The processes scoring one evaluation: this one alone, or those `accelerate launch` or torchrun started, each
    with a whole copy of the model. The main process decides (cache hits, file checks) and writes; a step that fails
    on one process fails on every process, with its error, so that none waits on the others for ever."""

    def __init__(self, device: str | None):
        if get_int_from_env(["WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"], 1) == 1:
            # Not launched: accelerate's process state (one per Python process) is left to whoever needs it.
            self.state, self.count, self.index, self.is_main = None, 1, 0, True
            return
        # accelerate joins processes over gloo only when asked to use the CPU; with no CUDA that is the only choice.
        self.state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available())
        self.count = self.state.num_processes
        self.index = self.state.process_index
        self.is_main = self.state.is_main_process

    def on_main(self, step, *args):
        """``step(*args)`` run on the main process; its value is returned, and its error raised, on every process."""
        if self.count == 1:
            return step(*args)
        value, error, sent = self._attempt(step, *args) if self.is_main else (None, None, None)
        value, sent = broadcast_object_list([(value, sent)])[0]
        if error is not None:
            raise error
        if sent is not None:
            raise sent
        return value

    def on_each(self, step, *args):
        """``step(*args)`` run on every process, returning this process's value; an error on any is raised on all."""
        if self.count == 1:
            return step(*args)
        value, error, sent = self._attempt(step, *args)
        failures = [failure for failure in gather_object([sent]) if failure is not None]
        if error is not None:
            raise error
        if failures:
            raise failures[0]
        return value

    def gather(self, value) -> list:
        """Every process's value, in process order, on every process."""
        return gather_object([value]) if self.count > 1 else [value]

    def share(self, items: list) -> list:
        """This process's consecutive share of the items, the main process's first."""
        return items[len(items) * self.index // self.count : len(items) * (self.index + 1) // self.count]

    def _attempt(self, step, *args):
        """(value, error, the error as the other processes raise it)."""
        try:
            return step(*args), None, None
        except Exception as err:
            # The library's own errors cross as they are (a task too long is skipped on every process alike);
            # any other is named with the process it happened on, whose own traceback shows where.
            if isinstance(err, (EvalError, ScoringError, RecipeError, MissingTaskData)):
                return None, err, err
            return None, err, EvalError(f"process {self.index} of {self.count}: {type(err).__name__}: {err}")


def evaluate(config: EvalConfig) -> dict:
    """Score, compare and record; on several processes each returns the main process's summary."""
    processes = Processes(config.device)
    device = _process_device(config, processes)
    if processes.count > 1:
        logger.info("data-parallel on %d processes: each scores its share of every task's items", processes.count)
    base, candidates = plan(config)
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")

    prepared, skipped, rejected = processes.on_each(_prepare, config)
    if len(set(processes.gather(_items_digest(prepared)))) > 1:
        raise EvalError(
            "the processes read different task items (a dataset changed between reads, or each machine has its "
            "own copy); give every process the same data, e.g. on a shared file system"
        )
    if not prepared:
        raise EvalError("no task has data here: " + "; ".join(s["reason"] for s in skipped))
    mismatches = processes.on_main(_base_mismatches, candidates, config.allow_base_mismatch)

    results: dict[str, dict] = {}
    groups = [[base, *candidates]] if config.adapter else [[v] for v in ([base] if base else []) + candidates]
    for group in groups:
        identities = processes.on_main(_group_hashes, group)
        loaded = processes.on_each(load_backend, group[0].model, [v for v in group if v.adapter], config, device)
        for variant in group:
            results[variant.label] = _score_variant(
                loaded, variant, identities[variant.label], prepared, config, device, processes
            )
        del loaded
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        processes.on_main(_check_unchanged, group, identities)

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
            "backend": config.backend,
            "device_map": scored["device_map"],
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

    def record() -> dict:
        runs = ([run_record(base, None)] if base else []) + [run_record(c, base) for c in candidates]
        for run in runs:
            store.add_run(config.db, {k: v for k, v in run.items() if k != "scores"}, run["scores"])
            _write_samples(
                Path(config.output_dir) / "samples" / store.slug(run["label"]), results[run["label"]]["tasks"]
            )
        too_long = [{**entry, "model": label} for label, scored in results.items() for entry in scored["skipped"]]
        summary = {"config": to_dict(config), "runs": runs, "skipped": skipped + too_long, "rejected": rejected}
        atomic_write_text(
            Path(config.output_dir) / "results.json",
            json.dumps(summary, indent=2, ensure_ascii=False, default=str) + "\n",
        )
        return summary

    return processes.on_main(record)


def _process_device(config: EvalConfig, processes: Processes) -> str:
    """The device this process scores on: the one asked for, else cuda where there is one, else cpu; on several
    processes, the one accelerate gives each."""
    if processes.count == 1:
        return config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if config.backend == "vllm":
        raise EvalError(
            f"backend vllm runs one engine, which batches and splits over GPUs itself (tensor_parallel_size), but "
            f"{processes.count} processes would each start one; run one process (python scripts/evaluate.py ...)"
        )
    if config.device_map is not None:
        raise EvalError(
            f"device_map splits one model over this machine's devices, but {processes.count} processes would each "
            "load a copy over the same devices; run one process (python scripts/evaluate.py ...) with device_map, or "
            "several without it"
        )
    device = processes.state.device
    if config.device is not None and config.device != device.type:
        raise EvalError(
            f"device {config.device} with {processes.count} processes: each process takes its own device; leave "
            f"device unset or give its type ({device.type})"
        )
    return "cpu" if device.type == "cpu" else str(device)


def _prepare(config: EvalConfig) -> tuple[list, list[dict], dict]:
    """Each suite entry's items (key, task, lang, run, items), the entries without data, and the rows each task
    could not use. Items come first: a missing dataset fails (or is skipped) before any model is loaded."""
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
    return prepared, skipped, rejected


def _items_digest(prepared) -> str:
    return hashlib.sha256(
        json.dumps([[key, items] for key, *_, items in prepared], sort_keys=True, ensure_ascii=False).encode()
    ).hexdigest()


def _base_mismatches(candidates: list[Variant], allow_base_mismatch: bool) -> dict[str, str | None]:
    return {c.label: adapter_problem(c.adapter, c.model, allow_base_mismatch) for c in candidates if c.adapter}


def _group_hashes(group: list[Variant]) -> dict[str, dict]:
    return {v.label: _file_hashes(v) for v in group}


def _check_unchanged(group: list[Variant], identities: dict[str, dict]) -> None:
    for variant in group:  # a file rewritten while it was scored: the scores belong to no one set of bytes
        if _file_hashes(variant) != identities[variant.label]:
            raise EvalError(
                f"{variant.adapter or variant.model} was rewritten while it was evaluated; nothing was "
                "recorded. Evaluate it again once whatever writes it has finished"
            )


def _file_hashes(variant: Variant) -> dict:
    return {"weights": cache.weights_sha256(variant.model), "adapter": cache.weights_sha256(variant.adapter)}


def _score_variant(
    loaded: Loaded, variant: Variant, files: dict, prepared, config: EvalConfig, device: str, processes: Processes
) -> dict:
    """Results per suite entry (from the cache where the same bytes were scored before), the entries skipped
    because their inputs do not fit the model, and where the model was placed. Every process ends with them all."""
    context, tokenizer, vocab_size = loaded.use(variant)
    identity = {
        **files,
        "tokenizer": tokenizer_sha256(tokenizer),
        "dtype": str(_dtype(config, device)),
        "backend": config.backend,
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
            # The main process alone reads the cache; every process follows what it found.
            result = processes.on_main(cache.load, cache_key) if config.use_cache and cacheable else None
            if result is None:
                try:
                    result = _score_spread(
                        processes,
                        loaded,
                        tokenizer,
                        vocab_size,
                        task,
                        items,
                        config,
                        f"{variant.label[-40:]} {task.name} {lang}",
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
                result = processes.on_main(
                    _recheck_and_keep,
                    loaded,
                    tokenizer,
                    vocab_size,
                    task,
                    lang,
                    items,
                    result,
                    config,
                    cache_key if cacheable else None,
                )
            tasks[key] = result
    return {
        "tokenizer_sha256": identity["tokenizer"],
        "weights_sha256": identity["weights"],
        "adapter_sha256": identity["adapter"],
        "device_map": loaded.device_map,
        "tasks": tasks,
        "skipped": skipped,
    }


def _score_spread(processes: Processes, backend, tokenizer, vocab_size: int, task: Task, items, config, desc) -> dict:
    """score_task over all the items, each process scoring its consecutive share: the per-item results in item
    order, and the totals, on every process."""
    scored_whole = (backend, tokenizer, vocab_size, task, items, config, desc)
    if processes.count == 1 or len(items) < processes.count:
        return processes.on_main(score_task, *scored_whole)
    try:
        part = processes.on_each(score_task, backend, tokenizer, vocab_size, task, processes.share(items), config, desc)
    except ScoringError:
        # A share's error counts only its own items. score_task checks its inputs before the model runs them, so
        # over all the items the main process fails the task as one process would, in the same words.
        return processes.on_main(score_task, *scored_whole)
    parts = processes.gather(part)
    return {
        key: [x for p in parts for x in p[key]] if isinstance(value, list) else sum(p[key] for p in parts)
        for key, value in parts[0].items()
    }


def _recheck_and_keep(
    backend, tokenizer, vocab_size: int, task: Task, lang: str, items, result: dict, config, cache_key: str | None
) -> dict:
    """A scored task, whole: rechecked at batch size 1, then cached (under ``cache_key``, unless None)."""
    if config.recheck_fraction:
        result["recheck"] = recheck_alone(backend, tokenizer, vocab_size, task, lang, items, result, config)
    if cache_key is not None:
        cache.save(cache_key, result)
    return result


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

"""Per-GPU memory plan of a training run, made before the run loads any weight.

A rank holds, in bytes:

- weights: the frozen base and the trainable parameters. DeepSpeed casts every parameter to 16 bits under bf16/fp16
  mixed precision; without DeepSpeed they keep the dtype training loads them in (the recipe's ``dtype``), and peft
  keeps LoRA adapters and trainable rows in float32.
- gradients and optimizer states of the trainable parameters only: AdamW's two moments, and under DeepSpeed mixed
  precision a float32 master copy and a float32 gradient partition too; sharded by the ZeRO stage, and moved to host
  memory by offloading.
- under ZeRO-3, the largest module gathered at once: each module's own parameters, except an MoE block, which is a
  ZeRO-3 leaf (training/moe.py) gathered whole, all experts at once.
- communication buffers: DeepSpeed's gradient bucket, or DDP's gradient buckets.
- activations at the peak of a step (see :func:`_activations`), by ``max_length``, ``per_device_train_batch_size``,
  activation checkpointing and the attention implementation.
- a fixed allowance (:data:`CUDA_ALLOWANCE_BYTES`).

Parameters are counted exactly as training builds the model: from its config on the meta device, resized to the
tokenizer, with the recipe's LoRA applied through :func:`indictune.training.model.lora_config` and peft's
``get_peft_model`` (both run on meta, ``lora_target_parameters`` and ``trainable_token_indices`` included), trainable
meaning ``requires_grad``. The model states follow DeepSpeed's own estimators
(``estimate_zero2_model_states_mem_needs``, ``estimate_zero3_model_states_mem_needs``) term by term for full
fine-tuning; docs/benchmarks.md ("Memory per GPU") says where and why the plan adds to them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from torch import nn

GIB = 2**30

# Not tensor memory, so in no estimate below: the CUDA context and the kernels PyTorch, cuBLAS and NCCL load
# (0.6-1 GiB on an H100 with lazy module loading), cuBLAS workspaces (tens of MiB per stream), NCCL's buffers for
# the process groups DeepSpeed and DDP create (NCCL_BUFFSIZE 4 MiB per channel and peer: a few hundred MiB), and
# what PyTorch's caching allocator reserves beyond what is allocated (fragmentation, about a GiB at these sizes).
CUDA_ALLOWANCE_BYTES = 3 * GIB

# DeepSpeed's default reduce_bucket_size (deepspeed/runtime/zero/config.py), which a run gets when its accelerate
# config sets no DeepSpeed JSON: ZeRO-1/2/3 allocate one gradient bucket of that many 16-bit elements up front.
DEEPSPEED_REDUCE_BUCKET_ELEMENTS = 500_000_000

# Bytes per logit at the loss's peak: transformers upcasts the logits to float32 for the cross-entropy, which keeps
# its float32 log-softmax for the backward (4); the backward then holds the loss's gradient and the log-softmax's
# gradient, both float32 and logits-sized, at once (8).
LOSS_BYTES_PER_LOGIT = 12

# Optimizers whose states are AdamW's two moments per trainable parameter, in the parameter's precision.
ADAMW_OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "adamw_apex_fused", "adamw_torch_xla", "adamw_torch_npu_fused")

# Decoder architectures whose activations are modelled: norm style ("llama": weight * x.to(dtype), saving the cast;
# "gemma": (x * (1 + weight)) in float32, saving the float32 product). Dense or MoE MLPs are read off the model.
NORM_STYLES = {"llama": "llama", "mistral": "llama", "qwen2": "llama", "mixtral": "llama", "gemma2": "gemma"}

FLASH_ATTENTION = ("flash_attention_2", "flash_attention_3")

# The most machines the advice considers adding.
MAX_MACHINES = 64


class PlanError(ValueError):
    """A recipe or distributed setup the planner cannot plan; the message says what it can plan."""


class PlanDoesNotFit(ValueError):
    """The plan needs more GPU memory than there is; the message says by how much and what to change."""

    def __init__(self, message: str, plan: MemoryPlan, gpu_bytes: int):
        super().__init__(message)
        self.plan = plan
        self.gpu_bytes = gpu_bytes


@dataclass(frozen=True)
class DistributedSetup:
    """How a run is spread: DeepSpeed's ZeRO stage (0 without DeepSpeed: DDP, or one process) and offloading,
    machines, processes (GPUs) per machine and the accelerate config's mixed precision."""

    zero_stage: int = 0
    deepspeed: bool = False
    offload_optimizer: bool = False
    offload_param: bool = False
    num_machines: int = 1
    processes_per_machine: int = 1
    mixed_precision: str = "no"

    def __post_init__(self):
        if self.zero_stage not in (0, 1, 2, 3):
            raise PlanError(f"zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.zero_stage and not self.deepspeed:
            raise PlanError(f"ZeRO stage {self.zero_stage} is DeepSpeed's; set deepspeed")
        if self.offload_optimizer and not self.zero_stage:
            raise PlanError("offload_optimizer_device: cpu needs ZeRO stage 1, 2 or 3")
        if self.offload_param and self.zero_stage != 3:
            raise PlanError("offload_param_device: cpu needs ZeRO stage 3")
        if self.num_machines < 1 or self.processes_per_machine < 1:
            raise PlanError(
                f"num_machines and processes per machine must be at least 1, got {self.num_machines} and "
                f"{self.processes_per_machine}"
            )
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise PlanError(f"mixed_precision must be no, bf16 or fp16, got {self.mixed_precision!r}")

    @property
    def world_size(self) -> int:
        return self.num_machines * self.processes_per_machine

    def describe(self) -> str:
        spread = f"{self.num_machines} machine(s) x {self.processes_per_machine} GPU(s)"
        if not self.deepspeed:
            return f"{spread}, {'DDP' if self.world_size > 1 else 'one process'}"
        offloaded = [
            name for name, on in (("optimizer", self.offload_optimizer), ("parameters", self.offload_param)) if on
        ]
        return f"{spread}, DeepSpeed ZeRO-{self.zero_stage}" + (
            f", {' and '.join(offloaded)} offloaded" if offloaded else ""
        )

    @classmethod
    def from_accelerate_config(
        cls, path: str | Path, num_machines: int | None = None, num_processes: int | None = None
    ) -> DistributedSetup:
        """The setup an accelerate config file (recipes/accelerate/*.yaml) gives. `num_machines` and `num_processes`
        (all machines together, as for ``accelerate launch``) override the file's; `num_machines` alone keeps the
        file's processes per machine."""
        settings = yaml.safe_load(Path(path).read_text()) or {}
        file_machines, file_processes = int(settings.get("num_machines", 1)), int(settings.get("num_processes", 1))
        if file_machines < 1 or file_processes % file_machines:
            raise PlanError(f"{path}: {file_processes} processes do not split over {file_machines} machines")
        machines = num_machines or file_machines
        processes = num_processes or machines * (file_processes // file_machines)
        if machines < 1 or processes < 1 or processes % machines:
            raise PlanError(f"{processes} processes do not split evenly over {machines} machines")
        deepspeed = settings.get("distributed_type") == "DEEPSPEED"
        zero = settings.get("deepspeed_config", {}) if deepspeed else {}
        if zero.get("deepspeed_config_file"):
            zero = _zero_settings_from_json(zero["deepspeed_config_file"])
        return cls(
            zero_stage=int(zero.get("zero_stage", 2 if deepspeed else 0)),  # accelerate's default stage is 2
            deepspeed=deepspeed,
            offload_optimizer=_offloaded(zero.get("offload_optimizer_device", "none"), path),
            offload_param=_offloaded(zero.get("offload_param_device", "none"), path),
            num_machines=machines,
            processes_per_machine=processes // machines,
            mixed_precision=str(settings.get("mixed_precision", "no")),
        )

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> DistributedSetup:
        """The setup ``accelerate launch`` gives this process, through the environment variables it sets
        (accelerate/utils/launch.py) and torchrun's WORLD_SIZE and LOCAL_WORLD_SIZE."""
        world = int(environ.get("WORLD_SIZE", "1"))
        local = int(environ.get("LOCAL_WORLD_SIZE", str(world)))
        if world % local:
            raise PlanError(f"WORLD_SIZE {world} is not a multiple of LOCAL_WORLD_SIZE {local}")
        deepspeed = environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
        zero = {}
        if deepspeed:
            config_file = environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none")
            zero = _zero_settings_from_json(config_file) if config_file != "none" else {}
            for key in ("zero_stage", "offload_optimizer_device", "offload_param_device"):
                zero.setdefault(key, environ.get(f"ACCELERATE_DEEPSPEED_{key.upper()}"))
        return cls(
            zero_stage=int(zero.get("zero_stage") or (2 if deepspeed else 0)),
            deepspeed=deepspeed,
            offload_optimizer=_offloaded(zero.get("offload_optimizer_device") or "none", "environment"),
            offload_param=_offloaded(zero.get("offload_param_device") or "none", "environment"),
            num_machines=world // local,
            processes_per_machine=local,
            mixed_precision=environ.get("ACCELERATE_MIXED_PRECISION", "no"),
        )


def _offloaded(device: str, where) -> bool:
    if device not in ("none", "cpu"):
        raise PlanError(f"{where}: offload device {device!r}: the planner plans offloading to cpu (or none)")
    return device == "cpu"


def _zero_settings_from_json(path: str) -> dict:
    """zero_stage and offload devices from a DeepSpeed JSON config, under accelerate's names."""
    zero = json.loads(Path(path).read_text()).get("zero_optimization", {})
    settings = {
        "zero_stage": zero.get("stage", 0),
        "offload_optimizer_device": zero.get("offload_optimizer", {}).get("device", "none"),
        "offload_param_device": zero.get("offload_param", {}).get("device", "none"),
    }
    if "auto" in settings.values():
        raise PlanError(f"{path}: the ZeRO stage and offload devices must be set, not auto")
    return settings


@dataclass(frozen=True)
class _Linear:
    """A projection as training runs it: its input width, whether its own weight trains, and its LoRA adapter."""

    n_in: int
    base_trains: bool
    lora_rank: int = 0
    lora_dropout: float = 0.0


@dataclass(frozen=True)
class _Anatomy:
    """What the built model holds and runs, independent of the distributed setup."""

    description: str
    frozen_params: int
    trainable_params: int
    frozen_bytes: int  # at the dtype training loads them in, without DeepSpeed
    trainable_bytes: int
    gathered_name: str  # the largest module ZeRO-3 gathers at once
    gathered_params: int
    gathered_trainable: int
    weight_bytes: int  # element size of the base weights, without DeepSpeed
    adapter_bytes: int  # element size of LoRA adapters, without DeepSpeed (peft keeps them in float32)
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    norm_style: str
    norms_per_layer: int
    norms_train: bool
    attention: dict[str, _Linear]  # q_proj, k_proj, v_proj, o_proj
    mlp: dict[str, _Linear]  # gate_proj, up_proj, down_proj; or router, gate_up_proj, down_proj for MoE
    intermediate: int
    experts: int  # 0 for a dense MLP
    experts_per_token: int
    expert_lora_numel: int  # W + BA that peft materialises per MoE layer for LoRA on fused expert parameters
    expert_lora_grad_numel: int  # the largest of their gradients, held once in the backward
    attn_softcap: bool
    final_softcap: bool
    eager_masks: int  # distinct attention masks an eager model keeps (full, sliding)
    output_trains: bool  # the output layer has a trainable weight, rows or copy, so its input is kept
    merged_output_numel: int  # peft's trainable rows materialise the whole output weight per forward
    float32_matmul_params: int  # float32 weights autocast copies to 16 bits for the step (not the embedding)


@dataclass(frozen=True)
class _Run:
    """What the recipe asks for, as far as memory goes."""

    batch: int
    max_length: int
    gradient_accumulation_steps: int
    checkpointing: bool
    checkpoint_every: int
    checkpoint_offload: bool
    attention: str
    mixed: bool
    vocabulary: str  # where the vocabulary size came from


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per GPU (host bytes per machine), and what they were planned for."""

    weights_frozen: int
    weights_trainable: int
    gradients: int
    master_weights: int
    optimizer_states: int
    zero3_gathered: int
    communication_buffers: int
    activations: int
    allowance: int
    host_per_machine: int
    activation_peak: str  # where in the step the activations peak
    anatomy: _Anatomy = field(repr=False)
    run: _Run = field(repr=False)
    setup: DistributedSetup = field(repr=False)

    @property
    def model_states(self) -> int:
        """Weights, gradients, optimizer states and the ZeRO-3 gathered module: what DeepSpeed's estimators count."""
        return (
            self.weights_frozen
            + self.weights_trainable
            + self.gradients
            + self.master_weights
            + self.optimizer_states
            + self.zero3_gathered
        )

    @property
    def total(self) -> int:
        return self.model_states + self.communication_buffers + self.activations + self.allowance

    def on(self, setup: DistributedSetup) -> MemoryPlan:
        """The same run planned on another distributed setup."""
        return _plan(self.anatomy, self.run, setup)

    def table(self, gpu_bytes: int | None = None) -> str:
        """The plan as a table; with `gpu_bytes`, the verdict against that much GPU memory."""
        a, run = self.anatomy, self.run
        checkpointing = "off"
        if run.checkpointing:
            checkpointing = "every layer" if run.checkpoint_every == 1 else f"every {run.checkpoint_every} layers"
            checkpointing += ", offloaded" if run.checkpoint_offload else ""
        lines = [
            f"model: {a.description}",
            f"parameters: {_count(a.frozen_params + a.trainable_params)} ({_count(a.trainable_params)} trainable)",
            f"vocabulary: {run.vocabulary}",
            f"setup: {self.setup.describe()}",
            f"batch: {run.batch} x {run.max_length} tokens per GPU, activation checkpointing {checkpointing}, "
            f"{run.attention} attention",
            "",
            f"{'per GPU':<50}{'GiB':>10}",
        ]
        rows = [
            ("weights, frozen", self.weights_frozen),
            ("weights, trainable", self.weights_trainable),
            ("gradients", self.gradients),
            ("float32 master weights", self.master_weights),
            ("optimizer states (AdamW)", self.optimizer_states),
            (f"ZeRO-3 gathered: {a.gathered_name}", self.zero3_gathered),
            ("communication buffers", self.communication_buffers),
            (f"activations (peak: {self.activation_peak})", self.activations),
            ("CUDA context, NCCL, fragmentation", self.allowance),
        ]
        lines += [f"{name[:49]:<50}{_gib(value):>10}" for name, value in rows if value]
        lines += [
            f"{'total per GPU':<50}{_gib(self.total):>10}",
            f"{'host memory per machine':<50}{_gib(self.host_per_machine):>10}",
        ]
        if gpu_bytes is not None:
            margin = gpu_bytes - self.total
            verdict = "fits" if margin >= 0 else "does NOT fit"
            left = "to spare" if margin >= 0 else "short"
            lines.append(f"{verdict} in {_gib(gpu_bytes)} GiB per GPU ({_gib(abs(margin))} GiB {left})")
        return "\n".join(lines)


def _gib(value: int) -> str:
    return f"{value / GIB:.2f}"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def plan_memory(
    args, training_args, model_args, setup: DistributedSetup, *, model_config=None, tokenizer=None
) -> MemoryPlan:
    """The memory plan of a parsed recipe (``indictune.training.config.parse``) on `setup`.

    `model_config`: the model's config (default: read as training reads it: ``init_from_config`` or the config of
    ``model_name_or_path``). `tokenizer`: the tokenizer training uses, when at hand; without it the vocabulary is
    taken from the ``tokenizer_name_or_path`` folder if there is one, else from the config's vocab_size plus the
    rows the tokenizer recipe (recipes/tokenizer/*.yaml writing that folder) may add at most.
    """
    optim = getattr(training_args.optim, "value", training_args.optim)  # an OptimizerNames member, or its name
    if optim not in ADAMW_OPTIMIZERS:
        raise PlanError(f"optim {optim}: the planner counts AdamW's states ({', '.join(ADAMW_OPTIMIZERS)})")
    if not training_args.max_length or training_args.max_length < 1:
        raise PlanError("max_length is not set: the planner needs the longest sequence a batch can hold")
    if training_args.per_device_train_batch_size < 1:
        raise PlanError(
            f"per_device_train_batch_size must be at least 1, got {training_args.per_device_train_batch_size}"
        )
    kwargs = dict(training_args.activation_checkpointing_kwargs or {})
    every, offload = int(kwargs.pop("every_n_layers", 1)), bool(kwargs.pop("offload", False))
    if every < 1:
        raise PlanError(f"activation_checkpointing_kwargs every_n_layers must be at least 1, got {every}")
    from indictune.training.model import attention_implementation

    tokenizer = tokenizer if tokenizer is not None else _local_tokenizer(args, training_args)
    config = model_config or _training_config(args, model_args, training_args, tokenizer)
    length, new_ids, tokens, vocabulary = _vocabulary(args, config, tokenizer)
    anatomy = _anatomy(args, model_args, config, length, new_ids, tokens)
    run = _Run(
        batch=training_args.per_device_train_batch_size,
        max_length=training_args.max_length,
        gradient_accumulation_steps=training_args.gradient_accumulation_steps,
        checkpointing=bool(training_args.activation_checkpointing),
        checkpoint_every=every,
        checkpoint_offload=offload,
        attention=attention_implementation(model_args.attn_implementation),
        mixed=bool(training_args.bf16 or training_args.fp16) or setup.mixed_precision != "no",
        vocabulary=vocabulary,
    )
    return _plan(anatomy, run, setup)


def local_gpu_bytes() -> int | None:
    """Memory of this process's GPU, None without CUDA."""
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(int(os.environ.get("LOCAL_RANK", "0"))).total_memory


def plan_for_this_run(args, training_args, model_args, tokenizer) -> tuple[MemoryPlan, int] | None:
    """The plan of this process's run under ``accelerate launch`` and its GPU's memory, for :func:`check`;
    None on a machine without CUDA (nothing to check against)."""
    gpu_bytes = local_gpu_bytes()
    if gpu_bytes is None:
        return None
    return plan_memory(
        args, training_args, model_args, DistributedSetup.from_environment(), tokenizer=tokenizer
    ), gpu_bytes


def check(plan: MemoryPlan, gpu_bytes: int) -> None:
    """Raise :class:`PlanDoesNotFit`, with what to change, if `plan` needs more than `gpu_bytes` per GPU."""
    if gpu_bytes <= 0:
        raise PlanError(f"GPU memory must be positive, got {gpu_bytes} bytes")
    if plan.total <= gpu_bytes:
        return
    advice = _advice(plan, gpu_bytes)
    message = (
        f"the plan needs {_gib(plan.total)} GiB per GPU, {_gib(plan.total - gpu_bytes)} GiB more than the "
        f"{_gib(gpu_bytes)} GiB there are ({plan.setup.describe()})"
    )
    if advice:
        message += "; " + "; ".join(f"{i}. {step}" for i, step in enumerate(advice, 1))
    raise PlanDoesNotFit(message, plan, gpu_bytes)


def _advice(plan: MemoryPlan, gpu_bytes: int) -> list[str]:
    """What would make `plan` fit, in the order to try it, each said only where it applies: activation
    checkpointing, a smaller batch and ZeRO-3, each on top of the one before, until the plan fits; then, from there,
    the alternatives: more machines, offloading, a shorter max_length."""
    anatomy, run, setup = plan.anatomy, plan.run, plan.setup

    def total(run_: _Run, setup_: DistributedSetup) -> int:
        return _plan(anatomy, run_, setup_).total

    def outcome(run_: _Run, setup_: DistributedSetup) -> str:
        needed = total(run_, setup_)
        return f"{_gib(needed)} GiB per GPU" + (", fits" if needed <= gpu_bytes else ", still too much")

    advice = []
    if not run.checkpointing or run.checkpoint_every > 1:
        run = dataclasses.replace(run, checkpointing=True, checkpoint_every=1)
        advice.append(f"turn on activation_checkpointing for every layer ({outcome(run, setup)})")
    if run.batch > 1 and total(run, setup) > gpu_bytes:
        fitting = (
            b for b in range(run.batch - 1, 0, -1) if total(dataclasses.replace(run, batch=b), setup) <= gpu_bytes
        )
        batch = next(fitting, 1)
        steps = math.ceil(run.batch * run.gradient_accumulation_steps / batch)
        run = dataclasses.replace(run, batch=batch, gradient_accumulation_steps=steps)
        advice.append(
            f"lower per_device_train_batch_size to {batch} and raise gradient_accumulation_steps to {steps} to keep "
            f"the batch ({outcome(run, setup)})"
        )
    zero3 = dataclasses.replace(setup, zero_stage=3, deepspeed=True)
    if setup.zero_stage != 3 and total(run, setup) > gpu_bytes and total(run, zero3) < total(run, setup):
        setup = zero3
        advice.append(f"use ZeRO-3, recipes/accelerate/zero3.yaml ({outcome(run, setup)})")
    if total(run, setup) <= gpu_bytes:
        return advice
    # More machines help only by sharding, so the alternatives are ZeRO-3's, even where it does not help alone.
    sharded = setup if setup.zero_stage == 3 else zero3
    prefix = "" if sharded is setup else "with ZeRO-3, "
    machines = next(
        (
            n
            for n in range(setup.num_machines + 1, MAX_MACHINES + 1)
            if total(run, dataclasses.replace(sharded, num_machines=n)) <= gpu_bytes
        ),
        None,
    )
    if machines:
        advice.append(
            f"{prefix}{machines} machines ({machines * setup.processes_per_machine} GPUs) would fit "
            f"({outcome(run, dataclasses.replace(sharded, num_machines=machines))})"
        )
    offloaded = dataclasses.replace(sharded, offload_optimizer=True, offload_param=True)
    if total(run, offloaded) < total(run, setup):
        host = _plan(anatomy, run, offloaded).host_per_machine
        advice.append(
            f"or offload the optimizer and the weights to CPU memory, recipes/accelerate/zero3-offload.yaml "
            f"({outcome(run, offloaded)}; {_gib(host)} GiB of host memory per machine)"
        )
    shorter = (run.max_length * 3 // 4, run.max_length // 2, run.max_length // 4, run.max_length // 8)
    length = next(
        (n for n in shorter if n >= 1 and total(dataclasses.replace(run, max_length=n), setup) <= gpu_bytes), None
    )
    if length:
        advice.append(
            f"or shorten max_length to {length} ({outcome(dataclasses.replace(run, max_length=length), setup)})"
        )
    return advice


def _plan(anatomy: _Anatomy, run: _Run, setup: DistributedSetup) -> MemoryPlan:
    states, host_per_gpu = _model_states(anatomy, setup, run.mixed)
    activations, activation_host, peak = _activations(anatomy, run, setup)
    return MemoryPlan(
        **states,
        activations=activations,
        allowance=CUDA_ALLOWANCE_BYTES,
        host_per_machine=(host_per_gpu + activation_host) * setup.processes_per_machine,
        activation_peak=peak,
        anatomy=anatomy,
        run=run,
        setup=setup,
    )


def _model_states(a: _Anatomy, setup: DistributedSetup, mixed: bool) -> tuple[dict[str, int], int]:
    """Per-GPU weights, gradients, optimizer states, ZeRO-3 gathered module and buffers; and host bytes per GPU."""
    frozen, trainable, n = a.frozen_params, a.trainable_params, setup.world_size
    if not setup.deepspeed:
        # DDP or one process: parameters, their gradients and AdamW's moments in the parameters' own dtypes, no
        # master copy; DDP's reducer keeps its gradient buckets beside .grad (gradient_as_bucket_view is off).
        states = dict(
            weights_frozen=a.frozen_bytes,
            weights_trainable=a.trainable_bytes,
            gradients=a.trainable_bytes,
            master_weights=0,
            optimizer_states=2 * a.trainable_bytes,
            zero3_gathered=0,
            communication_buffers=a.trainable_bytes if n > 1 else 0,
        )
        return states, 0
    # DeepSpeed casts every parameter to 16 bits under mixed precision and wants float32 without it; the optimizer
    # then steps on a float32 master copy of its partition, with the partition's gradient in float32 too.
    weight = low = 2 if mixed else 4  # parameters, and gradients at their precision
    fp32_grad = master = 4 if mixed else 0
    moments = 8
    stage = setup.zero_stage
    sharded_weights = stage == 3
    weights_frozen = weight * frozen // n if sharded_weights else weight * frozen
    weights_trainable = weight * trainable // n if sharded_weights else weight * trainable
    if stage == 0:
        gradients, master_weights, optimizer = (low + fp32_grad) * trainable, master * trainable, moments * trainable
    elif stage == 1:  # full 16-bit gradients, a float32 partition of them
        gradients, master_weights, optimizer = (
            low * trainable + fp32_grad * trainable // n,
            master * trainable // n,
            moments * trainable // n,
        )
    elif stage == 2:
        gradients, master_weights, optimizer = (
            (low + fp32_grad) * trainable // n,
            master * trainable // n,
            moments * trainable // n,
        )
    else:  # ZeRO-3 reduce-scatters into a float32 gradient partition (DeepSpeed's estimate: 2 + 16 bytes/param)
        gradients, master_weights, optimizer = 4 * trainable // n, master * trainable // n, moments * trainable // n
    host = 0
    if setup.offload_optimizer:
        # The gradient partition goes to the CPU in float32 with the master copy and the moments; ZeRO-1 still
        # holds its full 16-bit gradients on the GPU.
        host += 4 * trainable // n + master_weights + optimizer
        gradients = low * trainable if stage == 1 else 0
        master_weights = optimizer = 0
    if setup.offload_param:
        host += weights_frozen + weights_trainable
        weights_frozen = weights_trainable = 0
    gathered = weight * a.gathered_params + low * a.gathered_trainable if stage == 3 else 0
    buckets = low * DEEPSPEED_REDUCE_BUCKET_ELEMENTS if stage else 0
    states = dict(
        weights_frozen=weights_frozen,
        weights_trainable=weights_trainable,
        gradients=gradients,
        master_weights=master_weights,
        optimizer_states=optimizer,
        zero3_gathered=gathered,
        communication_buffers=buckets,
    )
    return states, host


def _activations(a: _Anatomy, run: _Run, setup: DistributedSetup) -> tuple[int, int, str]:
    """Peak activation bytes of a training step on one GPU, bytes offloaded to the host, and where the peak is.

    Counted tensor by tensor as autograd saves them for the backward in transformers' modelling code (checked against
    a CPU measurement in tests/test_memory_plan.py), per token unless said otherwise. The step peaks either at the
    loss (everything the forward kept, plus the float32 loss tensors) or in the backward of a decoder layer (with
    checkpointing: the layer's activations recomputed, plus the gradients flowing through it).
    """
    # Element sizes: activations are 16-bit under mixed precision (DeepSpeed casts the model, DDP autocasts) or the
    # weights' dtype. (float32 weights under autocast keep their residual stream and norms in float32: counted in
    # 16 bits here, an underestimate there, as docs/benchmarks.md ("Memory per GPU") says.) LoRA's input: DeepSpeed
    # runs the adapter in 16 bits on the layer's own input; without DeepSpeed peft casts the input to the float32
    # adapter's dtype (and autocast back down), a copy per adapter.
    e = 2 if run.mixed else 4 if setup.deepspeed else a.weight_bytes
    lora_e = 2 if run.mixed else 4 if setup.deepspeed else a.adapter_bytes
    lora_copies = not setup.deepspeed and (run.mixed or lora_e != e)
    weight = 2 if setup.deepspeed and run.mixed else 4 if setup.deepspeed else a.weight_bytes
    h, s, tokens = a.hidden, run.max_length, run.batch * run.max_length
    q_width, kv_width = a.heads * a.head_dim, a.kv_heads * a.head_dim

    def lora(linear: _Linear, input_kept: bool) -> int:
        """What a LoRA adapter keeps: its (dropped-out or cast) input unless the layer's input is kept anyway and
        shared, and its low-rank activation."""
        if not linear.lora_rank:
            return 0
        if linear.lora_dropout:
            kept = (1 + lora_e) * linear.n_in  # the dropout's boolean mask and its output
        elif lora_copies:
            kept = lora_e * linear.n_in
        else:
            kept = 0 if input_kept else e * linear.n_in
        return kept + lora_e * linear.lora_rank

    def shared_input(linears: list[_Linear]) -> int:
        """Bytes for projections that read the same input: kept once if a base weight trains, plus their LoRA."""
        kept = any(linear.base_trains for linear in linears)
        total = e * linears[0].n_in if kept else 0
        for linear in linears:
            total += lora(linear, kept)
            kept = kept or (linear.lora_rank and not linear.lora_dropout and not lora_copies)
        return total

    # RMSNorm: its float32 input (a copy in 16-bit runs) and 1/rms; with a trained weight also the normalised
    # tensor, cast to the activations' dtype (Llama) or in float32 (Gemma).
    norm = 4 * h + 4 + ((e * h if a.norm_style == "llama" else 4 * h) if a.norms_train else 0)

    attn = a.attention
    repeated = run.attention not in FLASH_ATTENTION and a.kv_heads < a.heads
    key_value = 2 * e * (q_width if repeated else kv_width)  # sdpa with a mask and eager repeat the kv heads
    attention = shared_input([attn["q_proj"], attn["k_proj"], attn["v_proj"]]) + e * q_width + key_value
    if run.attention == "eager":
        # Probabilities: softmax's float32 output, its cast, and the soft-capped scores' tanh.
        probs = 4 + (e if e != 4 else 0) + (e if a.attn_softcap else 0)
        attention += a.heads * s * probs
        o_kept = attn["o_proj"].base_trains
        attention += (e * q_width if o_kept else 0) + lora(attn["o_proj"], o_kept)
        # softmax's backward holds the float32 gradient of the probabilities and the scores' gradient
        attention_backward = a.heads * s * (4 + e)
    else:
        # The kernel keeps its output (o_proj's input) and float32 log-sum-exp; sdpa converts the boolean mask to
        # a float one per layer, which the memory-efficient kernel keeps. Other kernels are planned as sdpa.
        attention += e * q_width + 4 * a.heads + lora(attn["o_proj"], True)
        attention += e * s if run.attention not in FLASH_ATTENTION else 0
        attention_backward = 0

    mlp, i = a.mlp, a.intermediate
    layer_const = expert_intermediates = 0
    if a.experts:
        k = a.experts_per_token
        router, gate_up, down = mlp["router"], mlp["gate_up_proj"], mlp["down_proj"]
        # Router: its softmax in float32, the top-k indices and weights; experts (grouped_mm): the routing
        # permutations, each token's copy per expert, the gate/up output (the activation keeps it whole), the
        # activation, the product for the down projection, the down output and routing weight for the weighting.
        mlp_bytes = shared_input([router]) + 4 * a.experts + 12 * k + 4 + 28 * k
        mlp_bytes += k * e * (h if gate_up.base_trains or gate_up.lora_rank else 0)
        expert_intermediates = k * e * (2 * i + i + h + (i if down.base_trains or down.lora_rank else 0))
        mlp_bytes += expert_intermediates
        # The activation's gradients (once the down output is freed); or, earlier, the float32 gradients (routing
        # weights are float32) of the tokens' copies when they are put back in order, with the layer's own.
        mlp_backward = max(2 * k * e * i - k * e * h, 4 * h * (1 + 2 * k) + 2 * e * h)
        # LoRA on fused experts: peft materialises W + BA for each targeted parameter, which grouped_mm keeps.
        layer_const = weight * a.expert_lora_numel
    else:
        mlp_bytes = shared_input([mlp["gate_proj"], mlp["up_proj"]]) + 3 * e * i
        down = mlp["down_proj"]
        mlp_bytes += (e * i if down.base_trains else 0) + lora(down, down.base_trains)
        mlp_backward = 2 * e * i  # the gradients of the activation and of the up projection

    layer = a.norms_per_layer * norm + attention + mlp_bytes
    # A layer's backward peaks in the MLP's, with the whole layer kept; or in the attention's, once the MLP and the
    # norms after the attention are freed; or, with LoRA on fused experts, when the gate/up projection's W + BA gets
    # its gradient, once the experts' intermediates are freed.
    moments = [(layer + mlp_backward) * tokens + layer_const, (norm + attention + attention_backward) * tokens]
    if a.expert_lora_grad_numel:
        gradient = weight * a.expert_lora_grad_numel
        moments.append((layer - expert_intermediates) * tokens + layer_const + gradient)
    # Once per step: cos/sin, the attention mask(s), input ids and labels.
    masks = {"eager": a.eager_masks * e * s, "sdpa": s}.get(run.attention, 0)
    shared = 2 * a.head_dim * e + masks + 16
    head = norm + (e * h if a.output_trains else 0) + 4 * a.vocab + (e * a.vocab if a.final_softcap else 0)

    checkpointed = len(range(0, a.layers, run.checkpoint_every)) if run.checkpointing else 0
    kept_layers = a.layers - checkpointed
    checkpoint_inputs = checkpointed * e * h * tokens
    resident = kept_layers * (layer * tokens + layer_const) + shared * tokens
    if run.mixed and not setup.deepspeed:  # autocast keeps a 16-bit copy of each float32 weight it multiplies by
        resident += 2 * a.float32_matmul_params
    resident += 0 if run.checkpoint_offload else checkpoint_inputs
    at_loss = resident + head * tokens + (LOSS_BYTES_PER_LOGIT - 4) * a.vocab * tokens + weight * a.merged_output_numel
    # The backward of the last layer: recomputed under checkpointing, else among the layers kept.
    in_layer = resident + max(moments) - (0 if checkpointed else layer * tokens + layer_const)
    host = checkpoint_inputs if run.checkpoint_offload else 0
    if at_loss >= in_layer:
        return at_loss, host, "loss"
    return in_layer, host, "layer recompute" if checkpointed else "layer backward"


def _local_tokenizer(args, training_args):
    """The training tokenizer when tokenizer_name_or_path is a folder on this machine, else None."""
    path = args.tokenizer_name_or_path
    if not path or not Path(path).is_dir():
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, trust_remote_code=training_args.trust_remote_code)


def _training_config(args, model_args, training_args, tokenizer):
    """The model's config as scripts/train.py builds it (training/model.py load_model)."""
    from transformers import AutoConfig

    if args.init_from_config:
        if tokenizer is None:
            raise PlanError(
                "init_from_config sizes the new model to its tokenizer: tokenizer_name_or_path must be a folder here"
            )
        settings = yaml.safe_load(Path(args.init_from_config).read_text())
        return AutoConfig.for_model(
            **settings,
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    if not model_args.model_name_or_path:
        raise PlanError("set model_name_or_path (or init_from_config)")
    try:
        return AutoConfig.from_pretrained(
            model_args.model_name_or_path,
            revision=model_args.model_revision,
            trust_remote_code=training_args.trust_remote_code,
        )
    except (OSError, ValueError) as err:
        reason = " ".join(str(err).split())  # transformers' messages run over several lines
        raise PlanError(
            f"cannot read the config of {model_args.model_name_or_path} ({reason}); give its config.json as "
            "model_config"
        ) from None


class _NamedTokens:
    """Stands in for the tokenizer in lora_config when it is not on this machine: the planner only counts rows, so
    the recipe's trainable_tokens (all in the base vocabulary) get ids of their own below it."""

    def __init__(self, tokens: list[str]):
        self.tokens = tokens

    def get_vocab(self) -> dict[str, int]:
        return {token: i for i, token in enumerate(self.tokens)}


def _tokenizer_recipe_rows(tokenizer_path: str) -> tuple[int, str] | None:
    """Rows the tokenizer recipe writing `tokenizer_path` adds at most, and the recipe."""
    recipes = Path(__file__).resolve().parent.parent / "recipes" / "tokenizer"
    for recipe in sorted(recipes.glob("*.yaml")):
        settings = yaml.safe_load(recipe.read_text()) or {}
        if Path(settings.get("output_dir", "")) == Path(tokenizer_path):
            per_language = settings.get("pieces_per_language")
            return (sum(per_language.values()) if per_language else int(settings.get("vocab_size", 8000))), recipe.name
    return None


def _vocabulary(args, config, tokenizer) -> tuple[int, list[int], object, str]:
    """(tokenizer length, ids of the rows the tokenizer adds, what lora_config looks tokens up in, where from)."""
    base = config.vocab_size
    if tokenizer is not None:
        where = getattr(tokenizer, "name_or_path", "")
        added_file = Path(where) / "new_tokens.json"
        if args.init_from_config:  # a new model is built for the tokenizer: no row is new to it
            new_ids = []
        elif added_file.is_file():
            new_ids = [entry["id"] for entry in json.loads(added_file.read_text())]
        else:
            new_ids = list(range(base, len(tokenizer)))
        return len(tokenizer), new_ids, tokenizer, f"{len(tokenizer)} tokens, the tokenizer at {where}"
    named = _NamedTokens(args.trainable_tokens)
    path = args.tokenizer_name_or_path
    found = _tokenizer_recipe_rows(path) if path else None
    if found is None:
        where = f"{path} is not here and no tokenizer recipe writes it: " if path else ""
        return base, [], named, f"{base} tokens, the model config's vocab_size ({where}no rows added)"
    rows, recipe = found
    return (
        base + rows,
        list(range(base, base + rows)),
        named,
        f"{base + rows} tokens at most: the model config's {base} + up to {rows} rows recipes/tokenizer/{recipe} adds "
        f"({path} is not here)",
    )


def _load_dtype(model_args, config, args) -> torch.dtype:
    """The dtype training loads the weights in (training/model.py load_model; transformers' "auto" and None)."""
    if model_args.dtype not in (None, "auto"):
        return getattr(torch, model_args.dtype)
    if args.init_from_config:  # from_config without a dtype: torch's default
        return torch.get_default_dtype()
    dtype = getattr(config, "dtype", None)
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype or torch.get_default_dtype()


def _linear(module: nn.Module):
    """A projection's input width, whether its weight trains, and its LoRA (peft's LoraLayer around it)."""
    from peft.tuners.lora import LoraLayer
    from peft.tuners.lora.layer import ParamWrapper

    if isinstance(module, ParamWrapper):  # LoRA folded into the weight: the effective weight trains
        return _Linear(n_in=getattr(module.get_base_layer(), module.parameter_name).shape[-1], base_trains=True)
    if isinstance(module, LoraLayer):
        adapter = module.active_adapters[0]
        dropout = module.lora_dropout[adapter]
        return _Linear(
            n_in=module.get_base_layer().weight.shape[-1],
            base_trains=module.get_base_layer().weight.requires_grad,
            lora_rank=module.r[adapter],
            lora_dropout=dropout.p if isinstance(dropout, nn.Dropout) else 0.0,
        )
    return _Linear(n_in=module.weight.shape[-1], base_trains=module.weight.requires_grad)


def _experts(mlp: nn.Module) -> tuple[nn.Module, dict[str, tuple[nn.Parameter, int]]]:
    """The fused experts module under peft's wrappers, and the expert parameters LoRA targets, with its rank."""
    from peft.tuners.lora.layer import ParamWrapper

    module, targeted = mlp.experts, {}
    while isinstance(module, ParamWrapper):
        rank = module.r[module.active_adapters[0]]
        targeted[module.parameter_name] = (getattr(module.get_base_layer(), module.parameter_name), rank)
        module = module.base_layer
    if not (hasattr(module, "gate_up_proj") and hasattr(module, "down_proj")):
        raise PlanError(f"{type(module).__name__}: the planner models fused gate_up_proj/down_proj experts")
    return module, targeted


def _anatomy(args, model_args, config, length: int, new_ids: list[int], tokens) -> _Anatomy:
    """Build the model as training does, on the meta device, and read off what memory depends on."""
    from peft import get_peft_model
    from peft.tuners.lora import LoraLayer
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer
    from transformers import AutoModelForCausalLM
    from transformers.modeling_layers import GradientCheckpointingLayer

    from indictune.training import moe
    from indictune.training.model import lora_config

    norm_style = NORM_STYLES.get(config.model_type)
    if norm_style is None:
        raise PlanError(
            f"model_type {config.model_type}: the planner models the activations of {', '.join(NORM_STYLES)}"
        )
    dtype = _load_dtype(model_args, config, args)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    if model.get_input_embeddings().weight.shape[0] < length:  # as training/tokenizer/embeddings.py resizes
        model.resize_token_embeddings(length, mean_resizing=False)
    embedding, output = model.get_input_embeddings().weight, model.get_output_embeddings()
    output_name = next(name for name, module in model.named_modules() if module is output)
    blocks = [block for _, block in moe.moe_blocks(model)]  # ZeRO-3 leaves, registered before peft wraps
    base = model
    peft_config = lora_config(model_args, args, model, tokens, new_ids)
    if peft_config is not None:
        with torch.device("meta"):  # peft creates the adapters on the default device: meta, so no memory
            model = get_peft_model(model, peft_config)

    parameters = list(model.parameters())
    frozen = [p for p in parameters if not p.requires_grad]
    trainable = [p for p in parameters if p.requires_grad]
    gathered_name, gathered = _largest_gathered(model, blocks)

    layers = [m for m in base.modules() if isinstance(m, GradientCheckpointingLayer)]
    if not layers:
        raise PlanError(f"{type(base).__name__}: no decoder layers (GradientCheckpointingLayer) found")
    layer = layers[0]
    norms = [m for m in layer.children() if type(m).__name__.endswith("RMSNorm")]
    attn = layer.self_attn
    attention = {name: _linear(getattr(attn, name)) for name in ("q_proj", "k_proj", "v_proj", "o_proj")}
    mlp_module = layer.mlp
    experts = experts_per_token = expert_lora = expert_lora_grad = 0
    if hasattr(mlp_module, "experts"):
        module, targeted = _experts(mlp_module)
        in_dim = 1 if getattr(module, "is_transposed", False) else 2  # [experts, out, in], or [experts, in, out]
        mlp = {"router": _linear(mlp_module.gate)}
        for name in ("gate_up_proj", "down_proj"):
            weight = getattr(module, name)
            mlp[name] = _Linear(weight.shape[in_dim], weight.requires_grad, lora_rank=targeted.get(name, (None, 0))[1])
        experts, experts_per_token = module.num_experts, config.get_text_config().num_experts_per_tok
        expert_lora = sum(weight.numel() for weight, _ in targeted.values())
        expert_lora_grad = max((weight.numel() for weight, _ in targeted.values()), default=0)
    else:
        mlp = {name: _linear(getattr(mlp_module, name)) for name in ("gate_proj", "up_proj", "down_proj")}

    output_module = base.get_submodule(output_name)
    merged_output = any(isinstance(m, TrainableTokensLayer) for m in output_module.modules())
    adapters = [m.lora_A[m.active_adapters[0]].weight for m in base.modules() if isinstance(m, LoraLayer)]
    text = config.get_text_config()
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    description = f"{config.model_type}, {len(layers)} layers, hidden {text.hidden_size}"
    if experts:
        description += f", {experts} experts, top-{experts_per_token}"
    return _Anatomy(
        description=description,
        frozen_params=sum(p.numel() for p in frozen),
        trainable_params=sum(p.numel() for p in trainable),
        frozen_bytes=sum(p.numel() * p.element_size() for p in frozen),
        trainable_bytes=sum(p.numel() * p.element_size() for p in trainable),
        gathered_name=gathered_name,
        gathered_params=sum(p.numel() for p in gathered),
        gathered_trainable=sum(p.numel() for p in gathered if p.requires_grad),
        weight_bytes=torch.empty((), dtype=dtype).element_size(),
        adapter_bytes=adapters[0].element_size() if adapters else 4,
        layers=len(layers),
        hidden=text.hidden_size,
        heads=text.num_attention_heads,
        kv_heads=getattr(text, "num_key_value_heads", None) or text.num_attention_heads,
        head_dim=head_dim,
        vocab=output.weight.shape[0],
        norm_style=norm_style,
        norms_per_layer=len(norms),
        norms_train=any(p.requires_grad for n in norms for p in n.parameters()),
        attention=attention,
        mlp=mlp,
        intermediate=mlp["down_proj"].n_in,
        experts=experts,
        experts_per_token=experts_per_token,
        expert_lora_numel=expert_lora,
        expert_lora_grad_numel=expert_lora_grad,
        attn_softcap=bool(getattr(text, "attn_logit_softcapping", None)),
        final_softcap=bool(getattr(text, "final_logit_softcapping", None)),
        eager_masks=2 if "sliding_attention" in (getattr(text, "layer_types", None) or []) else 1,
        output_trains=any(p.requires_grad for p in output_module.parameters()),
        merged_output_numel=output.weight.numel() if merged_output else 0,
        float32_matmul_params=sum(
            p.numel()
            for name, p in model.named_parameters()
            if p.dtype == torch.float32 and p.dim() > 1 and p is not embedding and "trainable_tokens" not in name
        ),
    )


def _largest_gathered(model: nn.Module, blocks: list[nn.Module]) -> tuple[str, list[nn.Parameter]]:
    """The module ZeRO-3 gathers the most parameters of at once: its own parameters, or an MoE block's all."""
    inside = {id(m) for block in blocks for m in block.modules()}
    block_ids = {id(block) for block in blocks}
    best_name, best, best_size = "", [], -1
    for name, module in model.named_modules():
        if id(module) in block_ids:
            params, name = list(module.parameters()), name + " (MoE block)"
        elif id(module) in inside:
            continue
        else:
            params = list(module.parameters(recurse=False))
        size = sum(p.numel() for p in params)
        if size > best_size:
            best_name, best, best_size = name, params, size
    # The module's name in the model, without peft's wrappers around it.
    for wrapper in ("base_model.model.", ".token_adapter", ".base_layer", ".original_module"):
        best_name = best_name.replace(wrapper, "")
    return best_name, best

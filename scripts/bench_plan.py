"""The memory planner next to DeepSpeed's own estimators, for Llama-3.1-8B, Llama-3.1-70B and Mixtral-8x7B.

    python scripts/bench_plan.py

For each model (its published config in recipes/models/), on 1, 2 and 4 machines of 8 GPUs, under ZeRO-2 and ZeRO-3
with and without offloading, prints per GPU in GiB: the planner's model states (weights, gradients, optimizer states,
the module ZeRO-3 gathers) for full fine-tuning in bf16 with AdamW, DeepSpeed's estimate of the same
(estimate_zero2_model_states_mem_needs, estimate_zero3_model_states_mem_needs), the difference in bytes, and the
planner's totals (with communication buffers, activations and the allowance) for full fine-tuning and for the LoRA
settings of recipes/train/llama-3.1-8b/hindi-cpt.yaml (r=64 on all linear layers, the rows of up to 24K new tokens
trained, 4 x 4096 tokens per GPU, activation checkpointing; for Mixtral also LoRA on the fused experts, without
dropout, which peft cannot apply there). Exits 1 if a full fine-tuning figure differs from DeepSpeed's by anything
but what the planner means to differ by: under ZeRO-3 an MoE block is gathered whole, router included.
"""

import sys

import torch
from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs
from transformers import AutoConfig, AutoModelForCausalLM

from indictune.training import config, memory

RECIPE = "recipes/train/llama-3.1-8b/hindi-cpt.yaml"
MODELS = {
    "Llama-3.1-8B": ("recipes/models/llama-3.1-8b.json", []),
    "Llama-3.1-70B": ("recipes/models/llama-3.1-70b.json", []),
    "Mixtral-8x7B": (
        "recipes/models/mixtral-8x7b.json",
        ["--lora_target_parameters", "mlp.experts.gate_up_proj", "mlp.experts.down_proj", "--lora_dropout", "0.0"],
    ),
}
SETUPS = [  # (ZeRO stage, offload optimizer, offload parameters)
    (2, False, False),
    (2, True, False),
    (3, False, False),
    (3, True, False),
    (3, True, True),
]
MACHINES = (1, 2, 4)
GPUS_PER_MACHINE = 8


def deepspeed_estimate(stage, offload_optimizer, offload_param, machines, total, largest) -> int:
    if stage == 2:
        return estimate_zero2_model_states_mem_needs(total, GPUS_PER_MACHINE, machines, cpu_offload=offload_optimizer)[
            1
        ]
    return estimate_zero3_model_states_mem_needs(
        total, largest, GPUS_PER_MACHINE, machines, cpu_offload=offload_optimizer, cpu_offload_params=offload_param
    )[1]


def deepspeed_counts(model_config, vocab: int) -> tuple[int, int]:
    """Total and largest-module parameters as deepspeed.runtime.zero.stage3.model_to_params counts them, for the
    model resized to `vocab` rows (told apart by identity: on the meta device every data_ptr is 0)."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config)
    model.resize_token_embeddings(vocab, mean_resizing=False)
    total = sum({id(p): p.numel() for p in model.parameters()}.values())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return total, largest


def gib(value: int) -> str:
    return f"{value / memory.GIB:.2f}"


def main() -> int:
    on_cpu = [] if torch.cuda.is_available() else ["--use_cpu", "true"]  # bf16 recipes on a machine without a GPU
    base = memory.DistributedSetup(zero_stage=2, deepspeed=True, processes_per_machine=GPUS_PER_MACHINE)
    header = (
        "| model | machines x GPUs | setup | full FT model states | DeepSpeed | difference (bytes) "
        "| full FT total | LoRA model states | LoRA total |"
    )
    rows, unexplained = [header, "|" + "---|" * 9], []
    for name, (model_path, overrides) in MODELS.items():
        model_config = AutoConfig.from_pretrained(model_path)
        full = memory.plan_memory(
            *config.parse(["--config", RECIPE, "--use_peft", "false", *on_cpu]), base, model_config=model_config
        )
        lora = memory.plan_memory(
            *config.parse(["--config", RECIPE, *overrides, *on_cpu]), base, model_config=model_config
        )
        total, largest = deepspeed_counts(model_config, full.anatomy.vocab)
        print(f"{name}: {full.run.vocabulary}; LoRA trains {lora.anatomy.trainable_params / 1e6:.1f}M parameters")
        for machines in MACHINES:
            for stage, offload_optimizer, offload_param in SETUPS:
                setup = memory.DistributedSetup(
                    zero_stage=stage,
                    deepspeed=True,
                    offload_optimizer=offload_optimizer,
                    offload_param=offload_param,
                    num_machines=machines,
                    processes_per_machine=GPUS_PER_MACHINE,
                    mixed_precision="bf16",
                )
                planned, planned_lora = full.on(setup), lora.on(setup)
                estimate = deepspeed_estimate(stage, offload_optimizer, offload_param, machines, total, largest)
                difference = planned.model_states - estimate
                meant = 4 * (full.anatomy.gathered_params - largest) if stage == 3 else 0
                if difference != meant:
                    unexplained.append(f"{name} {machines}x{GPUS_PER_MACHINE} {setup.describe()}: {difference} bytes")
                offloaded = " + ".join(n for n, on in (("opt", offload_optimizer), ("params", offload_param)) if on)
                label = f"ZeRO-{stage}" + (f" offload {offloaded}" if offloaded else "")
                rows.append(
                    f"| {name} | {machines}x{GPUS_PER_MACHINE} | {label} "
                    f"| {gib(planned.model_states)} | {gib(estimate)} | {difference} | {gib(planned.total)} "
                    f"| {gib(planned_lora.model_states)} | {gib(planned_lora.total)} |"
                )
    print("\n".join(rows))
    for line in unexplained:
        print(f"differs from DeepSpeed: {line}", file=sys.stderr)
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main())

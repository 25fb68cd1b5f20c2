"""The memory planner (training/memory.py): parameter counts of the shipped model configs, model states against
DeepSpeed's own estimators, activations against a measured peak, and scripts/plan.py end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch.distributed._tools import mem_tracker
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, MixtralConfig

from indictune.training import config as training_config
from indictune.training import memory

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "recipes" / "models"
ON_CPU = [] if torch.cuda.is_available() else ["--use_cpu", "true"]  # TrainingArguments wants use_cpu for bf16


def parse(tmp_path, **settings):
    """A parsed training recipe: full fine-tuning in bf16 unless `settings` say otherwise."""
    recipe = {
        "train_data": ["unused"],
        "model_name_or_path": "unused",
        "use_peft": False,
        "bf16": True,
        "dtype": "bfloat16",
        "max_length": 4096,
        "per_device_train_batch_size": 1,
        **settings,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return training_config.parse(["--config", str(path), *ON_CPU])


def deepspeed_setup(stage, nodes, gpus, offload_optimizer=False, offload_param=False):
    return memory.DistributedSetup(
        zero_stage=stage,
        deepspeed=True,
        offload_optimizer=offload_optimizer,
        offload_param=offload_param,
        num_machines=nodes,
        processes_per_machine=gpus,
        mixed_precision="bf16",
    )


def deepspeed_gpu_bytes(stage, total_params, largest_layer_params, nodes, gpus, offload_optimizer, offload_param):
    """DeepSpeed's own per-GPU estimate of the model states (mixed precision, AdamW)."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    if stage == 2:
        return estimate_zero2_model_states_mem_needs(total_params, gpus, nodes, cpu_offload=offload_optimizer)[1]
    return estimate_zero3_model_states_mem_needs(
        total_params, largest_layer_params, gpus, nodes, cpu_offload=offload_optimizer, cpu_offload_params=offload_param
    )[1]


def deepspeed_counts(model) -> tuple[int, int]:
    """deepspeed.runtime.zero.stage3.model_to_params, with shared parameters told apart by identity: on the meta
    device every data_ptr is 0, which that function keys them by."""
    total = sum({id(p): p.numel() for p in model.parameters()}.values())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return total, largest


TINY = dict(
    hidden_size=256,
    intermediate_size=688,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=2,
    max_position_embeddings=1024,
)


def small_llama_config(vocab=8192) -> LlamaConfig:
    return LlamaConfig(**TINY, vocab_size=vocab)


def small_mixtral_config(vocab=8192) -> MixtralConfig:
    return MixtralConfig(**TINY, vocab_size=vocab, num_local_experts=4, num_experts_per_tok=2)


@pytest.mark.parametrize(
    "name, published",  # billions of parameters, as the model cards give them
    [("llama-3.1-8b", "8.03"), ("llama-3.1-70b", "70.6"), ("mixtral-8x7b", "46.7"), ("gemma-2-27b", "27.2")],
)
def test_shipped_configs_have_the_published_sizes(tmp_path, name, published):
    model_config = AutoConfig.from_pretrained(MODELS / f"{name}.json")
    plan = memory.plan_memory(*parse(tmp_path), memory.DistributedSetup(), model_config=model_config)
    assert plan.anatomy.frozen_params == 0  # full fine-tuning
    digits = len(published.split(".")[1])
    assert f"{plan.anatomy.trainable_params / 1e9:.{digits}f}" == published


SETUPS = [  # (ZeRO stage, nodes, GPUs per node, offload optimizer, offload parameters)
    (2, 1, 8, False, False),
    (2, 2, 8, True, False),
    (3, 1, 8, False, False),
    (3, 4, 8, False, False),
    (3, 2, 8, True, False),
    (3, 1, 8, True, True),
]


@pytest.mark.parametrize("name", ["llama-3.1-8b", "llama-3.1-70b", "mixtral-8x7b"])
def test_full_fine_tuning_model_states_equal_deepspeeds_estimators(tmp_path, name):
    model_config = AutoConfig.from_pretrained(MODELS / f"{name}.json")
    with torch.device("meta"):
        total, largest = deepspeed_counts(AutoModelForCausalLM.from_config(model_config))
    recipe = parse(tmp_path)
    for stage, nodes, gpus, offload_optimizer, offload_param in SETUPS:
        setup = deepspeed_setup(stage, nodes, gpus, offload_optimizer, offload_param)
        plan = memory.plan_memory(*recipe, setup, model_config=model_config)
        expected = deepspeed_gpu_bytes(stage, total, largest, nodes, gpus, offload_optimizer, offload_param)
        # The one deliberate difference: ZeRO-3 gathers an MoE block whole, router included, where DeepSpeed's
        # estimate takes the largest module's own parameters (the experts); 2 bytes of weights and 2 of gradients.
        moe_block = plan.anatomy.gathered_params - largest if stage == 3 else 0
        assert plan.model_states == expected + 4 * moe_block, (stage, nodes, gpus, offload_optimizer, offload_param)


def test_tiny_model_states_equal_deepspeeds_estimators_on_a_real_model(tmp_path):
    from deepspeed.runtime.zero.stage3 import model_to_params

    model_config = small_llama_config()
    total, largest = model_to_params(AutoModelForCausalLM.from_config(model_config))  # real tensors, on the CPU
    recipe = parse(tmp_path)
    for stage, nodes, gpus, offload_optimizer, offload_param in [
        (2, 1, 1, False, False),
        (2, 1, 2, True, False),
    ] + SETUPS:
        plan = memory.plan_memory(
            *recipe, deepspeed_setup(stage, nodes, gpus, offload_optimizer, offload_param), model_config=model_config
        )
        assert plan.model_states == deepspeed_gpu_bytes(
            stage, total, largest, nodes, gpus, offload_optimizer, offload_param
        )


def test_mixtral_gathers_a_whole_moe_block_under_zero3(tmp_path):
    model_config = AutoConfig.from_pretrained(MODELS / "mixtral-8x7b.json")
    plan = memory.plan_memory(*parse(tmp_path), deepspeed_setup(3, 1, 8), model_config=model_config)
    experts = 8 * 3 * 14336 * 4096
    router = 8 * 4096
    assert plan.anatomy.gathered_name == "model.layers.0.mlp (MoE block)"
    assert plan.anatomy.gathered_params == experts + router
    assert plan.zero3_gathered == 4 * (experts + router)  # 16-bit weights and their 16-bit gradients


def test_lora_plans_model_states_for_the_trainable_parameters_only(tmp_path):
    """What DeepSpeed's estimators, which know no frozen parameters, would count in excess for LoRA."""
    model_config = small_llama_config()
    recipe = parse(
        tmp_path, use_peft=True, lora_r=8, lora_alpha=16, lora_target_modules="all-linear", trainable_embeddings="none"
    )
    with torch.device("meta"):
        total, largest = deepspeed_counts(AutoModelForCausalLM.from_config(model_config))
    for stage in (2, 3):
        plan = memory.plan_memory(*recipe, deepspeed_setup(stage, 1, 8), model_config=model_config)
        a, n = plan.anatomy, 8
        assert a.frozen_params == total and 0 < a.trainable_params < total / 10
        full = deepspeed_gpu_bytes(stage, total + a.trainable_params, largest, 1, n, False, False)
        if stage == 2:  # the frozen base's 16-bit and float32 gradients, float32 master and moments
            assert full - plan.model_states == 18 * total // n
        else:  # and under ZeRO-3 its partitioned gradient, master and moments, and the gathered module's gradient
            assert full - plan.model_states == 16 * total // n + 2 * (largest - a.gathered_trainable)


def test_buffers_and_allowance_come_on_top_of_the_model_states(tmp_path):
    recipe = parse(tmp_path)
    zero = memory.plan_memory(*recipe, deepspeed_setup(2, 1, 8), model_config=small_llama_config())
    assert zero.communication_buffers == 2 * memory.DEEPSPEED_REDUCE_BUCKET_ELEMENTS  # one 16-bit bucket
    ddp = memory.plan_memory(
        *recipe,
        memory.DistributedSetup(processes_per_machine=8, mixed_precision="bf16"),
        model_config=small_llama_config(),
    )
    assert ddp.communication_buffers == ddp.gradients  # DDP's buckets beside .grad
    assert ddp.master_weights == 0 and ddp.optimizer_states == 2 * ddp.weights_trainable  # bf16 moments, no master
    for plan in (zero, ddp):
        assert (
            plan.total
            == plan.model_states + plan.communication_buffers + plan.activations + memory.CUDA_ALLOWANCE_BYTES
        )


class ActivationPeak(mem_tracker.MemTracker):
    """MemTracker's own peak is that of the total; this keeps the peak of what is neither a parameter, a buffer nor
    a gradient, read after every operation from the tracker's running snapshot."""

    peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = super().__torch_dispatch__(func, types, args, kwargs)
        kinds = mem_tracker._MemRefType
        for snapshot in self._curr_mem_snap.values():
            held = snapshot["Total"] - snapshot[kinds.PARAM] - snapshot[kinds.BUFFER] - snapshot[kinds.GRAD]
            self.peak = max(self.peak, held)
        return out


def measured_activation_peak(model_config, checkpointing: bool, batch: int, length: int) -> int:
    """Peak activation memory of one forward and backward on the CPU, in float32, as training runs it: packed
    documents (position ids restart, so transformers builds the block mask), no cache."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(model_config, dtype=torch.float32, attn_implementation="sdpa")
    model.train()
    if checkpointing:
        model.activation_checkpointing_enable()
    ids = torch.randint(0, model_config.vocab_size, (batch, length))
    positions = torch.cat([torch.arange(length * 3 // 5), torch.arange(length - length * 3 // 5)]).repeat(batch, 1)
    tracker = ActivationPeak()
    tracker.track_external(model)
    with tracker:
        loss = model(input_ids=ids, labels=ids, position_ids=positions, use_cache=False).loss
        loss.backward()
    return tracker.peak


@pytest.mark.parametrize("architecture", ["llama", "mixtral"])
@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("vocab", [8192, 256])  # the loss's peak, and a decoder layer's
def test_activations_are_within_15_percent_of_the_measured_peak(tmp_path, architecture, checkpointing, vocab):
    model_config = (small_llama_config if architecture == "llama" else small_mixtral_config)(vocab)
    batch, length = 2, 512
    recipe = parse(
        tmp_path,
        bf16=False,
        dtype="float32",
        max_length=length,
        per_device_train_batch_size=batch,
        activation_checkpointing=checkpointing,
    )
    plan = memory.plan_memory(*recipe, memory.DistributedSetup(), model_config=model_config)
    measured = measured_activation_peak(model_config, checkpointing, batch, length)
    assert abs(plan.activations - measured) <= 0.15 * measured, (plan.activations, measured, plan.activation_peak)


def test_accelerate_launch_settings_are_read_by_the_names_accelerate_sets():
    import accelerate.utils.launch

    source = Path(accelerate.utils.launch.__file__).read_text()
    for name in (
        "ACCELERATE_USE_DEEPSPEED",
        "ACCELERATE_DEEPSPEED_ZERO_STAGE",
        "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE",
        "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE",
        "ACCELERATE_MIXED_PRECISION",
    ):
        assert f'"{name}"' in source
    environment = {
        "ACCELERATE_USE_DEEPSPEED": "true",
        "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
        "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "cpu",
        "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE": "none",
        "ACCELERATE_MIXED_PRECISION": "bf16",
        "WORLD_SIZE": "16",
        "LOCAL_WORLD_SIZE": "8",
    }
    assert memory.DistributedSetup.from_environment(environment) == deepspeed_setup(3, 2, 8, offload_optimizer=True)
    assert memory.DistributedSetup.from_environment({}) == memory.DistributedSetup()
    offload = memory.DistributedSetup.from_accelerate_config(
        REPO / "recipes/accelerate/zero3-offload.yaml", num_machines=2
    )
    assert offload == deepspeed_setup(3, 2, 8, offload_optimizer=True, offload_param=True)
    with pytest.raises(memory.PlanError, match="needs ZeRO stage 3"):
        memory.DistributedSetup(zero_stage=2, deepspeed=True, offload_param=True)


def advice(plan, gpu_bytes) -> str:
    with pytest.raises(memory.PlanDoesNotFit) as failure:
        memory.check(plan, gpu_bytes)
    return str(failure.value)


def in_order(message: str, steps: list[str]) -> bool:
    positions = [message.index(step) for step in steps]
    return positions == sorted(positions)


def test_advice_comes_in_order_and_says_how_many_machines(tmp_path):
    llama_8b = AutoConfig.from_pretrained(MODELS / "llama-3.1-8b.json")
    recipe = parse(tmp_path, per_device_train_batch_size=4, activation_checkpointing=False)
    plan = memory.plan_memory(*recipe, deepspeed_setup(2, 1, 8), model_config=llama_8b)
    message = advice(plan, 40 * memory.GIB)
    assert f"{memory._gib(plan.total - 40 * memory.GIB)} GiB more" in message
    assert in_order(
        message, ["1. turn on activation_checkpointing", "2. lower per_device_train_batch_size to", "3. use ZeRO-3"]
    )
    assert message.endswith("fits)") and "machines" not in message  # ZeRO-3 on top of the rest is enough
    memory.check(plan, plan.total)  # exactly enough

    llama_70b = AutoConfig.from_pretrained(MODELS / "llama-3.1-70b.json")
    plan = memory.plan_memory(*parse(tmp_path), deepspeed_setup(2, 1, 8), model_config=llama_70b)
    message = advice(plan, 80 * memory.GIB)
    assert "activation_checkpointing" not in message and "per_device_train_batch_size" not in message
    assert in_order(
        message, ["1. use ZeRO-3", "2. 3 machines (24 GPUs) would fit", "3. or offload", "zero3-offload.yaml"]
    )


def test_plan_script_end_to_end():
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    script = [sys.executable, str(REPO / "scripts" / "plan.py")]
    llama = ["--config", "recipes/train/llama-3.1-8b/hindi-cpt.yaml", "--use_peft", "false"]
    runs = {
        "fits": script
        + llama
        + ["--model_config", str(MODELS / "llama-3.1-8b.json")]
        + ["--accelerate_config", "recipes/accelerate/zero3.yaml", "--gpu_memory_gib", "80"],
        "too big": script
        + llama
        + ["--model_config", str(MODELS / "llama-3.1-70b.json")]
        + ["--accelerate_config", "recipes/accelerate/single-gpu.yaml", "--gpu_memory_gib", "80"],
        "help": script + ["--help"],
    }
    processes = {
        name: subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, argv in runs.items()
    }
    done = {name: (p.wait(timeout=300), *p.communicate()) for name, p in processes.items()}
    code, out, err = done["fits"]
    assert code == 0, err
    assert "total per GPU" in out and "fits in 80.00 GiB" in out
    code, out, err = done["too big"]
    assert code == 1, err
    assert "does NOT fit" in out
    last = err.strip().splitlines()[-1]
    assert last.startswith("does not fit:") and "ZeRO-3" in last and "machines (" in last, last
    code, out, _ = done["help"]
    assert code == 0 and "--accelerate_config" in out


@pytest.mark.parametrize(
    ("recipe", "accelerate", "machines", "model"),
    [
        ("mixtral-8x7b/indic-cpt", "zero3", 1, "mixtral-8x7b"),
        ("gemma-2-27b/multilingual-cpt", "zero3", 1, "gemma-2-27b"),
        ("llama-3.1-70b/hindi-cpt", "multi-node", 2, "llama-3.1-70b"),
    ],
)
def test_each_big_recipe_states_its_memory_plan_in_its_header(recipe, accelerate, machines, model):
    path = REPO / "recipes" / "train" / f"{recipe}.yaml"
    args, training_args, model_args = training_config.parse(["--config", str(path), "--use_cpu", "true"])
    setup = memory.DistributedSetup.from_accelerate_config(
        str(REPO / "recipes" / "accelerate" / f"{accelerate}.yaml"), machines, machines * 8
    )
    model_config = AutoConfig.from_pretrained(REPO / "recipes" / "models" / f"{model}.json")
    plan = memory.plan_memory(args, training_args, model_args, setup, model_config=model_config)
    header = "".join(line for line in path.read_text().splitlines(True) if line.startswith("#"))
    assert f"{plan.total / 2**30:.1f} GiB" in header
    memory.check(plan, 80 * 2**30)  # fits an 80 GB H100


def test_train_stops_before_loading_the_model_when_the_plan_does_not_fit(
    monkeypatch, tmp_path, prepared_sample, tiny_base_dir, extended_tokenizer_dir
):
    """On a GPU, scripts/train.py plans first; here the GPU's size is all that is stood in for."""
    from test_training import load_train_script

    from indictune.training import model as training_model

    monkeypatch.setattr(memory, "local_gpu_bytes", lambda: 2**30)  # a 1 GiB GPU: under the allowance alone
    monkeypatch.setattr(
        training_model, "load_model", lambda *a: pytest.fail("the model loaded before the memory check")
    )
    argv = [
        "--config",
        str(REPO / "recipes/train/demo/cpt-lora.yaml"),
        "--model_name_or_path",
        str(tiny_base_dir),
        "--tokenizer_name_or_path",
        str(extended_tokenizer_dir),
        "--train_data",
        str(prepared_sample[0]),
        "--output_dir",
        str(tmp_path / "out"),
    ]
    with pytest.raises(SystemExit, match=r"error: the plan needs [\d.]+ GiB per GPU, [\d.]+ GiB more than the 1.00"):
        load_train_script().main(argv)
    assert not (tmp_path / "out").exists()

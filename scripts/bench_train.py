"""Training throughput: indictune's packed LoRA training against a plain TRL + PEFT script, same model and data.

    python scripts/bench_train.py                       # Llama-3.1-8B architecture, seq 4096, LoRA r=64 (a GPU)
    python scripts/bench_train.py --check              # also exit 1 when a goal is missed
    python scripts/bench_train.py --model tiny --max_length 256 --steps 6 --warmup_steps 2   # CPU smoke

The model is randomly initialised from the architecture's config (nothing is downloaded); the documents
are random token ids with web-like lengths (log-normal, median about 600 tokens). Both runs train LoRA
of rank `lora_r` on all linear layers, in bf16 on a GPU, on the same documents:

- indictune: scripts/train.py's path. Documents packed to max_length by best-fit packing, kept apart
  by position ids (flash-attention's variable-length kernels when installed, else sdpa with
  per-document masks), PretrainingTrainer.
- plain TRL + PEFT: SFTTrainer with a peft LoraConfig and SFTConfig's defaults: no packing, each batch
  padded to its longest document, activation checkpointing on.

Throughput counts non-padding tokens between the end of step `warmup_steps` and the end of the run,
per GPU; MFU uses training/throughput.py's FLOPs per token at max_length. Goals on one H100: at
least 10,000 tokens/s per GPU for indictune, and at least 1.5x the plain script.
"""

from __future__ import annotations

import gc
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from tokenizers import Tokenizer, models
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast, TrainerCallback
from trl import SFTConfig, SFTTrainer, pack_dataset

from indictune.core.recipe import field, parse_cli
from indictune.training.model import attention_implementation
from indictune.training.packing import PackedCollator
from indictune.training.throughput import flops_per_token, peak_tflops
from indictune.training.trainer import PretrainingTrainer

ARCHITECTURES = {
    "llama-3.1-8b": dict(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        rope_theta=500000.0,
        max_position_embeddings=131072,
        tie_word_embeddings=False,
    ),
    "tiny": dict(
        vocab_size=2000,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    ),
}
PAD, EOS = 0, 2


@dataclass
class BenchConfig:
    model: str = field("llama-3.1-8b", help=f"architecture: {', '.join(ARCHITECTURES)}")
    max_length: int = field(4096, help="sequence length of packed rows, and the plain script's truncation length")
    lora_r: int = field(64, help="LoRA rank (alpha = 2r) on all linear layers")
    batch_size: int = field(2, help="indictune: packed rows per step")
    plain_batch_size: int = field(8, help="plain script: documents per step (SFTConfig's default)")
    steps: int = field(30, help="optimizer steps per run")
    warmup_steps: int = field(5, help="steps left out of the measurement")
    activation_checkpointing: bool = field(
        False, help="indictune run: recompute activations (the plain run keeps TRL's default, on)"
    )
    check: bool = field(False, help="exit 1 unless indictune reaches 10,000 tokens/s per GPU and 1.5x the plain script")
    output: str = field("runs/bench/train.json", help="where the figures are written as JSON")
    seed: int = 0


class Measure(TrainerCallback):
    """Counts non-padding tokens per step and times the steps after the warm-up."""

    def __init__(self, warmup_steps: int):
        self.warmup_steps, self.tokens, self.start_tokens, self.start, self.end = warmup_steps, 0, 0, None, None

    def count(self, inputs: dict) -> None:
        self.tokens += int((inputs["input_ids"] != PAD).sum())

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if state.global_step == self.warmup_steps:
            self.start, self.start_tokens = time.perf_counter(), self.tokens
        self.end = time.perf_counter()

    def tokens_per_second(self) -> float:
        return (self.tokens - self.start_tokens) / (self.end - self.start)


def measured(trainer_cls):
    class Measured(trainer_cls):
        def training_step(self, model, inputs, num_items_in_batch=None):
            self.measure.count(inputs)
            return super().training_step(model, inputs, num_items_in_batch)

    return Measured


def documents(config: BenchConfig, vocab_size: int) -> Dataset:
    rng = np.random.default_rng(config.seed)
    needed = config.steps * max(config.batch_size * config.max_length, config.plain_batch_size * 4096) * 2
    lengths = np.clip(rng.lognormal(6.4, 0.9, size=max(64, needed // 600)), 16, 4 * config.max_length).astype(int)
    return Dataset.from_dict({"input_ids": [rng.integers(3, vocab_size, n).tolist() + [EOS] for n in lengths]})


def build_model(config: BenchConfig, dtype):
    torch.manual_seed(config.seed)
    settings = dict(ARCHITECTURES[config.model], bos_token_id=1, eos_token_id=EOS, pad_token_id=PAD)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(
            LlamaConfig(**settings), dtype=dtype, attn_implementation=attention_implementation()
        )
    return model


def lora(config: BenchConfig) -> LoraConfig:
    return LoraConfig(
        r=config.lora_r,
        lora_alpha=2 * config.lora_r,
        lora_dropout=0.0,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )


def word_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A stand-in tokenizer for the pre-tokenized documents: ids only, pad 0, eos 2."""
    vocab = {f"t{i}": i for i in range(vocab_size)}
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t1")),
        pad_token="t0",
        bos_token="t1",
        eos_token="t2",
        unk_token="t1",
    )


def run(name: str, config: BenchConfig, make_trainer) -> dict:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    trainer, model = make_trainer()
    trainer.measure = Measure(config.warmup_steps)
    trainer.add_callback(trainer.measure)
    trainer.train()
    per_gpu = trainer.measure.tokens_per_second()
    peak = peak_tflops()
    result = {
        "tokens_per_second_per_gpu": round(per_gpu, 1),
        "mfu": round(per_gpu * flops_per_token(model, config.max_length) / (peak * 1e12), 4) if peak else None,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
        "final_loss": next(h["loss"] for h in reversed(trainer.state.log_history) if "loss" in h),
    }
    print(
        f"{name:<22} {result['tokens_per_second_per_gpu']:>10,.0f} tokens/s/GPU  MFU {result['mfu']}  "
        f"peak memory {result['peak_memory_gib']} GiB"
    )
    del trainer, model
    return result


def main() -> None:
    config = parse_cli(BenchConfig, description=__doc__)
    gpu = torch.cuda.is_available()
    dtype = torch.bfloat16 if gpu else torch.float32
    vocab_size = ARCHITECTURES[config.model]["vocab_size"]
    docs = documents(config, vocab_size)
    common = dict(
        output_dir="runs/bench/trainer",
        max_steps=config.steps,
        learning_rate=1e-4,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        bf16=gpu,
        disable_tqdm=True,
        seed=config.seed,
        dataloader_pin_memory=gpu,
        max_length=config.max_length,
    )

    def indictune():
        model = get_peft_model(build_model(config, dtype), lora(config))
        args = SFTConfig(
            per_device_train_batch_size=config.batch_size,
            packing=True,
            packing_strategy="bfd_split",
            activation_checkpointing=config.activation_checkpointing,
            remove_unused_columns=False,
            **common,
        )
        if args.activation_checkpointing:
            model.enable_input_require_grads()
        trainer = measured(PretrainingTrainer)(
            model=model,
            args=args,
            train_dataset=pack_dataset(docs, config.max_length, strategy="bfd_split"),
            data_collator=PackedCollator(PAD, flatten=model.config._attn_implementation.startswith("flash")),
        )
        trainer.configure(None, None, 0.0)
        return trainer, model

    def plain():
        model = build_model(config, dtype)
        args = SFTConfig(per_device_train_batch_size=config.plain_batch_size, **common)
        trainer = measured(SFTTrainer)(
            model=model,
            args=args,
            train_dataset=docs,
            peft_config=lora(config),
            processing_class=word_tokenizer(vocab_size),
        )
        return trainer, trainer.model

    device = torch.cuda.get_device_name() if gpu else "CPU"
    print(
        f"{config.model}, {device}, seq {config.max_length}, LoRA r={config.lora_r} all-linear, "
        f"{config.steps} steps ({config.warmup_steps} warm-up), attention {attention_implementation()}"
    )
    results = {
        "indictune": run("indictune", config, indictune),
        "plain TRL + PEFT": run("plain TRL + PEFT", config, plain),
    }
    ratio = results["indictune"]["tokens_per_second_per_gpu"] / results["plain TRL + PEFT"]["tokens_per_second_per_gpu"]
    print(f"indictune / plain: {ratio:.2f}x")
    goals = {}
    if config.model == "llama-3.1-8b" and gpu:  # the goals are set for this workload on an H100
        goals = {
            "10,000 tokens/s per GPU": results["indictune"]["tokens_per_second_per_gpu"] >= 10_000,
            "1.5x plain TRL + PEFT": ratio >= 1.5,
        }
        for goal, met in goals.items():
            print(f"goal {goal}: {'met' if met else 'missed'}")
    else:
        print("the goals (10,000 tokens/s per GPU, 1.5x plain) apply to llama-3.1-8b on a GPU; not judged here")
    out = Path(config.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {"config": asdict(config), "device": device, "results": results, "ratio": round(ratio, 3), "goals": goals},
            indent=2,
        )
        + "\n"
    )
    if config.check and not (goals and all(goals.values())):
        raise SystemExit(1)


if __name__ == "__main__":
    main()

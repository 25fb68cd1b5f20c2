"""Model set-up for training: load (or initialise) the model, fit it to the tokenizer, configure LoRA."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import yaml
from peft import LoraConfig
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from trl import ModelConfig, SFTConfig, get_peft_config

from training.config import IndictuneArguments
from training.tokenizer.embeddings import resize_for_tokenizer


def attention_implementation(model_args: ModelConfig) -> str:
    if model_args.attn_implementation:
        return model_args.attn_implementation
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def load_model(args: IndictuneArguments, model_args: ModelConfig, training_args: SFTConfig, tokenizer):
    """The model to train and the tokenizer it was trained with before (to find and initialise new rows)."""
    dtype = model_args.dtype if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
    if args.init_from_config:
        settings = yaml.safe_load(Path(args.init_from_config).read_text())
        config = AutoConfig.for_model(
            **settings,
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        model = AutoModelForCausalLM.from_config(
            config, dtype=dtype, attn_implementation=attention_implementation(model_args)
        )
        return model, tokenizer
    if not model_args.model_name_or_path:
        raise SystemExit("error: set model_name_or_path (or init_from_config to pretrain a new model)")
    model = AutoModelForCausalLM.from_pretrained(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        dtype=dtype,
        attn_implementation=attention_implementation(model_args),
        trust_remote_code=training_args.trust_remote_code,
        use_safetensors=True,
    )
    base_tokenizer = AutoTokenizer.from_pretrained(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
    )
    return model, base_tokenizer


def fit_to_tokenizer(model, tokenizer, base_tokenizer) -> list[int]:
    """Resize for an extended tokenizer and initialise the new rows; returns the new token ids."""
    new_ids = resize_for_tokenizer(model, tokenizer, base_tokenizer)
    model.config.vocab_size = model.get_input_embeddings().weight.shape[0]
    return new_ids


def _module_name(model, module) -> str:
    return next(name for name, m in model.named_modules() if m is module).rsplit(".", 1)[-1]


def lora_config(model_args: ModelConfig, args: IndictuneArguments, model, new_ids: list[int]) -> LoraConfig | None:
    """TRL's LoRA settings from the recipe, plus the embedding rows to train."""
    config = get_peft_config(model_args)
    if config is None or args.trainable_embeddings == "none":
        return config
    embedding = _module_name(model, model.get_input_embeddings())
    output = model.get_output_embeddings()
    tied = output is None or output.weight is model.get_input_embeddings().weight
    layers = [embedding] if tied else [embedding, _module_name(model, output)]
    if args.trainable_embeddings == "full":
        config.modules_to_save = sorted(set(config.modules_to_save or []) | set(layers))
    elif new_ids:
        config.trainable_token_indices = {name: list(new_ids) for name in layers}
    return config

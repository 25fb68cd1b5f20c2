"""Model set-up for training: the tokenizer, the model (loaded or newly initialised) fitted to it, and LoRA."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import yaml
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from trl import ModelConfig, SFTConfig, get_peft_config

from indictune.core.log import get_logger
from indictune.training import moe
from indictune.training.config import IndictuneArguments, tokenizer_name_or_path
from indictune.training.tokenizer.embeddings import gathered, resize_for_tokenizer

logger = get_logger("train")


class TrainingSetupError(ValueError):
    """A model, tokenizer or LoRA setting that cannot train as asked; the message says what to set instead."""


def attention_implementation(requested: str | None = None) -> str:
    """The recipe's choice, else flash-attention when installed on a GPU, else sdpa."""
    if requested:
        return requested
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def load_tokenizer(args: IndictuneArguments, model_args: ModelConfig, training_args: SFTConfig):
    """The tokenizer the run trains with (see :func:`tokenizer_name_or_path`)."""
    return AutoTokenizer.from_pretrained(
        tokenizer_name_or_path(args, model_args), trust_remote_code=training_args.trust_remote_code
    )


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
            config, dtype=dtype, attn_implementation=attention_implementation(model_args.attn_implementation)
        )
        return model, tokenizer
    if not model_args.model_name_or_path:
        raise TrainingSetupError("set model_name_or_path (or init_from_config to pretrain a new model)")
    model = AutoModelForCausalLM.from_pretrained(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        dtype=dtype,
        attn_implementation=attention_implementation(model_args.attn_implementation),
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


def _collect_token_rows_on_any_device(layer, weight, rows, embed_dim):
    """peft's TrainableTokensLayer._collect_token_weights, with the buffer that receives rank 0's rows
    allocated on the weight's device instead of on CUDA."""
    import torch.distributed as dist
    from peft.utils.integrations import gather_params_ctx

    with gather_params_ctx([weight], modifier_rank=None):
        if dist.get_rank() == 0:
            rows_value = weight[rows].clone()
        else:
            rows_value = torch.empty((len(rows), embed_dim), dtype=weight.dtype, device=weight.device)
    dist.broadcast(rows_value, src=0)
    return rows_value


def patch_trainable_tokens_for_cpu() -> None:
    """Let ZeRO-3 set up trainable embedding rows on a machine without CUDA; nothing to do where CUDA is.

    Under ZeRO-3, peft's TrainableTokensLayer._collect_token_weights (added by huggingface/peft#2605, the fix
    for #2603) gathers the rows on rank 0 and broadcasts them into a buffer the other ranks allocate with
    ``torch.device("cuda", torch.cuda.current_device())`` ("right now, only CUDA is implemented"), which
    fails without CUDA (two CPU ranks over gloo, as in tests/test_distributed.py). Not reported upstream yet.
    Idempotent.
    """
    if torch.cuda.is_available():
        return
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

    TrainableTokensLayer._collect_token_weights = _collect_token_rows_on_any_device


def _module_name(model, module) -> str:
    return next(name for name, m in model.named_modules() if m is module).rsplit(".", 1)[-1]


def lora_config(
    model_args: ModelConfig, args: IndictuneArguments, model, tokenizer, new_ids: list[int]
) -> LoraConfig | None:
    """TRL's LoRA settings from the recipe, plus the embedding rows to train and, for names written for separate
    expert modules, the fused expert parameters they mean."""
    config = get_peft_config(model_args)
    if config is not None and not config.target_parameters:
        fused = moe.fused_expert_targets(model, config.target_modules)
        if fused:
            logger.info("LoRA on the experts through their fused parameters: lora_target_parameters %s", fused)
            config.target_parameters = fused
    if config is not None and config.target_parameters and config.lora_dropout:
        raise TrainingSetupError(
            f"lora_dropout is {config.lora_dropout}, but LoRA on parameters ({sorted(config.target_parameters)}) "
            "cannot apply dropout (peft adds the update to the weight, not to the input); set lora_dropout: 0"
        )
    if config is not None and args.trainable_embeddings == "none" and new_ids:
        raise TrainingSetupError(
            f"trainable_embeddings: none would leave the {len(new_ids)} tokens the tokenizer adds untrained "
            "(their rows only start at the mean of their pieces); use new_rows or full"
        )
    if config is not None and args.trainable_embeddings != "new_rows" and args.trainable_tokens:
        raise TrainingSetupError("trainable_tokens needs trainable_embeddings: new_rows (full trains every row)")
    if config is None or args.trainable_embeddings == "none":
        return config
    embedding = _module_name(model, model.get_input_embeddings())
    output = model.get_output_embeddings()
    tied = output is None or output.weight is model.get_input_embeddings().weight
    layers = [embedding] if tied else [embedding, _module_name(model, output)]
    # A tied output layer must train with the input rows, not as a copy that drifts and is dropped at merge.
    config.ensure_weight_tying = tied
    if args.trainable_embeddings == "full":
        config.modules_to_save = sorted(set(config.modules_to_save or []) | set(layers))
        return config
    vocab = tokenizer.get_vocab()
    unknown = [token for token in args.trainable_tokens if token not in vocab]
    if unknown:
        raise TrainingSetupError(f"trainable_tokens: {unknown} are not in the tokenizer's vocabulary")
    rows = sorted(set(new_ids) | {vocab[token] for token in args.trainable_tokens})
    if rows:
        config.trainable_token_indices = {name: rows for name in layers}
    return config


def with_adapter(model, peft_config: LoraConfig, training_args: SFTConfig):
    """`model` wrapped in its LoRA adapter and trainable embedding rows, ready to train."""
    if training_args.activation_checkpointing:
        model.enable_input_require_grads()  # frozen embeddings would otherwise cut the checkpointed graph
    if peft_config.trainable_token_indices:
        patch_trainable_tokens_for_cpu()
    model = get_peft_model(model, peft_config)
    for adapter in model.peft_config.values():
        # peft keeps target modules (those `all-linear` expands to, too) as a set, which adapter_config.json
        # would list in a different order on every run.
        if isinstance(adapter.target_modules, set):
            adapter.target_modules = sorted(adapter.target_modules)
    return model


def trained_rows(peft_config: LoraConfig | None, model) -> set[int]:
    """Ids whose embedding rows train: all of them without LoRA or with whole layers, else the listed rows."""
    embedding = model.get_input_embeddings()
    if peft_config is None or _module_name(model, embedding) in (peft_config.modules_to_save or []):
        return set(range(getattr(embedding.weight, "ds_shape", embedding.weight.shape)[0]))
    return {i for rows in (peft_config.trainable_token_indices or {}).values() for i in rows}


def untrained_tokens(model, tokenizer, texts_ids: list[list[int]], trained: set[int]) -> list[str]:
    """Tokens the data uses whose input rows are near zero (under a tenth of the median row norm) and
    that will not train."""
    used = sorted({i for ids in texts_ids for i in ids} - trained)
    weight = model.get_input_embeddings().weight
    with gathered(weight):
        norms = weight.detach().float().norm(dim=-1)
        floor = 0.1 * norms.median()
        return [tokenizer.convert_ids_to_tokens(i) for i in used if norms[i] < floor]


def require_trained_tokens(model, tokenizer, dataset, peft_config: LoraConfig | None) -> None:
    """Stop before training on tokens a base model never trained and this run would not train either: a
    base model's chat-template tokens, typically, which give NaNs or replies that never end."""
    sample = dataset.select(range(min(1000, len(dataset))))["input_ids"]
    untrained = untrained_tokens(model, tokenizer, sample, trained_rows(peft_config, model))
    if untrained:
        raise TrainingSetupError(
            f"the chat data uses tokens whose embeddings were never trained: {untrained}; list them in "
            "trainable_tokens (with trainable_embeddings: new_rows) so their rows train"
        )

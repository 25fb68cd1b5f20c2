"""Training recipes: TRL's ``SFTConfig`` and ``ModelConfig`` plus :class:`IndictuneArguments` for what they lack.

A recipe's keys are the real names of ``SFTConfig``/``TrainingArguments`` (``learning_rate``,
``max_length``, ``per_device_train_batch_size``, ...), of ``ModelConfig`` (``model_name_or_path``,
``use_peft``, ``lora_r``, ``lora_target_modules``, ...) and of the class below; TRL's ``TrlParser`` reads
them, and command-line ``--key value`` pairs override the file. An unknown key is an error naming the
key, where it came from and the closest valid key.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from typing import Literal

from trl import ModelConfig, SFTConfig, TrlParser

from indictune.core.paths import cache_root
from indictune.core.recipe import RecipeError, read_yaml, unknown_key_error


@dataclass
class IndictuneArguments:
    stage: Literal["cpt", "sft"] = field(
        default="cpt",
        metadata={
            "help": "cpt: continued pretraining on prepared text, packed; sft: chat data (a `messages` column) "
            "through TRL's SFTTrainer with loss on assistant turns."
        },
    )
    train_data: list[str] = field(
        default_factory=list,
        metadata={
            "help": "cpt: prepared corpora (output dirs of scripts/prepare_data.py, Parquet folders or globs). "
            "sft: chat data as JSONL/JSON/Parquet files, a save_to_disk folder or a Hub dataset id."
        },
    )
    languages: list[str] | None = field(
        default=None, metadata={"help": "Train on these languages only (codes from core/languages.py)."}
    )
    language_temperature: float = field(
        default=1.0,
        metadata={
            "help": "cpt: each language's share of tokens is proportional to (its corpus share)^(1/T). 1 keeps the "
            "corpus proportions; higher values move toward equal shares, repeating small languages' documents."
        },
    )
    replay_fraction: float | None = field(
        default=None,
        metadata={
            "help": "cpt: this fraction of the training tokens is English (from replay_data, or the English in "
            "train_data), against forgetting; the other languages share the rest by language_temperature."
        },
    )
    replay_data: list[str] = field(
        default_factory=list, metadata={"help": "cpt: prepared corpora to take the English replay text from."}
    )
    packed_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "cpt: where tokenized and packed data is kept, keyed by data, tokenizer, max_length and mix "
            f"(default: {cache_root() / 'packed'}; $INDICTUNE_CACHE moves it). Put it on a shared filesystem for "
            "multi-node runs and fill it with scripts/pack_data.py before launching."
        },
    )
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "The tokenizer to train with, e.g. one from scripts/extend_tokenizer.py."}
    )
    trainable_embeddings: Literal["none", "new_rows", "full"] = field(
        default="new_rows",
        metadata={
            "help": "With LoRA: train the embedding and output rows of the tokens the tokenizer adds (new_rows), "
            "the whole embedding and output layers (full), or neither (none)."
        },
    )
    trainable_tokens: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Tokens already in the base vocabulary whose embedding and output rows train too, e.g. the chat "
            "template's <|start_header_id|>, <|end_header_id|>, <|eot_id|>, which Llama-3 base models never trained."
        },
    )
    init_from_config: str | None = field(
        default=None,
        metadata={
            "help": "Pretrain a newly initialised model with this config (a JSON/YAML file) instead of loading "
            "weights from model_name_or_path."
        },
    )
    embedding_learning_rate: float | None = field(
        default=None,
        metadata={"help": "Learning rate of the trainable embedding and output rows (default: learning_rate)."},
    )
    merge_adapter: bool = field(
        default=False,
        metadata={"help": "Also save the base model with the adapter merged in, under output_dir/merged."},
    )
    peak_tflops_per_gpu: float | None = field(
        default=None,
        metadata={
            "help": "Dense bf16 peak of one accelerator, for the logged MFU; known GPUs (H100, H200, A100, ...) are "
            "recognised, others log no MFU unless this is set."
        },
    )


RECIPE_CLASSES = (IndictuneArguments, SFTConfig, ModelConfig)


def _check_keys(argv: list[str], config_path: str | None) -> None:
    valid = {f.name for cls in RECIPE_CLASSES for f in dataclasses.fields(cls)}
    flags = valid | {f"no_{name}" for name in valid}  # HfArgumentParser's negated boolean flags
    if config_path:
        for key in read_yaml(config_path):
            if key not in valid and key != "env":  # TrlParser sets environment variables from `env`
                raise unknown_key_error(key, valid, config_path)
    for item in argv:
        if item.startswith("--") and item != "--config" and item[2:].split("=")[0] not in flags:
            raise unknown_key_error(item[2:].split("=")[0], valid, "command line")


def parse(argv: list[str] | None = None) -> tuple[IndictuneArguments, SFTConfig, ModelConfig]:
    """Parse ``--config FILE`` and overrides; a RecipeError names the file, the key and the fix."""
    argv = list(sys.argv[1:] if argv is None else argv)
    config_path = argv[argv.index("--config") + 1] if "--config" in argv[:-1] else None
    where = config_path or "command line"
    _check_keys(argv, config_path)
    try:
        args, training_args, model_args = TrlParser(RECIPE_CLASSES).parse_args_and_config(argv)
    except ValueError as err:  # a value the dataclasses reject, e.g. bf16 on a machine without a GPU
        raise RecipeError(f"{where}: {err}") from None
    if not args.train_data:
        raise RecipeError(f"{where}: train_data is required (the prepare_data output, or chat data for sft)")
    if args.replay_fraction is not None and not 0 < args.replay_fraction < 1:
        raise RecipeError(f"{where}: replay_fraction must be between 0 and 1, got {args.replay_fraction}")
    if args.language_temperature <= 0:
        raise RecipeError(f"{where}: language_temperature must be positive, got {args.language_temperature}")
    if args.stage == "sft" and (args.replay_fraction is not None or args.language_temperature != 1.0):
        raise RecipeError(f"{where}: replay_fraction and language_temperature mix cpt corpora; remove them for sft")
    return args, training_args, model_args


def tokenizer_name_or_path(args: IndictuneArguments, model_args: ModelConfig) -> str | None:
    """The tokenizer a run trains with: the recipe's tokenizer_name_or_path, else the base model's own."""
    return args.tokenizer_name_or_path or model_args.model_name_or_path

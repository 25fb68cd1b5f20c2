"""Tokenize documents, mix languages and pack them into training sequences that keep documents apart.

Each document is tokenized as the tokenizer does it (BOS where it adds one) and closed with EOS.
Languages are then mixed by temperature, with an optional English replay share (training/mixing.py).
With ``packing: true`` documents are packed to ``max_length`` by TRL's best-fit packing; the collator
then restarts position ids at every document and masks the first token of each, and the model
builds its attention mask from those position ids, so no document attends to or predicts from
another (see ``PackedCollator``). ``packing_strategy: bfd_split`` cuts documents longer than
``max_length`` into pieces instead of dropping their tail.

The result is cached on disk under a key made of the data files, the tokenizer, ``max_length`` and
the mix, so it is built once: by ``scripts/pack_data.py`` before a multi-node launch, or else by
the first process on each node while the others wait, then read.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import socket
from collections import defaultdict
from pathlib import Path

import datasets
from trl import SFTConfig, pack_dataset
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from indictune.core.hashing import files_sha256, tokenizer_sha256
from indictune.core.paths import cache_root
from indictune.data.corpus import load_corpus, parquet_files
from indictune.training.mixing import repeat_to_quota, temperature_shares

FORMAT_VERSION = 1  # bump when the packed layout changes, so old caches are not reused


def tokenize(corpus: datasets.Dataset, tokenizer, args: SFTConfig) -> datasets.Dataset:
    """input_ids (closed with EOS), lang and length of each document."""
    text_field, eos = args.dataset_text_field, tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token to close documents with; set eos_token in the recipe")

    def encode(batch: dict) -> dict:
        ids = [row + [eos] for row in tokenizer(batch[text_field])["input_ids"]]
        return {"input_ids": ids, "lang": batch["lang"], "length": [len(row) for row in ids]}

    return corpus.map(
        encode, batched=True, remove_columns=corpus.column_names, num_proc=args.dataset_num_proc, desc="tokenize"
    )


def mix(tokenized: datasets.Dataset, temperature: float, replay_fraction: float | None, seed: int):
    """Repeat or subsample each language's documents to its share of the tokens; returns the mixed
    documents and, per language, its tokens in the corpus and in the mix."""
    by_lang: dict[str, list[int]] = defaultdict(list)
    for index, lang in enumerate(tokenized["lang"]):
        by_lang[lang].append(index)
    lengths = tokenized["length"]
    sizes = {lang: sum(lengths[i] for i in rows) for lang, rows in by_lang.items()}
    if replay_fraction is not None and not sizes.get("en"):
        raise ValueError("replay_fraction needs English text: add English to train_data or set replay_data")
    shares = temperature_shares(sizes, temperature, {"en": replay_fraction} if replay_fraction is not None else None)
    budget = sum(sizes.values())  # the mix is as long as the corpus; only the proportions change
    rng = random.Random(seed)
    chosen, mixture = [], {}
    for lang in sorted(by_lang):
        rows = by_lang[lang]
        picked = repeat_to_quota([lengths[i] for i in rows], shares[lang] * budget, rng)
        chosen.extend(rows[i] for i in picked)
        mixed = sum(lengths[rows[i]] for i in picked)
        mixture[lang] = {"corpus_tokens": sizes[lang], "mixed_tokens": mixed, "share": round(mixed / budget, 4)}
    rng.shuffle(chosen)
    return tokenized.select(chosen), mixture


def pack(tokenized: datasets.Dataset, args: SFTConfig) -> datasets.Dataset:
    ids = tokenized.select_columns(["input_ids"])
    if args.packing:
        return pack_dataset(ids, args.max_length, strategy=args.packing_strategy)
    return ids.map(lambda b: {"input_ids": [row[: args.max_length] for row in b["input_ids"]]}, batched=True)


def cache_key(args, training_args: SFTConfig, tokenizer) -> str:
    recipe = {
        "format": FORMAT_VERSION,
        "data": files_sha256(parquet_files(args.train_data)),
        "replay_data": files_sha256(parquet_files(args.replay_data)) if args.replay_data else [],
        "languages": sorted(args.languages or []),
        "language_temperature": args.language_temperature,
        "replay_fraction": args.replay_fraction,
        "tokenizer": tokenizer_sha256(tokenizer),
        "text_field": training_args.dataset_text_field,
        "max_length": training_args.max_length,
        "packing": training_args.packing,
        "packing_strategy": training_args.packing_strategy,
        "seed": training_args.seed,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode("utf-8")).hexdigest()[:24]


def packed_cache_dir(args) -> Path:
    if args.packed_cache_dir:
        return Path(args.packed_cache_dir)
    return cache_root() / "packed"


def build(args, training_args: SFTConfig, tokenizer) -> tuple[datasets.Dataset, dict]:
    """Read, tokenize, mix and pack the corpus (no cache)."""
    corpus = load_corpus(args.train_data, args.languages, training_args.dataset_text_field)
    if args.replay_data:
        replay = load_corpus(args.replay_data, ["en"], training_args.dataset_text_field)
        corpus = datasets.concatenate_datasets([corpus, replay])
    tokenized = tokenize(corpus, tokenizer, training_args)
    mixed, mixture = mix(tokenized, args.language_temperature, args.replay_fraction, training_args.seed)
    return pack(mixed, training_args), mixture


def packed_dataset(args, training_args: SFTConfig, tokenizer) -> tuple[datasets.Dataset, dict, Path]:
    """The packed training set from the cache, building it there first if it is missing."""
    path = packed_cache_dir(args) / cache_key(args, training_args, tokenizer)
    with training_args.main_process_first(local=True, desc="tokenize and pack"):
        if not (path / "mixture.json").is_file():
            packed, mixture = build(args, training_args, tokenizer)
            # Written beside the final name and renamed into place: a crash leaves no half cache, and of
            # two nodes writing the same key to a shared filesystem, the second simply discards its copy.
            partial = path.with_name(f"{path.name}.partial-{socket.gethostname()}-{os.getpid()}")
            packed.save_to_disk(str(partial))
            (partial / "mixture.json").write_text(json.dumps(mixture, indent=2) + "\n")
            try:
                partial.rename(path)
            except OSError:
                shutil.rmtree(partial, ignore_errors=True)
        mixture = json.loads((path / "mixture.json").read_text())
        return datasets.load_from_disk(str(path)), mixture, path


class PackedCollator:
    """Batches of packed rows whose documents do not see each other.

    Flash-attention kernels take the whole batch as one row cut at document starts (padding-free).
    Other attention implementations get rows of ``max_length`` with position ids and no attention
    mask, from which the model builds a per-document causal mask; flattening the batch would make
    their attention cost grow with the square of the batch's tokens instead of each row's.
    """

    def __init__(self, pad_token_id: int, flatten: bool):
        self.flatten = flatten
        self.inner = DataCollatorForLanguageModeling(pad_token_id, padding_free=flatten, return_position_ids=True)

    def __call__(self, examples: list[dict]) -> dict:
        batch = self.inner(examples)
        if not self.flatten:
            del batch["attention_mask"]
            batch["labels"][
                batch["position_ids"] == 0
            ] = -100  # a document's first token is not predicted from the last
        # With a KV cache, transformers skips the per-document mask it builds from position ids, and a model
        # whose config enables the cache creates one even in training.
        batch["use_cache"] = False
        return batch


def collator(tokenizer, model, args: SFTConfig):
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if not args.packing:
        return DataCollatorForLanguageModeling(pad_token_id=pad)
    return PackedCollator(pad, flatten=model.config._attn_implementation.startswith("flash_attention"))

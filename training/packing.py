"""Tokenize documents and pack them into training sequences that keep documents apart.

Each document is tokenized as the tokenizer does it (BOS where it adds one) and closed with EOS.
With ``packing: true`` documents are packed to ``max_length`` by TRL's best-fit packing; the collator
then restarts position ids at every document and masks the first token of each, and the model
builds its attention mask from those position ids, so no document attends to or predicts from
another (see ``PackedCollator``). ``packing_strategy: bfd_split`` cuts documents longer than ``max_length`` into pieces
instead of dropping their tail. Tokenization runs on the main process first and is cached by
``datasets``, so other ranks load the result instead of redoing it.
"""

from __future__ import annotations

import datasets
from trl import SFTConfig, pack_dataset
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling


def tokenize_and_pack(corpus: datasets.Dataset, tokenizer, args: SFTConfig) -> datasets.Dataset:
    text_field, eos = args.dataset_text_field, tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token to close documents with; set eos_token in the recipe")

    def tokenize(batch: dict) -> dict:
        return {"input_ids": [ids + [eos] for ids in tokenizer(batch[text_field])["input_ids"]]}

    with args.main_process_first(desc="tokenize and pack"):
        tokenized = corpus.map(
            tokenize, batched=True, remove_columns=corpus.column_names, num_proc=args.dataset_num_proc, desc="tokenize"
        )
        if args.packing:
            return pack_dataset(tokenized, args.max_length, strategy=args.packing_strategy)
        return tokenized.map(lambda b: {"input_ids": [ids[: args.max_length] for ids in b["input_ids"]]}, batched=True)


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
            batch["labels"][batch["position_ids"] == 0] = -100  # a document's first token is not predicted from the last
        # With a KV cache, transformers skips the per-document mask it builds from position ids, and a model
        # whose config enables the cache creates one even in training.
        batch["use_cache"] = False
        return batch


def collator(tokenizer, model, args: SFTConfig):
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if not args.packing:
        return DataCollatorForLanguageModeling(pad_token_id=pad)
    return PackedCollator(pad, flatten=model.config._attn_implementation.startswith("flash_attention"))

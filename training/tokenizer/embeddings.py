"""Grow a model's embeddings for an extended tokenizer and initialise the new rows.

Each new token's input row (and output row, when the output layer is not tied to the input) starts
as the mean of the base model's rows for the pieces the base tokenizer splits that token into, so a
new Hindi token starts where the model already was for its bytes or sub-pieces; a token the base
cannot split at all starts at the mean of all base rows. Works on models sharded by DeepSpeed ZeRO-3:
the rows are gathered, written on rank 0 and scattered back.
"""

from __future__ import annotations

import contextlib

import torch


def gathered(*params: torch.nn.Parameter, modifier_rank: int | None = None):
    """The whole of parameters that DeepSpeed ZeRO-3 partitions across ranks (every rank must enter);
    with `modifier_rank`, what that rank writes is scattered back. A no-op for ordinary parameters."""
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(params), modifier_rank=modifier_rank)
    return contextlib.nullcontext()


def base_pieces(base_tokenizer, token: str) -> list[int]:
    """Ids of the base tokenizer's pieces for a vocabulary entry, applying its model to the entry's raw form."""
    return [t.id for t in base_tokenizer.backend_tokenizer.model.tokenize(token)]


@torch.no_grad()
def initialize_new_rows(model, base_tokenizer, tokenizer, new_ids: list[int]) -> None:
    base_size = len(base_tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(new_ids)
    sources = [[i for i in base_pieces(base_tokenizer, t) if i < base_size] for t in tokens]
    layers = [model.get_input_embeddings()]
    output = model.get_output_embeddings()
    if output is not None and output.weight is not layers[0].weight:
        layers.append(output)
    for layer in layers:
        weight = layer.weight
        with gathered(weight, modifier_rank=0):
            mean = weight[:base_size].float().mean(0)
            for row, pieces in zip(new_ids, sources):
                value = weight[pieces].float().mean(0) if pieces else mean
                weight[row] = value.to(weight.dtype)


def resize_for_tokenizer(model, tokenizer, base_tokenizer) -> list[int]:
    """Resize `model` to `tokenizer` if it has more tokens than the model has rows; return the new ids.

    New ids are those past the base tokenizer's vocabulary: the extended tokenizer appends, never moves.
    """
    new_ids = list(range(len(base_tokenizer), len(tokenizer)))
    if not new_ids:
        return []
    base_vocab = base_tokenizer.get_vocab()
    moved = [t for t, i in tokenizer.get_vocab().items() if i < len(base_tokenizer) and base_vocab.get(t) != i]
    if moved:
        raise ValueError(
            f"the tokenizer is not an extension of the model's tokenizer: {len(moved)} base ids differ "
            f"(e.g. {moved[:3]}); extend the model's own tokenizer with scripts/extend_tokenizer.py"
        )
    weight = model.get_input_embeddings().weight
    if getattr(weight, "ds_shape", weight.shape)[0] < len(tokenizer):  # ds_shape: the full shape under ZeRO-3
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    initialize_new_rows(model, base_tokenizer, tokenizer, new_ids)
    return new_ids

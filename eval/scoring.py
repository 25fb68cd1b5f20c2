"""Log-likelihood of texts under a causal LM, batched by length.

Every token of a text is predicted: a text is scored after one context token (the tokenizer's BOS,
or EOS where it has none), so the total covers the whole text whatever the tokenizer adds.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


def context_token(tokenizer) -> int:
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        raise ValueError("the tokenizer has neither a BOS nor an EOS token to start a text with")
    return token


def max_positions(model) -> int | None:
    return getattr(model.config, "max_position_embeddings", None)


@torch.no_grad()
def text_nll(model, tokenizer, texts: list[str], batch_size: int = 8, desc: str = "scoring") -> list[tuple[float, int]]:
    """(negative log-likelihood in nats, number of tokens) for each text, in input order."""
    start = context_token(tokenizer)
    encoded = [[start, *ids] for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    limit = max_positions(model)
    too_long = [i for i, ids in enumerate(encoded) if limit and len(ids) > limit]
    if too_long:
        raise ValueError(
            f"{len(too_long)} texts are longer than the model's {limit} positions "
            f"(longest: {max(len(encoded[i]) for i in too_long)} tokens); use smaller chunks (chunk_bytes)"
        )
    device = next(model.parameters()).device
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    results: list[tuple[float, int]] = [(math.nan, 0)] * len(encoded)
    for first in tqdm(range(0, len(order), batch_size), desc=desc, leave=False):
        batch = [encoded[i] for i in order[first : first + batch_size]]
        width = max(map(len, batch))
        ids = torch.full((len(batch), width), start, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, seq in enumerate(batch):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        ids, mask = ids.to(device), mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        logprobs = F.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        logprobs = logprobs * mask[:, 1:]
        for row, index in enumerate(order[first : first + batch_size]):
            results[index] = (-logprobs[row].sum().item(), len(batch[row]) - 1)
    return results

"""What a causal LM says about text: log-likelihoods of texts and of answer choices, and greedy answers.

Every sequence starts with one context token (the tokenizer's BOS, or EOS where it has none), so
every token of a text is predicted whatever the tokenizer adds. ``vocab_size`` limits the softmax to
the first rows of the output layer: a base model scored inside a model resized for an adapter's new
tokens must not give probability to rows it never had.

Multiple choice follows lm-evaluation-harness's encoding (trailing spaces of the context move to the
answer; the answer's tokens are those of context+answer after the context's), so per-choice scores
agree with it. Unlike it, a question's context runs through the model once: its key/value cache is
copied to each choice, which then only runs its own tokens.
"""

from __future__ import annotations

import math
import unicodedata

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


class ScoringError(ValueError):
    """Text this model and tokenizer cannot score honestly; the message says what and how to fix it."""


class InputTooLong(ScoringError):
    """Inputs longer than the model's positions."""


def _comparable(text: str) -> str:
    """Text as a decoded encoding must give it back: tokenizers may normalise Unicode and spaces."""
    return "".join(unicodedata.normalize("NFKC", text).split())


def require_covered(tokenizer, texts: list[str], encoded: list[list[int]]) -> None:
    """Every text must be carried by its tokens: a text that encodes to nothing, or to tokens that do not
    decode back to it (unknown tokens, a tokenizer loaded wrongly), would score as almost free."""
    empty = [t for t, ids in zip(texts, encoded) if t.strip() and not ids]
    if empty:
        raise ScoringError(
            f"{len(empty)} of {len(texts)} texts encode to no tokens, e.g. {empty[0][:60]!r}: the "
            f"tokenizer ({type(tokenizer).__name__}, {len(tokenizer)} tokens) cannot be what the model "
            "was trained with; check tokenizer_config.json and the tokenizer files in the model folder"
        )
    decoded = tokenizer.batch_decode(encoded, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    lost = [(t, d) for t, d in zip(texts, decoded) if _comparable(t) != _comparable(d)]
    if lost:
        text, back = lost[0]
        raise ScoringError(
            f"{len(lost)} of {len(texts)} texts do not decode back from their tokens, e.g. "
            f"{text[:60]!r} -> {back[:60]!r}: the tokenizer cannot represent them (unknown tokens or "
            "no byte fallback), so their scores would be meaningless; use the tokenizer the model was "
            "trained with, or leave these languages out"
        )


def context_token(tokenizer) -> int:
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        raise ValueError("the tokenizer has neither a BOS nor an EOS token to start a text with")
    return token


def max_positions(model) -> int | None:
    return getattr(model.config, "max_position_embeddings", None)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _padded(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


def _logprobs(logits: torch.Tensor, vocab_size: int | None) -> torch.Tensor:
    return F.log_softmax(logits[..., :vocab_size].float(), dim=-1)


def _check_length(lengths: list[int], model) -> None:
    limit = max_positions(model)
    if limit and max(lengths, default=0) > limit:
        raise InputTooLong(
            f"{sum(n > limit for n in lengths)} inputs are longer than the model's {limit} positions "
            f"(longest: {max(lengths)} tokens); use smaller chunks (chunk_bytes), fewer shots or a limit"
        )


@torch.no_grad()
def text_nll(
    model, tokenizer, texts: list[str], batch_size: int = 8, desc: str = "scoring", vocab_size: int | None = None
) -> list[tuple[float, int]]:
    """(negative log-likelihood in nats, number of tokens) for each text, in input order."""
    start = context_token(tokenizer)
    plain = tokenizer(texts, add_special_tokens=False)["input_ids"]
    require_covered(tokenizer, texts, plain)
    encoded = [[start, *ids] for ids in plain]
    _check_length([len(e) for e in encoded], model)
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    results: list[tuple[float, int]] = [(math.nan, 0)] * len(encoded)
    for first in tqdm(range(0, len(order), batch_size), desc=desc, leave=False):
        rows = order[first : first + batch_size]
        ids, mask = _padded([encoded[i] for i in rows], start)
        ids, mask = ids.to(_device(model)), mask.to(_device(model))
        logprobs = _logprobs(model(input_ids=ids, attention_mask=mask).logits[:, :-1], vocab_size)
        picked = logprobs.gather(-1, ids[:, 1:, None]).squeeze(-1) * mask[:, 1:]
        for row, index in enumerate(rows):
            results[index] = (-picked[row].sum().item(), len(encoded[index]) - 1)
    return results


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context and continuation token ids, the context starting with the context token."""
    context_ids, whole = _context_and_whole(tokenizer, context, continuation)
    return context_ids, whole[len(context_ids) :]


def _context_and_whole(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Ids of the context and of context + continuation, both after the context token."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    start = [context_token(tokenizer)]
    context_ids = start + tokenizer(context, add_special_tokens=False)["input_ids"] if context else start
    whole = start + tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    return context_ids, whole


@torch.no_grad()
def choice_loglikelihoods(
    model,
    tokenizer,
    questions: list[tuple[str, list[str]]],
    batch_size: int = 8,
    vocab_size: int | None = None,
    share_context: bool = True,
    desc: str = "choices",
) -> list[list[float]]:
    """Summed log-probability of each choice after its question's context, in input order.

    ``questions``: (context, [continuation, ...]). With ``share_context`` the context runs once per
    question; without, every (context, choice) pair runs whole, as other harnesses do.
    """
    encoded, texts, text_ids = [], [], []
    for context, continuations in questions:
        pairs = [_context_and_whole(tokenizer, context, c) for c in continuations]
        # Each choice's context ids are the same (they depend only on the context).
        context_ids = pairs[0][0]
        choices = [whole[len(context_ids) :] for _, whole in pairs]
        if not all(choices):
            raise ScoringError(f"a choice encodes to no tokens after context {context[-60:]!r}")
        encoded.append((context_ids, choices))
        texts += [context + c for c in continuations]
        text_ids += [whole[1:] for _, whole in pairs]
    require_covered(tokenizer, texts, text_ids)
    _check_length([len(c) + max(map(len, conts)) for c, conts in encoded], model)
    order = sorted(range(len(encoded)), key=lambda i: -(len(encoded[i][0]) + max(map(len, encoded[i][1]))))
    results: list[list[float]] = [[] for _ in encoded]
    score = _shared_batch if share_context else _whole_batch
    for first in tqdm(range(0, len(order), batch_size), desc=desc, leave=False):
        rows = order[first : first + batch_size]
        for index, scores in zip(rows, score(model, [encoded[i] for i in rows], vocab_size)):
            results[index] = scores
    return results


def _whole_batch(model, batch, vocab_size):
    sequences = [(ctx + cont, len(ctx), len(cont)) for ctx, conts in batch for cont in conts]
    ids, mask = _padded([s for s, _, _ in sequences], 0)
    device = _device(model)
    logprobs = _logprobs(model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits, vocab_size)
    flat = []
    for row, (seq, start, length) in enumerate(sequences):
        targets = torch.tensor(seq[start:], device=device)
        flat.append(logprobs[row, start - 1 : start - 1 + length].gather(-1, targets[:, None]).sum().item())
    return _regroup(flat, batch)


def _shared_batch(model, batch, vocab_size):
    device = _device(model)
    contexts = [ctx for ctx, _ in batch]
    ids, mask = _padded(contexts, 0)
    ids, mask = ids.to(device), mask.to(device)
    out = model(input_ids=ids, attention_mask=mask, use_cache=True)
    lengths = torch.tensor([len(c) for c in contexts], device=device)
    last = _logprobs(out.logits[torch.arange(len(batch), device=device), lengths - 1], vocab_size)
    owner = [q for q, (_, conts) in enumerate(batch) for _ in conts]
    continuations = [cont for _, conts in batch for cont in conts]
    first_token = torch.tensor([cont[0] for cont in continuations], device=device)
    flat = last[torch.tensor(owner, device=device), first_token]
    if max(map(len, continuations)) > 1:
        # The rest of each choice runs on a copy of its context's cache, at the positions after it.
        cache = out.past_key_values
        index = torch.tensor(owner, device=device)
        cache.reorder_cache(index)
        rest_ids, rest_mask = _padded([cont[:-1] for cont in continuations], 0)
        rest_ids, rest_mask = rest_ids.to(device), rest_mask.to(device)
        positions = lengths[index, None] + torch.arange(rest_ids.shape[1], device=device)[None]
        logits = model(
            input_ids=rest_ids,
            attention_mask=torch.cat([mask[index], rest_mask], dim=1),
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
        ).logits
        logprobs = _logprobs(logits, vocab_size)
        targets, target_mask = _padded([cont[1:] for cont in continuations], 0)
        picked = logprobs.gather(-1, targets.to(device)[..., None]).squeeze(-1) * target_mask.to(device)
        flat = flat + picked.sum(-1)
    return _regroup(flat.tolist(), batch)


def _regroup(flat: list[float], batch) -> list[list[float]]:
    grouped, at = [], 0
    for _, conts in batch:
        grouped.append(flat[at : at + len(conts)])
        at += len(conts)
    return grouped


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int,
    stop: list[str],
    batch_size: int = 8,
    vocab_size: int | None = None,
    desc: str = "generating",
) -> list[str]:
    """Greedy continuation of each prompt, cut at the first stop string, in input order."""
    start = context_token(tokenizer)
    plain = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    require_covered(tokenizer, prompts, plain)
    encoded = [[start, *ids] for ids in plain]
    _check_length([len(e) + max_new_tokens for e in encoded], model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else start
    rows_total = model.get_output_embeddings().weight.shape[0]
    suppress = list(range(vocab_size, rows_total)) if vocab_size and vocab_size < rows_total else None
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    results = [""] * len(encoded)
    device = _device(model)
    for first in tqdm(range(0, len(order), batch_size), desc=desc, leave=False):
        rows = order[first : first + batch_size]
        width = max(len(encoded[i]) for i in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, i in enumerate(rows):  # left padding: every prompt ends where generation starts
            ids[r, width - len(encoded[i]) :] = torch.tensor(encoded[i])
            mask[r, width - len(encoded[i]) :] = 1
        output = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=pad,
            suppress_tokens=suppress,
            stop_strings=stop or None,
            tokenizer=tokenizer if stop else None,
        )
        for r, i in enumerate(rows):
            text = tokenizer.decode(output[r, width:], skip_special_tokens=True)
            for s in stop:
                text = text.split(s)[0]
            results[i] = text.strip()
    return results

"""What a causal LM says about text: log-likelihoods of texts and of answer choices, and greedy answers.

Every sequence starts with one context token (the tokenizer's BOS, or EOS where it has none), so
every token of a text is predicted whatever the tokenizer adds. ``vocab_size`` limits the softmax to
the first rows of the output layer: a base model scored inside a model resized for an adapter's new
tokens must not give probability to rows it never had.

Multiple choice follows lm-evaluation-harness's encoding (trailing spaces of the context move to the
answer; the answer's tokens are those of context+answer after the context's), so per-choice scores
agree with it. How a batch of questions runs is chosen from its token counts: each question as one
sequence with its choices under a block attention mask, its context once with the key/value cache copied
to every choice, or every (context, choice) sequence whole; tokens all choices begin with are scored
once, with the context. Only the logits that are read are computed, and log-probabilities are summed in
float64.
"""

from __future__ import annotations

import copy
import inspect
import math
import unicodedata
from dataclasses import dataclass
from typing import Literal

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


def encode_texts(tokenizer, texts: list[str], model, room: int = 0) -> list[list[int]]:
    """Each text's token ids after the context token, checked to carry the text and to fit the model's positions
    with ``room`` more (the tokens to generate)."""
    start = context_token(tokenizer)
    plain = tokenizer(texts, add_special_tokens=False)["input_ids"]
    require_covered(tokenizer, texts, plain)
    encoded = [[start, *ids] for ids in plain]
    _check_length([len(e) + room for e in encoded], model)
    return encoded


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
    encoded = encode_texts(tokenizer, texts, model)
    start = context_token(tokenizer)  # also the padding: masked out
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    results: list[tuple[float, int]] = [(math.nan, 0)] * len(encoded)
    for first in tqdm(range(0, len(order), batch_size), desc=desc, leave=False):
        rows = order[first : first + batch_size]
        ids, mask = _padded([encoded[i] for i in rows], start)
        ids, mask = ids.to(_device(model)), mask.to(_device(model))
        logprobs = _logprobs(model(input_ids=ids, attention_mask=mask).logits[:, :-1], vocab_size)
        picked = logprobs.gather(-1, ids[:, 1:, None]).squeeze(-1).double() * mask[:, 1:]  # see _target_logprobs
        for row, index in enumerate(rows):
            results[index] = (-picked[row].sum().item(), len(encoded[index]) - 1)
    return results


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context and continuation token ids, the context starting with the context token."""
    context_ids, (whole,) = _context_and_wholes(tokenizer, context, [continuation])
    return context_ids, whole[len(context_ids) :]


def _context_and_wholes(tokenizer, context: str, continuations: list[str]) -> tuple[list[int], list[list[int]]]:
    """Ids of the context and of context + each continuation, all after the context token; the context is
    tokenized once, the whole texts in one call."""
    stem = context.rstrip()  # its trailing spaces belong to the continuations
    start = [context_token(tokenizer)]
    context_ids = start + tokenizer(stem, add_special_tokens=False)["input_ids"] if stem else start
    wholes = tokenizer([context + c for c in continuations], add_special_tokens=False)["input_ids"]
    return context_ids, [start + ids for ids in wholes]


@dataclass
class _Question:
    """A question's tokens as scored: the context (from the context token on, the choices' common prefix at
    its end), how many of those last tokens are that prefix (scored for every choice), and each choice's own
    tokens (at least one)."""

    context: list[int]
    prefix: int
    rests: list[list[int]]


def _question(tokenizer, context: str, continuations: list[str]) -> tuple[_Question, list[list[int]]]:
    """The question's tokens, and each choice's whole text ids (for the coverage check)."""
    context_ids, wholes = _context_and_wholes(tokenizer, context, continuations)
    choices = [whole[len(context_ids) :] for whole in wholes]
    if not all(choices):
        raise ScoringError(f"a choice encodes to no tokens after context {context[-60:]!r}")
    # Tokens every choice starts with are scored once, as part of the context (each choice keeps one).
    prefix = 0
    if len(choices) > 1:
        shortest = min(map(len, choices)) - 1
        while prefix < shortest and all(c[prefix] == choices[0][prefix] for c in choices):
            prefix += 1
    question = _Question(context_ids + choices[0][:prefix], prefix, [c[prefix:] for c in choices])
    return question, [whole[1:] for whole in wholes]


@dataclass
class _Costs:
    """What a forward pass costs, in parameter-multiplies (FLOPs / 2): the layers for every input token, the
    output layer for every position whose logits are kept, attention for every (query, key) pair, and a fixed
    cost per pass: it reads every weight once, which on a GPU takes as long as computing a few hundred tokens
    (its FLOPs per byte of memory bandwidth), on a CPU some fifty (the benchmark model: 25 ms a pass, 0.5 ms a
    token)."""

    layers: float
    output: float
    pair: float
    per_pass: float

    @classmethod
    def of(cls, model) -> _Costs:
        inputs = model.get_input_embeddings().weight
        outputs = model.get_output_embeddings().weight
        total = sum(p.numel() for p in model.parameters())
        layers = total - inputs.numel() - (outputs.numel() if outputs.data_ptr() != inputs.data_ptr() else 0)
        config = model.config.get_text_config()
        tokens_per_pass = 256 if _device(model).type == "cuda" else 48
        return cls(layers, outputs.numel(), 2 * config.hidden_size * config.num_hidden_layers, tokens_per_pass * layers)

    def whole(self, batch: list[_Question]) -> float:
        rows = [(len(q.context) + len(r) - 1, q.prefix + len(r)) for q in batch for r in q.rests]
        width, kept = max(w for w, _ in rows), max(k for _, k in rows)
        return self.per_pass + len(rows) * (width * self.layers + kept * self.output + width * width / 2 * self.pair)

    def packed(self, batch: list[_Question]) -> float:
        width = max(_packed_length(q) for q in batch)
        kept = max(_packed_kept(q) for q in batch)
        return self.per_pass + len(batch) * (width * self.layers + kept * self.output + width * width / 2 * self.pair)

    def shared(self, batch: list[_Question]) -> float:
        width = max(len(q.context) for q in batch)
        kept = 1 + max(q.prefix for q in batch)
        cost = self.per_pass + len(batch) * (width * self.layers + kept * self.output + width * width / 2 * self.pair)
        return cost + self.rest_passes([len(r) - 1 for q in batch for r in q.rests], width)[0]

    def rest_passes(self, lengths: list[int], context_width: int) -> tuple[float, list[list[int]]]:
        """The cheapest split of the choices' remaining tokens into passes of rows of similar length (each pass
        pads to its longest row), and its cost; rows with nothing left need no pass."""
        order = sorted((i for i, n in enumerate(lengths) if n), key=lengths.__getitem__, reverse=True)

        def cost(first: int, end: int) -> float:  # rows order[first:end] in one pass
            width = lengths[order[first]]
            per_token = self.layers + self.output + (context_width + width / 2) * self.pair
            return self.per_pass + (end - first) * width * per_token

        # best[end]: the cheapest cost of rows order[:end], a pass starting only where the length changes.
        best, split = [0.0] + [math.inf] * len(order), [0] * (len(order) + 1)
        starts = [i for i in range(len(order)) if i == 0 or lengths[order[i]] != lengths[order[i - 1]]]
        for end in range(1, len(order) + 1):
            for first in (s for s in starts if s < end):
                if best[first] + cost(first, end) < best[end]:
                    best[end], split[end] = best[first] + cost(first, end), first
        passes, end = [], len(order)
        while end:
            passes.append(order[split[end] : end])
            end = split[end]
        return best[-1], passes[::-1]


@torch.no_grad()
def choice_loglikelihoods(
    model,
    tokenizer,
    questions: list[tuple[str, list[str]]],
    batch_size: int = 8,
    vocab_size: int | None = None,
    strategy: Literal["auto", "packed", "shared", "whole"] = "auto",
    desc: str = "choices",
) -> list[list[float]]:
    """Summed log-probability of each choice after its question's context, in input order.

    ``questions``: (context, [continuation, ...]), ``batch_size`` of them per forward pass. ``strategy``:
    ``packed`` runs each question as one sequence, its context then all its choices, each choice seeing only the
    context and itself (a block attention mask); ``shared`` runs the contexts once and each choice's own tokens on
    a copy of its context's cache; ``whole`` runs every (context, choice) sequence whole, as lm-evaluation-harness
    does; ``auto`` takes, per batch, the one that multiplies the fewest parameters for its token counts. ``packed``
    needs attention that takes a mask of any shape (sdpa or eager) and, where the model has a sliding window,
    sequences within it; otherwise ``auto`` leaves it out.
    """
    encoded, texts, text_ids = [], [], []
    for context, continuations in questions:
        question, ids = _question(tokenizer, context, continuations)
        encoded.append(question)
        texts += [context + c for c in continuations]
        text_ids += ids
    require_covered(tokenizer, texts, text_ids)
    _check_length([len(q.context) + max(map(len, q.rests)) for q in encoded], model)
    # Longest first, and contexts of a length together: a batch pads its contexts to the longest.
    order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i].context), -max(map(len, encoded[i].rests))))
    costs = _Costs.of(model)
    results: list[list[float]] = [[] for _ in encoded]
    for first in tqdm(range(0, len(order), batch_size), desc=desc, leave=False):
        rows = order[first : first + batch_size]
        batch = [encoded[i] for i in rows]
        if strategy == "auto":
            options = {"shared": costs.shared(batch), "whole": costs.whole(batch)}
            if _packs(model, batch):
                options["packed"] = costs.packed(batch)
            chosen = min(options, key=options.get)
        else:
            chosen = strategy
        if chosen == "packed":
            scored = _packed_batch(model, batch, vocab_size)
        elif chosen == "shared":
            scored = _shared_batch(model, batch, vocab_size, costs)
        else:
            scored = _whole_batch(model, batch, vocab_size)
        for index, scores in zip(rows, scored):
            results[index] = scores
    return results


def _left_padded(rows: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ids, attention mask and positions of rows padded on the left, so that every row ends in the last column."""
    width = max(map(len, rows))
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device)


def _target_logprobs(logprobs: torch.Tensor, targets: list[list[int]], at_end: bool = True) -> torch.Tensor:
    """Summed log-probability of each row's targets, which sit in the last positions of its logits (``at_end``) or
    the first. Summed in float64: a float32 sum of tens of terms near -10 is off by several units in its last place,
    more than the 1e-4 two scorers of the same model should agree to."""
    ids = torch.zeros(logprobs.shape[:2], dtype=torch.long)
    keep = torch.zeros(logprobs.shape[:2], dtype=torch.bool)
    for row, target in enumerate(targets):
        if target:
            span = slice(logprobs.shape[1] - len(target), None) if at_end else slice(0, len(target))
            ids[row, span] = torch.tensor(target)
            keep[row, span] = True
    picked = logprobs.gather(-1, ids.to(logprobs.device)[..., None]).squeeze(-1).double()
    return (picked * keep.to(logprobs.device)).sum(-1)


def _whole_batch(model, batch: list[_Question], vocab_size) -> list[list[float]]:
    """Every (context, choice) as one sequence, without its last token (nothing is predicted after it)."""
    targets = [q.context[len(q.context) - q.prefix :] + rest for q in batch for rest in q.rests]
    ids, mask, positions = _left_padded([q.context + rest[:-1] for q in batch for rest in q.rests], _device(model))
    logits = _forward(model, max(map(len, targets)), input_ids=ids, attention_mask=mask, position_ids=positions).logits
    return _regroup(_target_logprobs(_logprobs(logits, vocab_size), targets).tolist(), batch)


def _packed_length(question: _Question) -> int:
    """A question's packed sequence: its context, then each choice without its last token."""
    return len(question.context) + sum(len(rest) - 1 for rest in question.rests)


def _packed_kept(question: _Question) -> int:
    """Its positions whose logits are read, all at the end: the common prefix's, the context's last, the choices'."""
    return question.prefix + 1 + sum(len(rest) - 1 for rest in question.rests)


def _packs(model, batch: list[_Question]) -> bool:
    """Whether the model computes a packed batch as it computes each choice alone: it takes position ids (not alibi
    from the mask), its attention takes an arbitrary mask, and no sliding window is shorter than the sequences (a
    custom mask replaces the window's)."""
    config = model.config.get_text_config()
    window = getattr(config, "sliding_window", None)
    return (
        _takes(model, "position_ids")
        and getattr(config, "_attn_implementation", None) in ("sdpa", "eager")
        and (not window or max(_packed_length(q) for q in batch) <= window)
    )


def _packed_batch(model, batch: list[_Question], vocab_size) -> list[list[float]]:
    """Each question as one sequence, left-padded: its context, then every choice but its last token, each choice
    at the positions after the context and seeing only the context and its own earlier tokens."""
    device = _device(model)
    width = max(_packed_length(q) for q in batch)
    kept = max(_packed_kept(q) for q in batch)
    ids = torch.zeros((len(batch), width), dtype=torch.long)
    positions = torch.zeros((len(batch), width), dtype=torch.long)
    segment = torch.full((len(batch), width), -1, dtype=torch.long)  # -1 padding, 0 context, j + 1 choice j
    rows, at, tokens, owners = [], [], [], []  # (row, kept position, target token, choice) of every scored token
    choice = 0
    for row, q in enumerate(batch):
        start = width - _packed_length(q)
        end = start + len(q.context)
        ids[row, start:end] = torch.tensor(q.context)
        positions[row, start:end] = torch.arange(len(q.context))
        segment[row, start:end] = 0
        last = kept - 1 - (width - end)  # the context's last position, among the kept
        prefix = q.context[len(q.context) - q.prefix :]
        for j, rest in enumerate(q.rests):
            inputs = rest[:-1]
            ids[row, end : end + len(inputs)] = torch.tensor(inputs, dtype=torch.long)
            positions[row, end : end + len(inputs)] = torch.arange(len(q.context), len(q.context) + len(inputs))
            segment[row, end : end + len(inputs)] = j + 1
            first = last + 1 + (end - (start + len(q.context)))  # kept position of this choice's first input
            targets = [(last - q.prefix + i, t) for i, t in enumerate(prefix)] + [(last, rest[0])]
            targets += [(first + k, t) for k, t in enumerate(rest[1:])]
            for position, token in targets:
                rows.append(row), at.append(position), tokens.append(token), owners.append(choice)
            end += len(inputs)
            choice += 1
    query, key = segment[:, :, None], segment[:, None, :]
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    mask = causal & (key != -1) & ((key == 0) | (key == query))
    mask |= torch.eye(width, dtype=torch.bool) & (query == -1)  # padding attends itself: no empty softmax
    logits = _forward(
        model,
        kept,
        input_ids=ids.to(device),
        attention_mask=mask[:, None].to(device),
        position_ids=positions.to(device),
    ).logits
    where = [torch.tensor(index, device=logits.device) for index in (rows, at, tokens, owners)]
    picked = _logprobs(logits, vocab_size)[where[0], where[1], where[2]].double()
    flat = torch.zeros(choice, dtype=torch.float64, device=logits.device).index_add_(0, where[3], picked)
    return _regroup(flat.tolist(), batch)


def _shared_batch(model, batch: list[_Question], vocab_size, costs: _Costs) -> list[list[float]]:
    """The contexts once; each choice's own tokens after its first on a copy of its context's cache, in passes of
    choices of similar length."""
    device = _device(model)
    ids, mask, positions = _left_padded([q.context for q in batch], device)
    cache_name = _cache_argument(model)
    out = _forward(
        model,
        1 + max(q.prefix for q in batch),
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions,
        use_cache=True,
    )
    owners = [i for i, q in enumerate(batch) for _ in q.rests]
    # The context's last logits score the choices' common prefix and each choice's first token.
    heads = [q.context[len(q.context) - q.prefix :] + rest[:1] for q in batch for rest in q.rests]
    flat = _target_logprobs(_logprobs(out.logits, vocab_size)[torch.tensor(owners, device=device)], heads)
    rests = [rest for q in batch for rest in q.rests]
    cache = getattr(out, cache_name)
    _, passes = costs.rest_passes([len(r) - 1 for r in rests], ids.shape[1])
    for number, rows in enumerate(passes):
        owner = torch.tensor([owners[r] for r in rows], device=device)
        # Each pass extends its own copy of the contexts' cache; the last may take the original.
        rows_cache = cache if number == len(passes) - 1 else copy.deepcopy(cache)
        rows_cache.reorder_cache(owner)
        rest_ids, rest_mask = _padded([rests[r][:-1] for r in rows], 0)
        after = positions[owner, -1:] + 1 + torch.arange(rest_ids.shape[1], device=device)[None]
        logits = _forward(
            model,
            0,
            input_ids=rest_ids.to(device),
            attention_mask=torch.cat([mask[owner], rest_mask.to(device)], dim=1),
            position_ids=after,
            use_cache=True,
            **{cache_name: rows_cache},
        ).logits
        scores = _target_logprobs(_logprobs(logits, vocab_size), [rests[r][1:] for r in rows], at_end=False)
        flat[torch.tensor(rows, device=device)] += scores
    return _regroup(flat.tolist(), batch)


def _takes(model, argument: str) -> bool:
    """Whether the model's forward (under any peft wrapper) names this argument."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return argument in inspect.signature(base.forward).parameters


def _cache_argument(model) -> str:
    """The name a model's forward takes its key/value cache by (transformers 5 renamed past_key_values to cache)."""
    return "cache" if _takes(model, "cache") else "past_key_values"


def _forward(model, keep: int, **inputs):
    """The model's output with the logits of the last ``keep`` positions only (all for 0): the output layer over a
    vocabulary of 32-256K costs as much as several layers, and most positions' logits would never be read."""
    if _takes(model, "logits_to_keep"):
        return model(**inputs, logits_to_keep=keep)
    out = model(**inputs)  # custom model code without the argument: the same numbers, sliced afterwards
    if keep:
        out.logits = out.logits[:, -keep:]
    return out


def _regroup(flat: list[float], batch: list[_Question]) -> list[list[float]]:
    grouped, at = [], 0
    for question in batch:
        grouped.append(flat[at : at + len(question.rests)])
        at += len(question.rests)
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
    encoded = encode_texts(tokenizer, prompts, model, room=max_new_tokens)
    start = context_token(tokenizer)
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

r"""Extend byte-level BPE tokenizers (Llama-3, Qwen, GPT style) with pieces trained on Indic text.

A token appended to a byte-level BPE vocabulary without the merge that builds it is never produced on
ordinary text. So a BPE model is trained on the new text with the base's own pre-tokenizer (same
regex, same byte alphabet), and each of its merges whose result the base lacks is appended to the
base: the new token gets the next id after every base token and special token, and its merge ranks
after every base merge, so the base's merges always apply first and the new ones continue from there.

A new merge fires only if the base's merges leave its two halves side by side, which is not always
so; a new token that no training line produces is dead weight in the embedding matrix. Such tokens,
and the new tokens built on them, are removed and the check repeated until every new token is used.

Llama-3's and Qwen's pre-tokenizer regex splits words at letters (``\p{L}+``), and Indic vowel signs,
viramas and anusvaras are marks (``\p{M}``), so "हिंदी" reaches BPE as four pieces and no merge can ever
join them: that split alone keeps Llama-3 above 2.5 tokens per Hindi word whatever is added. So the
extended tokenizer's regex is chosen by ``pre_tokenizer`` (:data:`PRE_TOKENIZERS`):

- ``keep_marks``: the base's regex with marks counted as part of words (``[\p{L}\p{M}]+``);
  text without combining marks, English included, is pre-tokenized exactly as before. llama.cpp
  implements no such regex, so such a model is served by transformers or vLLM, not as a GGUF.
- ``qwen35``: the regex llama.cpp implements as its ``qwen35`` pre-tokenizer: marks kept in words as
  above, but numbers split into single digits (Llama-3 takes up to three at a time); and, as that type
  does, every word goes through the merges (Llama-3's ``ignore_merges`` takes a word that is a whole
  vocabulary entry as one token even where its merges would not build it). GGUF-compatible, and the
  default: on FLORES dev it costs under 0.5% more tokens than keep_marks (docs/benchmarks.md).
- ``base``: the base's regex unchanged; vowel signs stay split, so the gain is smaller. GGUF-compatible
  wherever the base is.

llama.cpp never reads the regex in ``tokenizer.json``: it runs one hard-coded in C++ for each pre-tokenizer
type it knows, so only those two can be exported (``indictune.export.gguf``).

Llama-3's ``tokenizer.model`` is a tiktoken file (base64 token, rank); it is converted through
transformers' ``TikTokenConverter`` with Llama-3's 256 special tokens at ids 128000-128255.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from tokenizers import Tokenizer, models, trainers
from tokenizers.pre_tokenizers import ByteLevel

LLAMA3_SPECIAL = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|reserved_special_token_2|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
] + [f"<|reserved_special_token_{i}|>" for i in range(3, 248)]


def is_tiktoken_file(path: Path) -> bool:
    """A tiktoken BPE file: lines of "<base64 token> <rank>"."""
    try:
        with open(path, "rb") as handle:
            first = handle.readline().split()
        return len(first) == 2 and first[1].isdigit() and bool(base64.b64decode(first[0], validate=True))
    except (OSError, ValueError):
        return False


def from_tiktoken(path: Path):
    """A fast tokenizer for a Llama-3 tiktoken file, special tokens at the ids Llama-3 gives them."""
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    backend = TikTokenConverter(vocab_file=str(path), extra_special_tokens=LLAMA3_SPECIAL).converted()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>")


def is_byte_level_bpe(tokenizer) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    spec = json.loads(backend.to_str())
    return spec["model"]["type"] == "BPE" and "ByteLevel" in json.dumps(spec.get("pre_tokenizer"))


def keep_marks(pattern: str) -> str:
    r"""A pre-tokenizer regex in which combining marks belong to words: ``\p{L}+`` -> ``[\p{L}\p{M}]+`` and
    ``\p{L}`` inside a class gains ``\p{M}`` (so ``[^\s\p{L}\p{N}]`` no longer treats a matra as punctuation)."""
    pattern = pattern.replace(r"\p{L}+", r"[\p{L}]+").replace(r"\p{L}", r"\p{L}\p{M}")
    return pattern.replace(r"\p{M}\p{M}", r"\p{M}")


# The pre-tokenizer regexes of tokenizer.json files as Llama-3 and Qwen2 ship them, and the one llama.cpp
# implements as its `qwen35` type (src/llama-vocab.cpp quotes it): Qwen2's with marks kept in words.
_CONTRACTIONS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
_SPACES = r"|\s*[\r\n]+|\s+(?!\S)|\s+"
LLAMA3_REGEX = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*" + _SPACES
QWEN2_REGEX = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*" + _SPACES
QWEN35_REGEX = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*" + _SPACES


class PreTokenizerError(ValueError):
    """A pre_tokenizer mode that the base tokenizer's regex cannot take."""


def to_qwen35(pattern: str) -> str:
    if pattern not in (LLAMA3_REGEX, QWEN2_REGEX):
        raise PreTokenizerError(
            f"pre_tokenizer: qwen35 replaces Llama-3's or Qwen2's regex, and this base has {pattern!r}; "
            "use keep_marks or base"
        )
    return QWEN35_REGEX


# mode -> what it does to each Split regex of the base's pre-tokenizer
PRE_TOKENIZERS = {"keep_marks": keep_marks, "qwen35": to_qwen35, "base": lambda pattern: pattern}


def split_regexes(pre_tokenizer: dict | None) -> list[str]:
    """The regexes of a pre-tokenizer spec's Split steps, in order."""
    steps = (pre_tokenizer or {}).get("pretokenizers", [pre_tokenizer or {}])
    return [s["pattern"]["Regex"] for s in steps if s.get("type") == "Split" and "Regex" in s.get("pattern", {})]


def _apply_mode(spec: dict, mode: str) -> dict:
    """A tokenizer.json spec with its pre-tokenizer (and, for qwen35, its merge rule) in `mode`."""
    if mode == "qwen35" and not split_regexes(spec.get("pre_tokenizer")):
        raise PreTokenizerError(
            "pre_tokenizer: qwen35 replaces Llama-3's or Qwen2's regex, and this base's pre-tokenizer has no regex "
            "(GPT-2's ByteLevel split, say); use keep_marks or base"
        )
    spec = {**spec, "pre_tokenizer": _pre_tokenizer_for(spec.get("pre_tokenizer"), mode)}
    if mode == "qwen35":
        spec["model"] = {**spec["model"], "ignore_merges": False}
    return spec


def _pre_tokenizer_for(pre_tokenizer: dict | None, mode: str) -> dict | None:
    """The pre-tokenizer spec with `mode` applied to every Split regex."""
    if pre_tokenizer is None:
        return None
    rewrite = PRE_TOKENIZERS[mode]
    spec = json.loads(json.dumps(pre_tokenizer))
    for step in spec.get("pretokenizers", [spec]):
        if step.get("type") == "Split" and "Regex" in step.get("pattern", {}):
            step["pattern"]["Regex"] = rewrite(step["pattern"]["Regex"])
    return spec


def with_pre_tokenizer(tokenizer: Tokenizer, mode: str) -> Tokenizer:
    spec = json.loads(tokenizer.to_str())
    spec["pre_tokenizer"] = _pre_tokenizer_for(spec.get("pre_tokenizer"), mode)
    return Tokenizer.from_str(json.dumps(spec))


def train(lines: list[str], new_pieces: int, like: Tokenizer, pre_tokenizer: str, min_frequency: int = 2) -> Tokenizer:
    """A byte-level BPE model with `new_pieces` merges, pre-tokenized as `like` in `pre_tokenizer` mode."""
    trained = Tokenizer(models.BPE())
    trained.pre_tokenizer = with_pre_tokenizer(like, pre_tokenizer).pre_tokenizer
    trained.normalizer = like.normalizer
    trainer = trainers.BpeTrainer(
        vocab_size=len(ByteLevel.alphabet()) + new_pieces,
        min_frequency=min_frequency,
        initial_alphabet=ByteLevel.alphabet(),
        show_progress=False,
    )
    trained.train_from_iterator(lines, trainer)
    return trained


def _with_merges(spec: dict, new: list[tuple[str, str]]) -> Tokenizer:
    spec = json.loads(json.dumps(spec))
    vocab, merges = spec["model"]["vocab"], spec["model"]["merges"]
    # Special tokens go into the model's vocabulary at their own ids: tokenizers numbers added tokens that
    # the model lacks after the model's last id, which would move them once the vocabulary grows.
    for token in spec.get("added_tokens", []):
        vocab.setdefault(token["content"], token["id"])
    next_id = max(vocab.values()) + 1
    for a, b in new:
        if a + b not in vocab:
            vocab[a + b] = next_id
            next_id += 1
        merges.append([a, b])
    return Tokenizer.from_str(json.dumps(spec))


def _pairs(merges: list) -> list[tuple[str, str]]:
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in merges]


def _bpe(token: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """The pieces BPE makes of `token` (a string of byte symbols) with the merges in `ranks`."""
    pieces = list(token)
    while len(pieces) > 1:
        best = min(range(len(pieces) - 1), key=lambda i: ranks.get((pieces[i], pieces[i + 1]), 1 << 62))
        if (pieces[best], pieces[best + 1]) not in ranks:
            break
        pieces[best : best + 2] = [pieces[best] + pieces[best + 1]]
    return pieces


def merges_of(trained: Tokenizer) -> list[tuple[str, str]]:
    return _pairs(json.loads(trained.to_str())["model"]["merges"])


def interleave(merge_lists: list[list[tuple[str, str]]]) -> list[tuple[str, str]]:
    """Merges of several models in one order: each model's first, then each one's second, and so on."""
    longest = max(map(len, merge_lists), default=0)
    return [merges[i] for i in range(longest) for merges in merge_lists if i < len(merges)]


def extend(
    base: Tokenizer, trained: Tokenizer | list[tuple[str, str]], lines: list[str], pre_tokenizer: str
) -> tuple[Tokenizer, list[str]]:
    """`base` with the tokens `trained` (a model, or its merges) makes that it lacks, each with merges that
    build it from what the base's own merges leave of it; minus those no line of `lines` uses. Returns the
    tokenizer (its regex in `pre_tokenizer` mode) and the new tokens."""
    spec = _apply_mode(json.loads(base.to_str()), pre_tokenizer)
    known = set(spec["model"]["vocab"])
    ranks = {pair: rank for rank, pair in enumerate(_pairs(spec["model"]["merges"]))}
    new: list[tuple[str, str]] = []
    for a, b in trained if isinstance(trained, list) else merges_of(trained):
        if a + b in known:
            continue
        # the base's merges may cut the token differently from the trained model: join what they leave
        pieces = _bpe(a + b, ranks)
        built = pieces[0]
        for piece in pieces[1:]:
            ranks[(built, piece)] = len(ranks)
            new.append((built, piece))
            built += piece
            known.add(built)
    base_size = max([*spec["model"]["vocab"].values(), *(t["id"] for t in spec.get("added_tokens", []))]) + 1
    while True:
        extended = _with_merges(spec, new)
        used = {
            i
            for encoding in extended.encode_batch(lines, add_special_tokens=False)
            for i in encoding.ids
            if i >= base_size
        }
        vocab = extended.get_vocab()
        # a token no line produces may still be the half of one that is produced: keep what live tokens need
        needed = {a + b for a, b in new if vocab[a + b] in used}
        for a, b in reversed(new):
            if a + b in needed:
                needed.update((a, b))
        kept = [(a, b) for a, b in new if a + b in needed]
        if len(kept) == len(new):
            return extended, [token for token, i in sorted(vocab.items(), key=lambda kv: kv[1]) if i >= base_size]
        new = kept

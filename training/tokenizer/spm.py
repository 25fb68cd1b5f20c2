"""Train SentencePiece models on prepared text and merge their pieces into a base SentencePiece model.

Models are trained the way Llama-2's was (BPE, byte fallback, digits split, no normalisation of their
own: the data stages already normalised the text), so a merged model keeps the base's behaviour for
every base piece. New pieces are appended after all base pieces, which keeps every base id, and get
scores below every merged base piece, in the order the new model learned them, so the base's merges
always apply first and the new ones continue from there.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as model_pb2

from indictune.training.mixing import temperature_shares

NORMAL = model_pb2.ModelProto.SentencePiece.Type.NORMAL
MODEL_FILE = "tokenizer.model"
SENTINEL_SCORE = -1e6  # scores at or below this mark pieces a model wants merged after all others

TRAINER_DEFAULTS = dict(
    model_type="bpe",
    byte_fallback=True,
    split_digits=True,
    allow_whitespace_only_pieces=True,
    remove_extra_whitespaces=False,
    normalization_rule_name="identity",
    unk_id=0,
    bos_id=1,
    eos_id=2,
    pad_id=-1,
    character_coverage=0.9999,
    max_sentence_length=1 << 16,
    train_extremely_large_corpus=False,
    minloglevel=2,
)


def sample_lines(
    texts: list[str], langs: list[str], temperature: float = 1.0, max_characters: int | None = None, seed: int = 0
) -> tuple[list[str], dict[str, int]]:
    """Lines for training, each language's share of characters proportional to (its share)^(1/temperature).

    Temperature 1 keeps the corpus proportions; a higher temperature moves toward equal shares, so a
    small language is not drowned by a large one. No text is repeated: a language with less text than
    its share contributes all it has. Returns the lines and the characters taken per language.
    """
    by_lang: dict[str, list[str]] = defaultdict(list)
    for text, lang in zip(texts, langs):
        by_lang[lang or "unknown"].extend(line for line in text.split("\n") if line.strip())
    sizes = {lang: sum(map(len, lines)) for lang, lines in by_lang.items()}
    total = sum(sizes.values())
    budget = min(total, max_characters or total)
    shares = temperature_shares(sizes, temperature)
    rng = random.Random(seed)
    chosen, taken = [], {}
    for lang in sorted(by_lang):
        quota = budget * shares.get(lang, 0.0)
        lines = by_lang[lang][:]
        rng.shuffle(lines)
        used = 0
        for line in lines:
            if used >= quota:
                break
            chosen.append(line)
            used += len(line)
        taken[lang] = used
    rng.shuffle(chosen)
    return chosen, taken


def train(lines: list[str], vocab_size: int, **options) -> model_pb2.ModelProto:
    """A SentencePiece model trained on `lines` (TRAINER_DEFAULTS, then `options`)."""
    if not lines:
        raise ValueError("no text to train a SentencePiece model on")
    settings = {**TRAINER_DEFAULTS, "num_threads": os.cpu_count() or 1, **options}
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
        spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=f"{tmp}/m", vocab_size=vocab_size, **settings)
        proto = load(f"{tmp}/m.model")
    # The trainer records its temporary input and output paths: gone now, and different on every run.
    proto.trainer_spec.ClearField("input")
    proto.trainer_spec.ClearField("model_prefix")
    return proto


def load(path: str | Path) -> model_pb2.ModelProto:
    proto = model_pb2.ModelProto()
    proto.ParseFromString(Path(path).read_bytes())
    return proto


def merge(base: model_pb2.ModelProto, extra: model_pb2.ModelProto) -> tuple[model_pb2.ModelProto, list[str]]:
    """`base` with the normal pieces of `extra` it lacks appended; returns the model and the added pieces."""
    if base.trainer_spec.model_type != extra.trainer_spec.model_type:
        kinds = model_pb2.TrainerSpec.ModelType.Name
        raise ValueError(
            f"the base tokenizer is a SentencePiece {kinds(base.trainer_spec.model_type)} model; train the new "
            f"pieces with model_type: {kinds(base.trainer_spec.model_type).lower()} (got "
            f"{kinds(extra.trainer_spec.model_type).lower()})"
        )
    merged = model_pb2.ModelProto()
    merged.CopyFrom(base)
    present = {piece.piece for piece in base.pieces}
    # New pieces rank after every regular merge of the base. Some models park pieces that must merge
    # last at a sentinel score (Llama-2: runs of spaces at -1e9); those stay last. Scores near -1e9 would
    # also collide in float32, which would lose the new pieces' order.
    merges = [p.score for p in base.pieces if p.type == NORMAL and len(p.piece) > 1]
    floor = min((score for score in merges if score > SENTINEL_SCORE), default=0.0)
    last = max((score for score in merges if score <= SENTINEL_SCORE), default=-float("inf"))
    added = []
    for piece in sorted((p for p in extra.pieces if p.type == NORMAL), key=lambda p: -p.score):
        if piece.piece in present:
            continue
        present.add(piece.piece)
        added.append(piece.piece)
        new = merged.pieces.add()
        new.piece, new.type, new.score = piece.piece, NORMAL, floor - len(added)
    if floor - len(added) <= max(last, -(2**24)):  # float32 holds every integer above -2**24 exactly
        raise ValueError(f"no room for {len(added)} new scores between the base's {floor} and {last}")
    return merged, added


def processor(proto: model_pb2.ModelProto) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_proto=proto.SerializeToString())


def exact_backend(backend_json: str, proto) -> str:
    """A tokenizer.json that encodes exactly as the SentencePiece model `proto` (and llama.cpp) do.

    transformers 5 builds Llama's tokenizer.json with merges not in SentencePiece's order and a Metaspace
    pre-tokenizer that adds the dummy prefix "▁" only to the start of the whole input, and never to text
    that already starts with a space. SentencePiece merges by the merged piece's score and prefixes every
    piece of text it is given; llama.cpp does the same for the text between special tokens. The two then
    differ on runs of spaces, on a leading space, and on text right after a special token (up to 8% of a
    language's FLORES lines for an extended Llama-2): a model trained on one and served on the other reads
    ids it never saw. So merges are ranked by score, and the prefix comes from a normalizer, which applies
    to each piece of text between special tokens, as SentencePiece's does."""
    spec = json.loads(backend_json)
    scores = {piece.piece: piece.score for piece in proto.pieces}
    vocab = spec["model"]["vocab"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in spec["model"]["merges"]]
    merges.sort(key=lambda pair: (-scores.get(pair[0] + pair[1], SENTINEL_SCORE), vocab[pair[0] + pair[1]]))
    spec["model"]["merges"] = [list(pair) for pair in merges]
    spaces = {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}
    prefix = [{"type": "Prepend", "prepend": "\u2581"}] if proto.normalizer_spec.add_dummy_prefix else []
    spec["normalizer"] = {"type": "Sequence", "normalizers": [*prefix, spaces]}
    spec["pre_tokenizer"] = None
    return json.dumps(spec, ensure_ascii=False)


def copy_model_file(tokenizer, folder: str | Path) -> None:
    """Put the SentencePiece ``tokenizer.model`` of the folder the tokenizer was loaded from into `folder`.

    A tokenizers-backed tokenizer's ``save_pretrained`` writes tokenizer.json only, but llama.cpp's converter
    reads the SentencePiece model and nothing else: without it a Llama-2-style model cannot become a GGUF."""
    source = Path(tokenizer.name_or_path) / MODEL_FILE
    target = Path(folder) / MODEL_FILE
    if source.is_file() and not target.exists():
        shutil.copyfile(source, target)


def save_tokenizer(tokenizer, folder: str | Path) -> None:
    """``save_pretrained`` with the SentencePiece model (:func:`copy_model_file`)."""
    tokenizer.save_pretrained(folder)
    copy_model_file(tokenizer, folder)

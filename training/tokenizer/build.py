"""Train Indic pieces on a prepared corpus and extend a base tokenizer with them (or build a new one).

Two kinds of base: SentencePiece models (Llama-2, Mistral, Gemma style; ``spm``) and byte-level BPE
``tokenizer.json`` files or Llama-3 tiktoken files (Llama-3, Qwen, GPT style; ``bytelevel``).

The output directory loads with ``AutoTokenizer.from_pretrained``. It also holds, for a SentencePiece
base, the merged ``tokenizer.model``, and always ``new_tokens.json`` (the added pieces and their ids) and
``fertility.json``/``.md`` (tokens per word per language, base vs extended, on held-out text). Before anything
is written the result is checked: every base id must be unchanged, every checked line must decode back to itself, and
for a SentencePiece model the Hugging Face tokenizer must produce exactly the SentencePiece model's ids (so
llama.cpp, which implements SentencePiece, does too; see ``spm.exact_backend``).
"""

from __future__ import annotations

import glob
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from transformers import AutoTokenizer, LlamaTokenizer, PreTrainedTokenizerFast
from transformers.utils import cached_file

from indictune.core import languages
from indictune.core.io import atomic_directory
from indictune.core.paths import shared_data_dir
from indictune.core.recipe import field, to_dict
from indictune.data.corpus import load_corpus
from indictune.training.tokenizer import bytelevel, spm
from indictune.training.tokenizer.fertility import fertility, fertility_table

PRE_TOKENIZER_MODES = ("keep_marks", "qwen35", "base")
DEFAULT_PRE_TOKENIZER = "qwen35"  # as few tokens as keep_marks, give or take 0.5%, and exports to GGUF


@dataclass
class TokenizerConfig:
    output_dir: str = field(help="where the tokenizer is written (replaced as a whole)")
    train_data: list[str] = field(
        default_factory=list, help="prepared corpora: prepare_data output dirs, Parquet folders or globs"
    )
    train_text: dict[str, str] = field(
        default_factory=dict, help="plain-text files by language, {lang: file or glob}: one line per text"
    )
    languages: list[str] | None = field(None, help="train only on these languages (default: all in train_data)")
    base_tokenizer: str | None = field(None, help="tokenizer to extend (hub id or folder); none: a new tokenizer")
    vocab_size: int = field(
        8000, help="pieces trained on the new text: the SentencePiece vocabulary, or merges for a byte-level BPE base"
    )
    model_type: Literal["bpe", "unigram"] = field("bpe", help="must match the base model's type when extending")
    temperature: float = field(1.0, help="language sampling temperature (1: corpus proportions; higher: more even)")
    max_characters: int | None = field(None, help="characters of training text to sample at most")
    character_coverage: float = field(0.9999, help="SentencePiece character_coverage")
    seed: int = 42
    fertility_text: str | None = field(
        None, help="held-out text per language for the fertility report; {lang} or {flores} in the path"
    )
    fertility_languages: list[str] | None = field(None, help="languages to report (default: languages)")
    trust_remote_code: bool = field(False, help="allow custom tokenizer code from the base tokenizer's repository")
    check_lines: int = field(2000, help="lines on which the result must match SentencePiece and round-trip")
    pieces_per_language: dict[str, int] | None = field(
        None, help="train this many pieces for each language on its own text (instead of vocab_size over all)"
    )
    pre_tokenizer: Literal[PRE_TOKENIZER_MODES] = field(
        DEFAULT_PRE_TOKENIZER,
        help="byte-level BPE base: how words are split before BPE. qwen35 keeps vowel signs in words and numbers "
        "in digits, exactly as llama.cpp's qwen35 pre-tokenizer (GGUF/Ollama export works); keep_marks keeps "
        "Llama-3's 3-digit numbers (marginally fewer tokens; serve with transformers or vLLM only); base keeps "
        "the base's regex (vowel signs split: far less gain)",
    )
    holdout_fraction: float = field(
        0.1,
        help="byte-level BPE: share of the sampled lines set aside; a new token this text never produces "
        "(and no produced token is built from) is dropped",
    )


def _heldout_path(pattern: str, code: str) -> Path:
    lang = languages.get(code)
    shared = str(shared_data_dir())
    return Path(pattern.format(lang=lang.code, flores=lang.flores, shared=shared))


def _hf_tokenizer(proto, like_dir: str | None, trust_remote_code: bool):
    """A Hugging Face tokenizer that encodes exactly as the SentencePiece model (:func:`spm.exact_backend`),
    with the base's special tokens, settings and chat template."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "tokenizer.model").write_bytes(proto.SerializeToString())
        if like_dir is None:
            converted = LlamaTokenizer.from_pretrained(tmp, add_bos_token=True, add_eos_token=False)
        else:
            base = AutoTokenizer.from_pretrained(like_dir, trust_remote_code=trust_remote_code)
            base.save_pretrained(tmp)
            (Path(tmp) / "tokenizer.json").unlink(missing_ok=True)  # rebuilt from the merged model below
            converted = type(base).from_pretrained(tmp)
        converted.save_pretrained(tmp)
        exact = spm.exact_backend(converted.backend_tokenizer.to_str(), proto)
        (Path(tmp) / "tokenizer.json").write_text(exact, encoding="utf-8")
        settings = json.loads((Path(tmp) / "tokenizer_config.json").read_text(encoding="utf-8"))
        # the generic class keeps tokenizer.json's pipeline; LlamaTokenizer would rebuild its own
        settings["tokenizer_class"] = "PreTrainedTokenizerFast"
        (Path(tmp) / "tokenizer_config.json").write_text(json.dumps(settings, ensure_ascii=False), encoding="utf-8")
        return PreTrainedTokenizerFast.from_pretrained(tmp)


def disagreements(tokenizer, proto, lines: list[str]) -> set[int]:
    """Indices of the lines `tokenizer` encodes differently from the SentencePiece model `proto`."""
    processor = spm.processor(proto)
    encoded = tokenizer(lines, add_special_tokens=False)["input_ids"]
    return {i for i, (line, ids) in enumerate(zip(lines, encoded)) if ids != processor.encode(line)}


def lossy_lines(tokenizer, lines: list[str]) -> list[int]:
    """Indices of the lines `tokenizer` does not decode back to themselves."""
    encoded = tokenizer(lines, add_special_tokens=False)["input_ids"]
    return [i for i, (line, ids) in enumerate(zip(lines, encoded)) if tokenizer.decode(ids) != line]


def require_base_ids_kept(tokenizer, base) -> None:
    """Every token of `base` must keep its id in the extended `tokenizer`."""
    vocab = tokenizer.get_vocab()
    if any(vocab.get(token) != i for token, i in base.get_vocab().items()):
        raise RuntimeError("the extended tokenizer moved base ids; this is a bug, please report it")


def check(tokenizer, proto, lines: list[str]) -> None:
    """Every line must decode back to itself, and be encoded exactly as SentencePiece encodes it."""
    differ = sorted(disagreements(tokenizer, proto, lines))
    lossy = lossy_lines(tokenizer, lines)
    if differ or lossy:
        example = lines[(differ or lossy)[0]]
        raise RuntimeError(
            f"the new tokenizer ({type(tokenizer).__name__}) differs from its SentencePiece model on {len(differ)} of "
            f"{len(lines)} lines and does not decode {len(lossy)} back to themselves; first: {example[:80]!r}"
        )


def load_base(name: str, trust_remote_code: bool):
    """The base tokenizer and its SentencePiece model (None for a byte-level BPE base)."""
    path = Path(name)
    tiktoken_file = path if path.is_file() else path / "tokenizer.model"
    if (
        tiktoken_file.is_file()
        and not (path / "tokenizer.json").is_file()
        and bytelevel.is_tiktoken_file(tiktoken_file)
    ):
        return bytelevel.from_tiktoken(tiktoken_file), None
    base = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    try:
        model_file = cached_file(name, "tokenizer.model")
    except OSError:
        model_file = None
    if model_file is not None and not bytelevel.is_tiktoken_file(Path(model_file)):
        return base, spm.load(model_file)
    if bytelevel.is_byte_level_bpe(base):
        return base, None
    raise ValueError(
        f"{name} ({type(base).__name__}) is neither a SentencePiece tokenizer (tokenizer.model) nor a byte-level "
        "BPE tokenizer (tokenizer.json, or a tiktoken tokenizer.model); those are the two kinds this extends"
    )


def _set_aside(lines: list[str], holdout_fraction: float) -> tuple[list[str], list[str]]:
    """(lines to train on, every `1 / holdout_fraction`-th line set aside); nothing set aside at 0."""
    step = max(2, round(1 / holdout_fraction)) if holdout_fraction > 0 else 0
    return [line for i, line in enumerate(lines) if not step or i % step], [
        line for i, line in enumerate(lines) if step and i % step == 0
    ] or lines


def extend_byte_level(
    base,
    lines: list[str] | dict[str, list[str]],
    new_pieces: int | dict[str, int],
    check_lines: list[str],
    holdout_fraction: float,
    pre_tokenizer: str,
):
    """`base` (a fast byte-level BPE tokenizer) extended with BPE merges trained on `lines`; (tokenizer, added).

    Every `1 / holdout_fraction`-th line is set aside: the merges are trained on the others, and a new
    token must be produced on the set-aside lines to stay, so none is dead weight on unseen text.
    With ``lines`` and ``new_pieces`` given per language, each language gets a model of its own with its
    number of pieces, and their merges are taken in turn. `pre_tokenizer` is the regex mode
    (:data:`bytelevel.PRE_TOKENIZERS`).
    """
    if isinstance(lines, dict):
        split = {lang: _set_aside(lines[lang], holdout_fraction) for lang in new_pieces}
        merges = bytelevel.interleave(
            [
                bytelevel.merges_of(bytelevel.train(split[lang][0], n, base.backend_tokenizer, pre_tokenizer))
                for lang, n in new_pieces.items()
            ]
        )
        aside = [line for lang in new_pieces for line in split[lang][1]]
    else:
        train_lines, aside = _set_aside(lines, holdout_fraction)
        merges = bytelevel.train(train_lines, new_pieces, base.backend_tokenizer, pre_tokenizer)
    backend, added = bytelevel.extend(base.backend_tokenizer, merges, aside, pre_tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        base.save_pretrained(tmp)
        (Path(tmp) / "tokenizer.json").write_text(backend.to_str(), encoding="utf-8")
        tokenizer = AutoTokenizer.from_pretrained(tmp)
    require_base_ids_kept(tokenizer, base)
    lossy = lossy_lines(tokenizer, check_lines)
    if lossy:
        raise RuntimeError(
            f"the extended tokenizer does not decode {len(lossy)} of {len(check_lines)} lines back "
            f"to themselves; first: {check_lines[lossy[0]][:80]!r}"
        )
    return tokenizer, added


def heldout_texts(pattern: str | None, langs: list[str]) -> dict[str, list[str]]:
    texts = {}
    for code in langs if pattern else []:
        path = _heldout_path(pattern, code)
        if not path.is_file():
            raise FileNotFoundError(f"fertility_text for {code}: {path} does not exist")
        texts[languages.get(code).code] = [
            line for line in path.read_text(encoding="utf-8").split("\n") if line.strip()
        ]
    return texts


def verify(tokenizer, proto, base, lines: list[str]) -> None:
    """Check the result before anything is written."""
    if base is not None:
        require_base_ids_kept(tokenizer, base)
    check(tokenizer, proto, lines)


def training_text(config: TokenizerConfig) -> dict[str, list[str]]:
    """{"text": [...], "lang": [...]} from the prepared corpora and the plain-text files of the recipe."""
    if not config.train_data and not config.train_text:
        raise ValueError(
            "nothing to train on: set train_data (prepared corpora) or train_text (text files by language)"
        )
    texts: list[str] = []
    langs: list[str] = []
    if config.train_data:
        corpus = load_corpus(config.train_data, config.languages)
        texts, langs = corpus["text"], corpus["lang"]
    for lang, pattern in config.train_text.items():
        code = languages.get(lang).code
        files = sorted(glob.glob(os.path.expandvars(pattern), recursive=True))
        if not files:
            raise FileNotFoundError(f"train_text for {lang}: no file matches {pattern!r}")
        for file in files:
            lines = [line for line in Path(file).read_text(encoding="utf-8").splitlines() if line.strip()]
            texts, langs = [*texts, *lines], [*langs, *[code] * len(lines)]
    return {"text": texts, "lang": langs}


def _lines_per_language(corpus, targets: dict[str, int]) -> dict[str, list[str]]:
    texts: dict[str, list[str]] = {lang: [] for lang in targets}
    for text, lang in zip(corpus["text"], corpus["lang"]):
        if lang in texts:
            texts[lang].extend(line for line in text.split("\n") if line.strip())
    empty = [lang for lang, lines in texts.items() if not lines]
    if empty:
        raise ValueError(f"pieces_per_language names {', '.join(empty)}, but train_data has no text in it")
    return texts


def build(config: TokenizerConfig) -> dict:
    corpus = training_text(config)
    lines, taken = spm.sample_lines(
        corpus["text"], corpus["lang"], config.temperature, config.max_characters, config.seed
    )
    base, base_proto = (
        load_base(config.base_tokenizer, config.trust_remote_code) if config.base_tokenizer else (None, None)
    )
    heldout = heldout_texts(config.fertility_text, config.fertility_languages or config.languages or sorted(taken))
    check_lines = (lines + [line for texts in heldout.values() for line in texts])[: config.check_lines]
    targets = {languages.get(k).code: n for k, n in (config.pieces_per_language or {}).items()}
    per_language = _lines_per_language(corpus, targets) if targets else None
    if base is not None and base_proto is None:
        tokenizer, added = extend_byte_level(
            base,
            per_language or lines,
            targets or config.vocab_size,
            check_lines,
            config.holdout_fraction,
            config.pre_tokenizer,
        )
        proto = None
    else:
        if config.pre_tokenizer != DEFAULT_PRE_TOKENIZER:
            raise ValueError(
                f"pre_tokenizer: {config.pre_tokenizer} is for byte-level BPE bases; a SentencePiece tokenizer has "
                "no pre-tokenizer regex (remove the key)"
            )
        if per_language and base is None:
            raise ValueError("pieces_per_language needs a base_tokenizer to extend; use vocab_size for a new one")
        # One model per language, merged in turn (languages rarely share pieces), or one over all the lines.
        jobs = [(per_language[lang], n) for lang, n in targets.items()] or [(lines, config.vocab_size)]
        proto, added = base_proto, []
        for job_lines, pieces in jobs:
            trained = spm.train(
                job_lines, pieces, model_type=config.model_type, character_coverage=config.character_coverage
            )
            proto, more = spm.merge(proto, trained) if proto is not None else (trained, [])
            added += more
        tokenizer = _hf_tokenizer(proto, config.base_tokenizer, config.trust_remote_code)
        verify(tokenizer, proto, base, check_lines)

    report = {}
    for code, texts in heldout.items():
        report[code] = {"base": fertility(base, texts)} if base is not None else {}
        report[code]["extended" if base is not None else "tokenizer"] = fertility(tokenizer, texts)
    summary = {
        "base_tokenizer": config.base_tokenizer,
        "vocab_size": len(tokenizer),
        "added_tokens": len(added),
        "training_characters": taken,
        "checked_lines": len(check_lines),
        "fertility": report,
    }
    vocab = tokenizer.get_vocab()
    new_ids = [{"id": vocab[t], "token": t} for t in added]
    with atomic_directory(config.output_dir) as partial:
        tokenizer.save_pretrained(partial)
        if proto is not None:
            (partial / "tokenizer.model").write_bytes(proto.SerializeToString())
        (partial / "new_tokens.json").write_text(json.dumps(new_ids, ensure_ascii=False, indent=0))
        (partial / "fertility.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
        (partial / "fertility.md").write_text(fertility_table(report) if report else "no fertility_text given\n")
        (partial / "recipe.yaml").write_text(yaml.safe_dump(to_dict(config), allow_unicode=True, sort_keys=False))
    return summary

"""Export a trained checkpoint for serving: a merged Hugging Face folder (vLLM), GGUF files (llama.cpp) and
an Ollama Modelfile, or a refusal that says why.

    OUT/hf/                 merged safetensors (sharded), tokenizer, chat template, generation_config.json,
                            lineage.json, README.md (model card with the leaderboard's scores of these bytes)
    OUT/NAME-f16.gguf       llama.cpp's converter; NAME-q8_0.gguf, NAME-Q4_K_M.gguf from its quantizer
    OUT/Modelfile           FROM, TEMPLATE (the chat template in Go), stop tokens, parameters
    OUT/export.json         what was checked and written, with each file's sha256

A GGUF is written only when llama.cpp tokenizes the check set exactly as the Hugging Face tokenizer does
(``indictune.export.parity``): first on a vocabulary-only GGUF, before the weights are touched, so a
refusal costs seconds; then on the written file itself. The output folder is replaced as a whole, so a
refused or interrupted export leaves the previous one in place.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from indictune.core.hashing import files_sha256
from indictune.core.io import MANIFEST, atomic_directory, atomic_write_text
from indictune.core.lineage import code_commit
from indictune.core.log import get_logger
from indictune.core.recipe import RecipeError, field
from indictune.export import gguf, ollama, parity, template
from indictune.export.hf import (
    ExportError,
    generation_config,
    leaderboard_run,
    lineage_of,
    load_merged,
    load_tokenizer,
    model_card,
    tokenizer_folder,
    vocabulary,
)
from indictune.training.lineage import local_model_folder
from indictune.training.tokenizer import spm

logger = get_logger("export")
FORMATS = ("hf", "gguf", "ollama")


class ExportRefused(ExportError):
    """llama.cpp would not tokenize as training did: no GGUF is written."""


@dataclass
class ExportConfig:
    model: str = field(help="a merged model folder, or the base model the adapter was trained on (safetensors)")
    output_dir: str = field(help="where the export is written (replaced as a whole)")
    adapter: str | None = field(None, help="a LoRA adapter folder (train.py's output_dir) to merge into the model")
    formats: list[str] = field(default_factory=lambda: list(FORMATS), help="any of hf, gguf, ollama")
    name: str | None = field(None, help="file name stem of the GGUF files (default: the output folder's name)")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = field(
        "auto", help="dtype of the merged weights (auto: as the model stores them)"
    )
    max_shard_size: str = field("5GB", help="safetensors shard size of hf/")
    gguf_type: Literal["f32", "f16", "bf16"] = field("f16", help="type of the converted GGUF")
    quantize: list[str] = field(
        default_factory=lambda: list(gguf.QUANTIZED_TYPES), help="quantized GGUFs to make from it: q8_0, Q4_K_M"
    )
    ollama_gguf: str | None = field(
        None, help="the GGUF the Modelfile uses: a gguf_type or quantize entry (default: the last quantized one)"
    )
    context_length: int | None = field(
        None, minimum=1, help="Ollama num_ctx (default: the model's max_position_embeddings, at most 8192)"
    )
    check_text: str | None = field(
        parity.DEFAULT_CHECK_TEXT,
        help="held-out text per language for the tokenizer parity check ({lang}, "
        "{flores}, {shared} in the path); languages without a file are skipped unless check_languages names them",
    )
    check_languages: list[str] | None = field(None, help="languages the check text must cover (default: any found)")
    llama_cpp: str | None = field(
        None, help="a llama.cpp checkout to take convert_hf_to_gguf.py from (default: llama-cpp-python's pinned sdist)"
    )
    leaderboard: str = field("runs/leaderboard.sqlite", help="the store whose scores of these weights the card shows")
    trust_remote_code: bool = field(False, help="allow custom model code from the model's folder")

    def __post_init__(self):
        unknown = sorted(set(self.formats) - set(FORMATS))
        if unknown:
            raise RecipeError(f"formats: {unknown} are not export formats; choose from {', '.join(FORMATS)}")
        if "ollama" in self.formats and "gguf" not in self.formats:
            raise RecipeError("formats: ollama needs gguf too (the Modelfile points at the GGUF)")
        bad = sorted(set(self.quantize) - set(gguf.QUANTIZED_TYPES))
        if bad:
            raise RecipeError(f"quantize: {bad} are not made here; choose from {', '.join(gguf.QUANTIZED_TYPES)}")
        if self.ollama_gguf is not None and self.ollama_gguf not in [self.gguf_type, *self.quantize]:
            raise RecipeError(f"ollama_gguf: {self.ollama_gguf} is neither gguf_type nor in quantize")


def _refusal(report: parity.ParityReport, pre_type: str | None) -> str:
    how = f"as llama.cpp's {pre_type} pre-tokenizer" if pre_type else "from tokenizer.model (SentencePiece)"
    hint = (
        " llama.cpp encodes exactly as the SentencePiece model does; transformers' LlamaTokenizer departs from "
        "it on runs of spaces, a leading space and text after a special token. Tokenizers made by "
        "scripts/extend_tokenizer.py encode as SentencePiece does: extend (or rebuild) the tokenizer with it."
        if pre_type is None
        else ""
    )
    return f"no GGUF written: read {how}, {report.summary()}.{hint}"


def _vocabulary_gguf(tokenizer, model_dir: Path, folder: Path, pre_type, converter: Path) -> Path:
    """A GGUF of the tokenizer alone (config.json and tokenizer files, no weights): seconds to make."""
    folder.mkdir()
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    config["vocab_size"] = max(config.get("vocab_size") or 0, len(tokenizer))
    (folder / "config.json").write_text(json.dumps(config))
    spm.save_tokenizer(tokenizer, folder)
    return gguf.convert(folder, folder / "vocab.gguf", "f16", pre_type, converter, vocab_only=True)


def _check(tokenizer, gguf_file: Path, sets: dict, pre_type) -> parity.ParityReport:
    report = parity.tokenizer_parity(tokenizer, gguf_file, sets)
    if not report.equal:
        raise ExportRefused(_refusal(report, pre_type))
    return report


def export(config: ExportConfig) -> dict:
    """Write the export of `config.model` (+ `config.adapter`) to `config.output_dir`; returns export.json."""
    model_dir = local_model_folder(config.model)
    if model_dir is None or not (model_dir / "config.json").is_file():
        raise ExportError(f"model: {config.model} is neither a model folder nor a hub id in the local cache")
    adapter_dir = Path(config.adapter) if config.adapter else None
    if adapter_dir is not None and not (adapter_dir / "adapter_config.json").is_file():
        raise ExportError(f"adapter: {adapter_dir} has no adapter_config.json; give train.py's output_dir")
    tokenizer_dir = tokenizer_folder(model_dir, adapter_dir)
    tokenizer = load_tokenizer(tokenizer_dir, config.trust_remote_code)
    try:
        layout = template.layout(tokenizer) if tokenizer.chat_template else None
    except template.TemplateLayoutError as err:
        if "ollama" in config.formats:
            raise ExportError(f"Modelfile: the chat template of {tokenizer_dir} cannot be translated: {err}") from None
        layout = None
    name = config.name or Path(config.output_dir).resolve().name
    summary: dict = {"model": str(model_dir), "adapter": str(adapter_dir) if adapter_dir else None, "files": {}}
    want_gguf = "gguf" in config.formats

    protected = [p for p in (model_dir, adapter_dir) if p is not None]
    with atomic_directory(config.output_dir, protected=protected) as partial:
        if want_gguf:
            gguf.llama_cpp()
            converter = gguf.converter_dir(config.llama_cpp)
            pre_type = gguf.pre_tokenizer_type(tokenizer_dir)
            sets = parity.check_texts(tokenizer, config.check_text, config.check_languages)
            logger.info("checking that llama.cpp tokenizes %d lines as training did", sum(map(len, sets.values())))
            _check(
                tokenizer,
                _vocabulary_gguf(tokenizer, model_dir, partial / "vocab", pre_type, converter),
                sets,
                pre_type,
            )
            shutil.rmtree(partial / "vocab")

        logger.info("loading %s%s", model_dir, f" and merging {adapter_dir}" if adapter_dir else "")
        dtype = config.dtype if config.dtype == "auto" else getattr(torch, config.dtype)
        model = load_merged(model_dir, adapter_dir, tokenizer, dtype, config.trust_remote_code)
        summary["vocabulary"] = vocabulary(model, tokenizer)
        generation = generation_config(model, tokenizer, model_dir, layout)
        hf_dir = partial / "hf"
        model.save_pretrained(hf_dir, max_shard_size=config.max_shard_size)
        spm.save_tokenizer(tokenizer, hf_dir)
        generation.save_pretrained(hf_dir)
        lineage = {
            **lineage_of(model_dir, adapter_dir),
            "exported_from": {"model": str(model_dir), "adapter": str(adapter_dir) if adapter_dir else None},
            "export_code_commit": code_commit(),
        }
        atomic_write_text(hf_dir / "lineage.json", json.dumps(lineage, indent=2, ensure_ascii=False) + "\n")
        max_positions = getattr(model.config, "max_position_embeddings", None)
        del model

        gguf_files: dict[str, Path] = {}
        if want_gguf:
            logger.info("converting to GGUF (%s)", config.gguf_type)
            converted = partial / f"{name}-{config.gguf_type}.gguf"
            gguf_files[config.gguf_type] = gguf.convert(hf_dir, converted, config.gguf_type, pre_type, converter)
            summary["tokenizer_parity"] = _check(tokenizer, converted, sets, pre_type).to_dict()
            summary["tokenizer_parity"]["pre_tokenizer"] = pre_type or "sentencepiece"
            for kind in config.quantize:
                logger.info("quantizing to %s", kind)
                gguf_files[kind] = gguf.quantize(converted, partial / f"{name}-{kind}.gguf", kind)
        if "ollama" in config.formats:
            chosen = config.ollama_gguf or (config.quantize[-1] if config.quantize else config.gguf_type)
            # llama.cpp adds BOS itself where the tokenizer does (the parity check compared that)
            adds_bos = tokenizer.bos_token_id is not None and tokenizer("x")["input_ids"][:1] == [
                tokenizer.bos_token_id
            ]
            found = ollama.without_bos(layout, tokenizer.bos_token if adds_bos else None) if layout else None
            stop = [tokenizer.convert_ids_to_tokens(i) for i in generation.eos_token_id]
            context = config.context_length or min(max_positions or 8192, 8192)
            text = ollama.modelfile(gguf_files[chosen].name, found, stop, generation.to_dict(), context)
            (partial / "Modelfile").write_text(text, encoding="utf-8")

        card = model_card(
            name,
            lineage,
            leaderboard_run(Path(config.leaderboard), model_dir, adapter_dir),
            summary["vocabulary"],
            [p.name for p in gguf_files.values()],
        )
        (hf_dir / "README.md").write_text(card, encoding="utf-8")
        if "hf" not in config.formats:
            shutil.rmtree(hf_dir)
        written = [p for p in sorted(partial.rglob("*")) if p.is_file() and p.name != MANIFEST]
        summary["files"] = {str(p.relative_to(partial)): digest for p, digest in zip(written, files_sha256(written))}
        (partial / "export.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return summary

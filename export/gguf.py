"""GGUF files through llama.cpp's own converter and quantizer, at the version llama-cpp-python pins.

llama.cpp never reads a tokenizer's regex: it runs one written in C++ for each pre-tokenizer type it
knows, chosen by the GGUF's ``tokenizer.ggml.pre``. So a byte-level tokenizer is exported only if its
regex and merge rule are those of a type llama.cpp implements (:data:`LLAMA_CPP_PRE_TYPES`), with that
type written explicitly, and only after llama.cpp has been shown to tokenize the check set as the
Hugging Face tokenizer does (``indictune.export.parity``). SentencePiece tokenizers go through the
converter's ``tokenizer.model`` path, which has no pre-tokenizer.

The converter (``convert_hf_to_gguf.py``, its ``conversion`` package and ``gguf-py``) ships in the
llama-cpp-python source distribution, not in its wheel: it is taken from the sdist of the pinned
version and kept under the cache, so converter and runtime are the same llama.cpp.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from indictune.core.paths import cache_root
from indictune.training.tokenizer.bytelevel import LLAMA3_REGEX, QWEN2_REGEX, QWEN35_REGEX, split_regexes

LLAMA_CPP_PYTHON = "0.3.36"
CONVERTER_FILES = ("convert_hf_to_gguf.py", "conversion", "gguf-py")

# (pre-tokenizer regexes, ignore_merges) of a tokenizer.json -> the llama.cpp type that runs exactly that.
# From llama.cpp's src/llama-vocab.cpp at the pinned version: llama-bpe is LLAMA3 with ignore_merges,
# smaug-bpe the same regex without it, qwen2 and qwen35 their regexes without it.
LLAMA_CPP_PRE_TYPES = {
    ((LLAMA3_REGEX,), True): "llama-bpe",
    ((LLAMA3_REGEX,), False): "smaug-bpe",
    ((QWEN2_REGEX,), False): "qwen2",
    ((QWEN35_REGEX,), False): "qwen35",
}

# What llama_model_quantize makes, by the names llama.cpp's quantize tool uses.
QUANTIZED_TYPES = {"q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}


class GGUFError(RuntimeError):
    """A model that cannot be exported to GGUF as asked; the message says why and what to do."""


def llama_cpp():
    """The llama_cpp module at the pinned version, or GGUFError saying how to install it."""
    install = (
        f'pip install "llama-cpp-python=={LLAMA_CPP_PYTHON}" (builds llama.cpp from source, several minutes; '
        'CMAKE_ARGS="-DGGML_CUDA=on" for CUDA)'
    )
    try:
        import llama_cpp as module
    except ImportError:
        raise GGUFError(f"GGUF export needs llama-cpp-python: {install}") from None
    if module.__version__ != LLAMA_CPP_PYTHON:
        raise GGUFError(
            f"llama-cpp-python {module.__version__} is installed; the converter and the parity check are pinned "
            f"to {LLAMA_CPP_PYTHON}: {install}"
        )
    return module


def _pip_download_sdist(into: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--dest", str(into)]
    result = subprocess.run(
        [*command, f"llama-cpp-python=={LLAMA_CPP_PYTHON}"], capture_output=True, text=True, check=False
    )
    found = sorted(into.glob("llama_cpp_python-*.tar.gz"))
    if result.returncode != 0 or not found:
        raise GGUFError(
            f"could not download the llama-cpp-python {LLAMA_CPP_PYTHON} source for its converter "
            f"({result.stderr.strip().splitlines()[-1:] or 'no error text'}); pass --llama_cpp DIR, a llama.cpp "
            f"checkout at the version llama-cpp-python {LLAMA_CPP_PYTHON} vendors"
        )
    return found[0]


def converter_dir(source: str | None = None) -> Path:
    """The folder holding ``convert_hf_to_gguf.py``: `source` if given, else the pinned sdist's copy under
    the cache (downloaded and unpacked the first time)."""
    if source:
        folder = Path(source)
        if not (folder / "convert_hf_to_gguf.py").is_file():
            raise GGUFError(f"llama_cpp: {folder} has no convert_hf_to_gguf.py; give a llama.cpp checkout")
        return folder
    folder = cache_root() / "llama.cpp" / LLAMA_CPP_PYTHON
    if all((folder / name).exists() for name in CONVERTER_FILES):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        sdist = _pip_download_sdist(Path(tmp))
        unpacked = Path(tmp) / "converter"
        with tarfile.open(sdist) as archive:
            prefix = f"{sdist.name.removesuffix('.tar.gz')}/vendor/llama.cpp/"
            members = [
                m
                for m in archive.getmembers()
                if m.name.startswith(prefix) and m.name[len(prefix) :].split("/")[0] in CONVERTER_FILES
            ]
            for member in members:
                member.name = member.name[len(prefix) :]
            # the "data" filter refuses links and paths out of the folder (Pythons from 3.10.12 have it)
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            archive.extractall(unpacked, members=members, **safe)
        shutil.rmtree(folder, ignore_errors=True)
        os.rename(unpacked, folder)  # whole or not at all: a crash leaves nothing half-unpacked there
    return folder


def pre_tokenizer_type(tokenizer_dir: Path) -> str | None:
    """The llama.cpp pre-tokenizer type of the byte-level tokenizer in `tokenizer_dir`; None for a
    SentencePiece one (``tokenizer.model``); GGUFError if llama.cpp implements none that matches."""
    spec_file = tokenizer_dir / "tokenizer.json"
    spec = json.loads(spec_file.read_text(encoding="utf-8")) if spec_file.is_file() else None
    if spec is None or spec["model"]["type"] != "BPE" or "ByteLevel" not in json.dumps(spec.get("pre_tokenizer")):
        if (tokenizer_dir / "tokenizer.model").is_file():
            return None
        raise GGUFError(
            f"{tokenizer_dir} has no tokenizer.model, and its tokenizer.json is not byte-level BPE: llama.cpp reads a "
            "SentencePiece tokenizer from tokenizer.model only; copy the one the tokenizer was built with there"
        )
    regexes = tuple(split_regexes(spec.get("pre_tokenizer")))
    key = (regexes, bool(spec["model"].get("ignore_merges", False)))
    if key in LLAMA_CPP_PRE_TYPES:
        return LLAMA_CPP_PRE_TYPES[key]
    raise GGUFError(
        f"llama.cpp implements no pre-tokenizer that splits text as this tokenizer does (regex {list(regexes)!r}, "
        f"ignore_merges {key[1]}): a GGUF would feed the model token sequences it never saw in training. Extend "
        "the tokenizer with pre_tokenizer: qwen35 (or base) to serve it through llama.cpp or Ollama, or serve "
        "this one with vLLM from the hf/ folder"
    )


def convert(
    model_dir: Path, outfile: Path, outtype: str, pre_type: str | None, converter: Path, vocab_only: bool = False
) -> Path:
    """`model_dir` (a Hugging Face folder) converted to `outfile` by llama.cpp's converter."""
    command = [sys.executable, "-m", "indictune.export.convert", str(converter), pre_type or "-", str(model_dir)]
    command += ["--outfile", str(outfile), "--outtype", outtype] + (["--vocab-only"] if vocab_only else [])
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not outfile.is_file():
        tail = "\n".join(result.stderr.strip().splitlines()[-15:])
        raise GGUFError(f"llama.cpp's convert_hf_to_gguf.py failed on {model_dir}:\n{tail}")
    return outfile


def quantize(source: Path, outfile: Path, kind: str) -> Path:
    """`source` (an f16/f32 GGUF) quantized to `kind` by llama.cpp's quantizer."""
    module = llama_cpp()
    params = module.llama_model_quantize_default_params()
    params.ftype = getattr(module, QUANTIZED_TYPES[kind])
    status = module.llama_model_quantize(str(source).encode(), str(outfile).encode(), params)
    if status != 0 or not outfile.is_file():
        raise GGUFError(f"llama.cpp's quantizer failed to make {kind} from {source} (status {status})")
    return outfile

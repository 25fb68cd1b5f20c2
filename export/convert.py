"""Run llama.cpp's ``convert_hf_to_gguf.py`` with the pre-tokenizer type named instead of guessed.

    python -m indictune.export.convert CONVERTER_DIR PRE_TYPE [converter arguments ...]

The converter names a byte-level tokenizer's pre-tokenizer by hashing the ids it gives one test string,
and a tokenizer whose ids on that string collide with a known model's gets that model's type whatever
its regex (an extended Llama-3 tokenizer is labelled ``smaug-bpe``). indictune.export.gguf decides the
type from the regex itself and passes it here; ``-`` leaves the converter's own choice (SentencePiece
tokenizers have no pre-tokenizer). Run in its own process: the converter puts its own ``gguf`` package
first on ``sys.path``.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path


def main() -> None:
    converter_dir, pre_type, *arguments = sys.argv[1:]
    converter_dir = Path(converter_dir)
    sys.path[:0] = [str(converter_dir), str(converter_dir / "gguf-py")]
    if pre_type != "-":
        from conversion.base import TextModel

        TextModel.get_vocab_base_pre = lambda self, tokenizer: pre_type
    script = converter_dir / "convert_hf_to_gguf.py"
    sys.argv = [str(script), *arguments]
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()

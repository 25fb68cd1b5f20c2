"""Does llama.cpp see what training saw? Token ids on a check set, then logits and greedy output.

Tokens: the Hugging Face tokenizer and llama.cpp (through llama-cpp-python, on a GGUF) must give the same
ids for every line of held-out text in every language there is text for (FLORES dev by default, and the
sample text shipped with indictune), for a line holding every special token, and for the chat template's
output on a few conversations. Both parse special tokens in text, as servers do with a rendered prompt,
and neither adds BOS/EOS here; whether each adds BOS by itself is compared once, separately.

Outputs: the same prompt's next-token logits from transformers and from llama.cpp, and greedy
continuations, token for token. See ``tests/test_export.py`` for the tolerances and why.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from indictune.core import languages
from indictune.core.paths import shared_data_dir
from indictune.export import template
from indictune.export.gguf import llama_cpp

SAMPLE_HELDOUT = Path(__file__).resolve().parent.parent / "data" / "sample" / "heldout"
DEFAULT_CHECK_TEXT = "{shared}/flores200/dev/{flores}.dev"


@dataclass
class ParityReport:
    """Lines checked and lines that differ, per check set; the first difference of each."""

    checked: dict[str, int] = field(default_factory=dict)
    differ: dict[str, int] = field(default_factory=dict)
    first: dict[str, dict] = field(default_factory=dict)

    @property
    def equal(self) -> bool:
        return not any(self.differ.values())

    def summary(self) -> str:
        bad = {name: n for name, n in self.differ.items() if n}
        if not bad:
            return f"equal on all {sum(self.checked.values())} lines of {len(self.checked)} check sets"
        worst = max(bad, key=bad.get)
        example = self.first[worst]
        return (
            f"llama.cpp tokenizes {sum(bad.values())} of {sum(self.checked.values())} check lines differently from "
            f"the Hugging Face tokenizer ({', '.join(f'{k}: {v}/{self.checked[k]}' for k, v in bad.items())}); "
            f"e.g. {example['text'][:60]!r}: Hugging Face {example['hf'][:12]}..., llama.cpp {example['gguf'][:12]}..."
        )

    def to_dict(self) -> dict:
        return {"equal": self.equal, "checked": self.checked, "differ": self.differ, "first_difference": self.first}


def check_texts(tokenizer, pattern: str | None = DEFAULT_CHECK_TEXT, langs: list[str] | None = None) -> dict:
    """{check set: lines}: held-out text per language (`pattern` with {lang}, {flores} or {shared}; every
    language of the table whose file exists, or `langs`), the shipped sample, special tokens, chat turns."""
    sets: dict[str, list[str]] = {}
    for lang in [languages.get(code) for code in langs] if langs else languages.LANGUAGES:
        if pattern is None or lang.flores is None:
            continue
        path = Path(pattern.format(lang=lang.code, flores=lang.flores, shared=shared_data_dir()))
        if path.is_file():
            sets[f"text:{lang.code}"] = [line for line in path.read_text(encoding="utf-8").splitlines() if line]
        elif langs:
            raise FileNotFoundError(f"check text for {lang.code}: {path} does not exist")
    for path in sorted(SAMPLE_HELDOUT.glob("*.txt")):
        sets[f"sample:{path.stem}"] = [line for line in path.read_text(encoding="utf-8").splitlines() if line]
    specials = sorted({*tokenizer.all_special_tokens, *(t.content for t in tokenizer.added_tokens_decoder.values())})
    sets["special tokens"] = [" ".join(specials), "नमस्ते" + "".join(specials) + " world"]
    if getattr(tokenizer, "chat_template", None):
        sets["chat template"] = [template.render(tokenizer, m, True) for m in template.CHECK_CONVERSATIONS]
    return sets


@contextlib.contextmanager
def _quiet_stderr():
    """llama.cpp logs to the C stderr whatever `verbose` says: keep it off the user's terminal."""
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def load(gguf_file: Path, **settings):
    """A llama_cpp.Llama on `gguf_file`, quietly."""
    with _quiet_stderr():
        return llama_cpp().Llama(model_path=str(gguf_file), verbose=False, **settings)


def tokenizer_parity(tokenizer, gguf_file: Path, sets: dict[str, list[str]]) -> ParityReport:
    """Compare the ids of every line of `sets` (see :func:`check_texts`); `gguf_file` may be vocabulary only."""
    model = load(gguf_file, vocab_only=True)
    report = ParityReport()
    for name, lines in sets.items():
        ours = tokenizer(lines, add_special_tokens=False)["input_ids"]
        differ = 0
        for line, ids in zip(lines, ours):
            theirs = model.tokenize(line.encode("utf-8"), add_bos=False, special=True)
            if theirs != ids:
                differ += 1
                report.first.setdefault(name, {"text": line, "hf": ids, "gguf": theirs})
        report.checked[name], report.differ[name] = len(lines), differ
    line = next(iter(sets.values()))[0]
    hf_with = tokenizer(line)["input_ids"]
    gguf_with = model.tokenize(line.encode("utf-8"), add_bos=True, special=True)
    report.checked["BOS/EOS added"] = 1
    report.differ["BOS/EOS added"] = int(hf_with != gguf_with)
    if hf_with != gguf_with:
        report.first["BOS/EOS added"] = {"text": line, "hf": hf_with, "gguf": gguf_with}
    model.close()
    return report


def hf_logits(model, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def gguf_logits(llm, ids: list[int]) -> np.ndarray:
    """Logits at every position of `ids` (the Llama must be loaded with logits_all=True)."""
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def hf_greedy(model, ids: list[int], n: int) -> list[int]:
    """`n` tokens chosen by argmax, end of text or not, so both sides are compared over the same length."""
    import torch

    out = list(ids)
    with torch.no_grad():
        for _ in range(n):
            out.append(int(model(torch.tensor([out]), logits_to_keep=1).logits[0, -1].argmax()))
    return out[len(ids) :]


def gguf_greedy(llm, ids: list[int], n: int) -> list[int]:
    """As :func:`hf_greedy`, in llama.cpp, feeding each chosen token back through its KV cache."""
    llm.reset()
    llm.eval(ids)
    out = []
    for _ in range(n):
        out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval(out[-1:])
    return out


def output_parity(model, llm, ids: list[int], n: int = 32) -> dict:
    """How far llama.cpp's logits are from transformers' on `ids`, and both greedy continuations."""
    ours, theirs = hf_logits(model, ids), gguf_logits(llm, ids)
    return {
        "max_abs_logit_difference": float(np.abs(ours - theirs).max()),
        "logit_scale": float(np.abs(ours).max()),
        "hf_greedy": hf_greedy(model, ids, n),
        "gguf_greedy": gguf_greedy(llm, ids, n),
    }

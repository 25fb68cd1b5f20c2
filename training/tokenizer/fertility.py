"""Fertility: how many tokens a tokenizer spends on a language's text.

Tokens per word (words split on whitespace, the convention of published fertility tables), bytes and
characters per token. Measured on held-out text, per language, so base and extended tokenizers can be
compared on the same sentences.
"""

from __future__ import annotations

from collections.abc import Iterable


def fertility(tokenizer, texts: Iterable[str]) -> dict[str, float]:
    texts = [t for t in texts if t.strip()]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    tokens = sum(map(len, encoded))
    words = sum(len(t.split()) for t in texts)
    characters = sum(map(len, texts))
    utf8_bytes = sum(len(t.encode("utf-8")) for t in texts)
    return {
        "tokens_per_word": tokens / words if words else 0.0,
        "bytes_per_token": utf8_bytes / tokens if tokens else 0.0,
        "characters_per_token": characters / tokens if tokens else 0.0,
        "tokens": tokens,
        "words": words,
    }


def fertility_table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    """Markdown for {lang: {tokenizer label: fertility()}}, with the change in tokens per word."""
    labels = list(next(iter(results.values())).keys()) if results else []
    header = "| language | " + " | ".join(f"{label} tokens/word" for label in labels)
    lines = [
        header + (" | change |" if len(labels) == 2 else " |"),
        "|---|" + "---:|" * (len(labels) + (len(labels) == 2)),
    ]
    for lang, by_label in results.items():
        values = [by_label[label]["tokens_per_word"] for label in labels]
        cells = " | ".join(f"{v:.2f}" for v in values)
        change = f" | {100 * (values[1] / values[0] - 1):+.1f}%" if len(values) == 2 and values[0] else ""
        lines.append(f"| {lang} | {cells}{change} |")
    return "\n".join(lines) + "\n"

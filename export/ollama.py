"""An Ollama Modelfile for the exported GGUF: the chat template as a Go template, stop tokens, parameters.

The template comes from :mod:`indictune.export.template` (read off the Jinja template and checked
against it). Where the GGUF adds BOS by itself, the BOS text the Jinja template starts with is left out
of the Go template, so the model does not see two.
"""

from __future__ import annotations

import json

from indictune.export.hf import ExportError
from indictune.export.template import ChatLayout, ollama_template


def without_bos(found: ChatLayout, bos_text: str | None) -> ChatLayout:
    """`found` with a leading `bos_text` removed from its openings."""
    if not bos_text:
        return found
    opening = {role: text.removeprefix(bos_text) for role, text in found.opening.items()}
    return ChatLayout(opening, found.between, found.reply, found.closing)


def _quoted(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def modelfile(
    gguf_name: str, found: ChatLayout | None, stop: list[str], generation: dict, context_length: int | None
) -> str:
    """The Modelfile text: FROM the GGUF beside it, TEMPLATE, a stop PARAMETER per end-of-turn token, and
    the generation config's sampling settings."""
    lines = [f"FROM ./{gguf_name}"]
    if found is not None:
        template = ollama_template(found)
        if '"""' in template:
            raise ExportError('the chat template contains """, which ends a Modelfile TEMPLATE; Ollama cannot take it')
        lines.append(f'TEMPLATE """{template}"""')
    lines += [f"PARAMETER stop {_quoted(token)}" for token in stop]
    settings = {
        "temperature": "temperature",
        "top_p": "top_p",
        "top_k": "top_k",
        "repetition_penalty": "repeat_penalty",
    }
    for key, name in settings.items():
        if generation.get(key) is not None and generation.get("do_sample", True):
            lines.append(f"PARAMETER {name} {generation[key]}")
    if context_length:
        lines.append(f"PARAMETER num_ctx {context_length}")
    return "\n".join(lines) + "\n"

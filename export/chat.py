"""Talk to a checkpoint or a merged model on this machine through its chat template, replies streamed.

    python scripts/chat.py --model DIR [--adapter DIR] [--system "..."] [--temperature 0]

Each line read is a user turn; the reply is printed as it is generated and joins the conversation, so
the next prompt is the whole exchange rendered by the model's own template. A reply ends at any end-of-
turn id the export would write into generation_config.json. ``/reset`` starts over.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from transformers import TextIteratorStreamer

from indictune.core.recipe import field
from indictune.export import template
from indictune.export.hf import ExportError, generation_config, load_merged, load_tokenizer, tokenizer_folder


@dataclass
class ChatConfig:
    model: str = field(help="a model folder (merged, or the base of the adapter)")
    adapter: str | None = field(None, help="a LoRA adapter folder, merged in memory")
    system: str | None = field(None, help="a system message opening the conversation")
    max_new_tokens: int = field(512, minimum=1, help="longest reply")
    temperature: float = field(0.7, minimum=0.0, help="0: greedy")
    top_p: float = field(0.9, minimum=0.0, maximum=1.0)
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    trust_remote_code: bool = False


class Chat:
    """A model, its tokenizer and the conversation so far."""

    def __init__(self, config: ChatConfig):
        model_dir = Path(config.model)
        adapter_dir = Path(config.adapter) if config.adapter else None
        self.config = config
        self.tokenizer = load_tokenizer(tokenizer_folder(model_dir, adapter_dir), config.trust_remote_code)
        if not self.tokenizer.chat_template:
            raise ExportError(f"{model_dir} has no chat template to talk through; evaluate it instead (evaluate.py)")
        dtype = config.dtype if config.dtype == "auto" else getattr(torch, config.dtype)
        self.model = load_merged(model_dir, adapter_dir, self.tokenizer, dtype, config.trust_remote_code).eval()
        layout = template.layout(self.tokenizer)
        self.stop_ids = generation_config(self.model, self.tokenizer, model_dir, layout).eos_token_id
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.config.system}] if self.config.system else []

    def reply(self, text: str, write: Callable[[str], None]) -> str:
        """Add the user's `text`, generate the reply with each piece passed to `write`; returns the reply."""
        self.messages.append({"role": "user", "content": text})
        inputs = self.tokenizer.apply_chat_template(
            self.messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        sampling = {"do_sample": False}
        if self.config.temperature > 0:
            sampling = {"do_sample": True, "temperature": self.config.temperature, "top_p": self.config.top_p}
        output: list[torch.Tensor] = []
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.stop_ids[0]
        settings = dict(
            **inputs,
            **sampling,
            streamer=streamer,
            max_new_tokens=self.config.max_new_tokens,
            eos_token_id=self.stop_ids,
            pad_token_id=pad,
        )
        worker = threading.Thread(target=lambda: output.append(self.model.generate(**settings)))
        worker.start()
        for piece in streamer:
            write(piece)
        worker.join()
        if not output:
            raise RuntimeError("generation failed; see the error above")
        new_ids = output[0][0, inputs["input_ids"].shape[1] :].tolist()
        answer = self.tokenizer.decode(new_ids, skip_special_tokens=True)
        self.messages.append({"role": "assistant", "content": answer})
        return answer


def talk(config: ChatConfig, lines: Iterable[str], write: Callable[[str], None]) -> list[dict]:
    """One turn per line of `lines` (``/reset`` starts over); returns the conversation."""
    chat = Chat(config)
    for line in lines:
        text = line.strip()
        if text == "/reset":
            chat.reset()
        elif text:
            chat.reply(text, write)
            write("\n")
    return chat.messages

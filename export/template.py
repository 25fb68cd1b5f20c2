"""A chat template as the text between messages, read off the template itself, and its Ollama form.

A Jinja chat template cannot be translated to Ollama's Go template in general. But the templates models
ship (Llama-3, ChatML/Qwen, Gemma, ours) render a conversation as fixed text around each message's
content, and that text depends only on the roles on either side of it. So the template is rendered on
probe conversations with marker contents, and the text between markers is read off: what opens the
conversation before the first message of each role, what goes between two messages of given roles, and
what follows the last user message when a reply is asked for. The Go template emits the same pieces.

The layout is then checked against the Jinja template on other conversations (with and without a
system message, several turns, Indic text); a template it does not reproduce is refused, naming the
conversation, rather than translated wrongly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

_MARK = "\ue000{}\ue001"  # private-use characters: no template adds or changes them


class TemplateLayoutError(ValueError):
    """A chat template whose output is not fixed text around each message."""


@dataclass(frozen=True)
class ChatLayout:
    """The text a chat template puts before, between and after messages, by role."""

    opening: dict[str, str]  # before the first message, by its role
    between: dict[tuple[str, str], str]  # between a message of the first role and one of the second
    reply: str  # after the last (user) message, when a reply is asked for
    closing: dict[str, str]  # after the last message when no reply is asked for, by its role

    def render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        parts, previous = [], None
        for message in messages:
            parts.append(self.opening[message["role"]] if previous is None else self.between[previous, message["role"]])
            parts.append(message["content"])
            previous = message["role"]
        if previous is not None:
            parts.append(self.reply if add_generation_prompt else self.closing[previous])
        return "".join(parts)

    def end_of_turn(self) -> str:
        """The text that ends an assistant turn: what follows its content before the next message's own text."""
        return os.path.commonprefix([self.closing["assistant"], self.between["assistant", "user"]])


def render(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _marked(roles: list[str]) -> list[dict]:
    return [{"role": role, "content": _MARK.format(i)} for i, role in enumerate(roles)]


def _pieces(text: str, count: int) -> list[str]:
    """The text before, between and after the `count` markers."""
    pieces = []
    for i in range(count):
        marker = _MARK.format(i)
        if text.count(marker) != 1:
            raise TemplateLayoutError(f"the chat template does not render message {i}'s content once, as given")
        before, text = text.split(marker)
        pieces.append(before)
    return [*pieces, text]


def _probe(tokenizer, roles: list[str], add_generation_prompt: bool) -> list[str] | None:
    try:
        text = render(tokenizer, _marked(roles), add_generation_prompt)
    except Exception:  # the template refuses this order of roles (e.g. raise_exception for a system message)
        return None
    return _pieces(text, len(roles))


def layout(tokenizer) -> ChatLayout:
    """The layout of `tokenizer`'s chat template; TemplateLayoutError if it has none or is not fixed text."""
    if not getattr(tokenizer, "chat_template", None):
        raise TemplateLayoutError("the tokenizer has no chat template")
    opening, between, closing, reply = {}, {}, {}, None
    for roles in (["system", "user", "assistant", "user", "assistant"], ["user", "assistant", "user", "assistant"]):
        for add_generation_prompt in (False, True):
            for conversation in (roles, roles[:-1]):  # ending with the assistant, then with the user
                pieces = _probe(tokenizer, conversation, add_generation_prompt)
                if pieces is None or (add_generation_prompt and conversation[-1] == "assistant"):
                    continue
                opening.setdefault(conversation[0], pieces[0])
                for pair, text in zip(zip(conversation, conversation[1:]), pieces[1:-1]):
                    between.setdefault(pair, text)
                if add_generation_prompt:
                    reply = pieces[-1] if reply is None else reply
                else:
                    closing.setdefault(conversation[-1], pieces[-1])
    missing = [
        name
        for name, ok in (
            ("first user message", "user" in opening),
            ("user -> assistant turn", ("user", "assistant") in between),
            ("assistant -> user turn", ("assistant", "user") in between),
            ("reply prompt", reply is not None),
            ("end of an assistant turn", "assistant" in closing),
        )
        if not ok
    ]
    if missing:
        raise TemplateLayoutError(f"could not read the chat template's {', '.join(missing)} off its output")
    found = ChatLayout(opening, between, reply, closing)
    verify(tokenizer, found)
    return found


CHECK_CONVERSATIONS = [
    [{"role": "user", "content": "नमस्ते! आप कैसे हैं?"}],
    [
        {"role": "system", "content": "You answer in Tamil.\nBe brief."},
        {"role": "user", "content": "What is the capital of India?"},
        {"role": "assistant", "content": "இந்தியாவின் தலைநகரம் புது தில்லி."},
        {"role": "user", "content": "And of Tamil Nadu?"},
    ],
    [
        {"role": "user", "content": "2 + 2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "বাংলায় বলুন।"},
        {"role": "assistant", "content": "চার"},
        {"role": "user", "content": "ধন্যবাদ"},
    ],
]


def verify(tokenizer, found: ChatLayout) -> None:
    """The layout must render the check conversations exactly as the Jinja template does."""
    for messages in CHECK_CONVERSATIONS:
        try:
            expected = render(tokenizer, messages, True)
        except Exception:  # a role order the template refuses (a system message, say) is not served either
            continue
        if found.render(messages, True) != expected:
            raise TemplateLayoutError(
                f"the chat template is not fixed text around each message: on the conversation {messages!r} it "
                f"renders {expected!r}, the layout read off it {found.render(messages, True)!r}"
            )


def _go_literal(text: str) -> str:
    """`text` as Go template text: literal, except that "{{" must come from an action."""
    return text.replace("{{", '{{ "{{" }}')


def ollama_template(found: ChatLayout) -> str:
    """An Ollama TEMPLATE (Go text/template over .Messages) rendering conversations as `found` does, reply
    prompt included after a last user message (Ollama asks for a reply whenever it renders)."""

    def choose(cases: list[tuple[str, str]]) -> str:
        branches = [
            f"{{{{ {'if' if i == 0 else 'else if'} {test} }}}}{_go_literal(text)}"
            for i, (test, text) in enumerate(cases)
        ]
        return "".join(branches) + "{{ end }}" if branches else ""

    first = [(f'and (eq $previous "") (eq .Role "{role}")', text) for role, text in found.opening.items()]
    later = [(f'and (eq $previous "{a}") (eq .Role "{b}")', text) for (a, b), text in found.between.items()]
    tails = [('eq $previous "user"', found.reply)] + [
        (f'eq $previous "{role}"', text) for role, text in found.closing.items() if role != "user"
    ]
    return (
        '{{ $previous := "" }}{{ range .Messages }}'
        + choose(first + later)
        + "{{ .Content }}{{ $previous = .Role }}{{ end }}"
        + choose(tails)
    )

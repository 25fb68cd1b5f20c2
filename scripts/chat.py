"""Talk to a checkpoint or merged model locally, through its chat template, replies streamed.

    python scripts/chat.py --model DIR [--adapter DIR] [--system "..."] [--temperature 0] [--max_new_tokens 512]

Type a message and Enter; /reset starts a new conversation; Ctrl-D ends. Lines piped on stdin are turns too.
"""

import sys

from indictune.core.recipe import parse_cli
from indictune.export.chat import ChatConfig, talk
from indictune.export.hf import ExportError


def lines():
    while True:
        if sys.stdin.isatty():
            print("you> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line:
            return
        yield line


def main() -> None:
    config = parse_cli(ChatConfig, description=__doc__)
    try:
        talk(config, lines(), lambda piece: print(piece, end="", flush=True))
    except (ExportError, OSError) as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()

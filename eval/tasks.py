"""Tasks: short YAML files in ``eval/tasks/`` naming their data, format and metric.

A language-modelling task scores held-out text in fixed byte-length chunks and reports bits per
character and per byte, which compare across tokenizers (per-token perplexity does not), and the
tokenizer's fertility on the same text. Paths may use ``{lang}`` and ``{flores}`` (the language's
codes from data/languages.py) and ``{shared}`` (``$INDICTUNE_SHARED_DATA``, default ``../shared/data``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from data import languages
from data.recipe import RecipeError, build, field, read_yaml

TASKS_DIR = Path(__file__).parent / "tasks"


@dataclass
class TaskData:
    path: str = field(help="file per language; {lang}, {flores} and {shared} are filled in")
    format: Literal["text"] = field("text", help="text: one paragraph per line")


@dataclass
class Task:
    name: str
    data: TaskData
    type: Literal["language_modeling"] = "language_modeling"
    description: str = ""
    languages: list[str] = field(default_factory=list, help="languages the task has data for")
    chunk_bytes: int = field(1000, help="score text in chunks of at most this many UTF-8 bytes")

    def path(self, lang: str) -> Path:
        language = languages.get(lang)
        shared = os.environ.get("INDICTUNE_SHARED_DATA", "../shared/data")
        return Path(self.data.path.format(lang=language.code, flores=language.flores, shared=shared))

    def texts(self, lang: str) -> list[str]:
        path = self.path(lang)
        if not path.is_file():
            raise FileNotFoundError(
                f"task {self.name}: no data for {lang} at {path}; set data.path in "
                f"{TASKS_DIR / (self.name + '.yaml')} or INDICTUNE_SHARED_DATA"
            )
        return [line for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def load_task(name_or_path: str) -> Task:
    path = Path(name_or_path)
    if not path.is_file():
        path = TASKS_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in TASKS_DIR.glob("*.yaml")))
        raise RecipeError(f"unknown task {name_or_path!r}; tasks in {TASKS_DIR}: {known}")
    return build(Task, read_yaml(path), str(path))


def chunks(paragraphs: list[str], max_bytes: int) -> list[str]:
    """Consecutive paragraphs joined with newlines into chunks of at most `max_bytes` UTF-8 bytes.

    A paragraph longer than that is cut at spaces (or, with no space in reach, between characters).
    """
    pieces: list[str] = []
    for paragraph in paragraphs:
        while len(paragraph.encode("utf-8")) > max_bytes:
            head = paragraph.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")
            cut = head.rfind(" ")
            cut = cut if cut > 0 else len(head)
            pieces.append(paragraph[:cut])
            paragraph = paragraph[cut:].lstrip(" ")
        if paragraph:
            pieces.append(paragraph)
    result: list[str] = []
    for piece in pieces:
        if result and len((result[-1] + "\n" + piece).encode("utf-8")) <= max_bytes:
            result[-1] += "\n" + piece
        else:
            result.append(piece)
    return result

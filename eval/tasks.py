"""Tasks: short YAML files in ``eval/tasks/`` naming their data, format, prompt, choices and metric.

Three types:
- ``language_modeling``: held-out text scored in fixed byte-length chunks; bits per character and per
  byte (comparable across tokenizers, unlike per-token perplexity) and the tokenizer's fertility.
- ``multiple_choice``: each choice scored by log-likelihood after the prompt; accuracy with raw scores
  and with scores divided by the choice's UTF-8 bytes (fair across scripts, unlike characters).
- ``generation``: greedy completion of the prompt, scored with chrF++ (translation) or exact match and
  token F1 (extractive QA).

Prompts, choices and targets are Jinja templates over the record's fields; ``doc`` is the record
itself (for field names with spaces), ``language`` the language's row of core/languages.py and
``lit`` the task's words for that language (``literals``). Data paths may use ``{lang}``,
``{flores}``, ``{name}`` (the language's codes and English name), ``{shared}`` (the shared data,
``$INDICTUNE_SHARED_DATA``) and ``{eval_data}`` (where local copies of Hugging Face datasets live,
``$INDICTUNE_EVAL_DATA``); their defaults are in core/paths.py.
"""

from __future__ import annotations

import csv
import json
import os
import random
from collections import Counter
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any, Literal

from jinja2 import StrictUndefined, TemplateError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from indictune.core import languages
from indictune.core.paths import eval_data_dir, shared_data_dir
from indictune.core.recipe import RecipeError, build, check_ranges, field, read_yaml

TASKS_DIR = Path(__file__).parent / "tasks"
_JINJA = ImmutableSandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True)


class MissingTaskData(FileNotFoundError):
    """A task's data is neither on disk nor reachable."""


@dataclass
class TaskData:
    path: str | dict[str, str] | None = field(
        None, help="local file per language (a template, or a mapping language -> file)"
    )
    format: Literal["auto", "text", "jsonl", "json", "squad", "parquet", "csv", "tsv", "parallel"] = field(
        "auto", help="auto: by the file's extension; squad: SQuAD JSON; parallel: line-aligned text files"
    )
    hf: str | None = field(
        None, help="Hugging Face dataset id, used when no local copy exists and the hub is reachable"
    )
    hf_name: str | None = field(None, help="the dataset's configuration; {lang}, {flores} and {name} are filled in")
    hf_revision: str | None = field(None, help="e.g. refs/convert/parquet for datasets that had loading scripts")
    split: str = "test"
    fieldnames: list[str] = field(
        default_factory=list, help="csv/tsv without a header row: its columns' names (MGSM's question TAB answer)"
    )
    columns: dict[str, str] = field(default_factory=dict, help="rename upstream columns: {upstream: ours}")
    schema: str = field("", help="the fields the templates use, documented for whoever supplies a local copy")


@dataclass
class Task:
    name: str
    data: TaskData
    type: Literal["language_modeling", "multiple_choice", "generation"] = "language_modeling"
    description: str = ""
    origin: Literal["native", "human-translated", "machine-translated"] = field(
        "native", help="how the data was written; shown next to scores"
    )
    languages: list[str] = field(default_factory=list, help="languages the task has data for")
    chunk_bytes: int = field(
        1000,
        minimum=4,
        help="language_modeling: score text in chunks of at most this many UTF-8 "
        "bytes (at least 4, the longest UTF-8 character)",
    )
    prompt: str = field("", help="Jinja template of what the model reads")
    choices: list[str] = field(default_factory=list, help="multiple_choice: one template per choice")
    choices_from: str | None = field(None, help="multiple_choice: the choices are the distinct values of this field")
    target: str = field("", help="multiple_choice: the gold choice's index or text; generation: the reference")
    references: str | None = field(None, help="generation: a field holding a list of acceptable answers")
    target_delimiter: str = field(" ", help="between the prompt and an answer")
    fewshot_delimiter: str = field("\n\n", help="between worked examples")
    literals: dict[str, dict[str, str]] = field(default_factory=dict, help="per language: words the templates use")
    direction: Literal["from_english", "to_english"] | None = field(
        None, help="parallel data: which side is the source"
    )
    metric: Literal["bits", "accuracy", "chrf", "squad", "numeric"] = field(
        "bits", help="chrf: chrF++; squad: exact match and F1; numeric: the final number of a worked answer, exact"
    )
    max_new_tokens: int = field(48, minimum=1, help="generation: the longest answer, in tokens")
    stop: list[str] = field(default_factory=lambda: ["\n"], help="generation ends at the first of these")
    source: str = dataclass_field(default="", init=False, compare=False)  # the YAML file it was read from

    def __post_init__(self) -> None:
        check_ranges(self, f"task {self.name}")
        expected = {
            "language_modeling": {"bits"},
            "multiple_choice": {"accuracy"},
            "generation": {"chrf", "squad", "numeric"},
        }
        if self.metric not in expected[self.type]:
            raise ValueError(
                f"metric {self.metric!r} does not fit type {self.type!r} (use {sorted(expected[self.type])})"
            )
        if self.type == "multiple_choice" and not (self.choices or self.choices_from):
            raise ValueError("a multiple_choice task needs choices or choices_from")
        if self.data.format == "parallel" and self.direction is None:
            raise ValueError("parallel data needs direction: from_english or to_english")

    @property
    def file(self) -> Path:
        return Path(self.source) if self.source else TASKS_DIR / f"{self.name}.yaml"

    # ---- data -------------------------------------------------------------------------------------

    def path(self, lang: str) -> Path | None:
        template = self.data.path.get(lang) if isinstance(self.data.path, dict) else self.data.path
        return Path(_fill(template, lang)) if template else None

    def records(self, lang: str) -> tuple[list[dict], Counter]:
        """The language's records and the count of rows rejected while reading, by reason."""
        rejected: Counter = Counter()
        if self.data.format == "parallel":
            english = _fill(self.data.path, "en") if isinstance(self.data.path, str) else self.data.path.get("en")
            source, target = (Path(english), self.path(lang))
            if self.direction == "to_english":
                source, target = target, source
            for path in (source, target):
                self._require(path, lang)
            source_lines = _lines(source)
            target_lines = _lines(target)
            if len(source_lines) != len(target_lines):
                raise ValueError(
                    f"task {self.name}: {source} has {len(source_lines)} lines, {target} {len(target_lines)}; "
                    "parallel files must be line-aligned"
                )
            names = ("English", languages.get(lang).name)
            if self.direction == "to_english":
                names = names[::-1]
            rows = [
                {"id": str(i), "source": s, "target": t, "source_language": names[0], "target_language": names[1]}
                for i, (s, t) in enumerate(zip(source_lines, target_lines))
            ]
        else:
            path = self.path(lang)
            if path is not None and path.is_file():
                rows = _read(path, self.data.format, rejected, self.data.fieldnames)
            elif self.data.hf and not _offline():
                rows = self._from_hub(lang, path)
            else:
                self._require(path, lang)
        renamed = [{self.data.columns.get(k, k): v for k, v in row.items()} for row in rows]
        for i, row in enumerate(renamed):
            row.setdefault("id", str(i))
        return renamed, rejected

    def _require(self, path: Path | None, lang: str) -> None:
        if path is not None and path.is_file():
            return
        where = f"no local copy at {path}" if path else "no local path"
        hub = f"; online it loads {self.data.hf}" if self.data.hf else ""
        raise MissingTaskData(
            f"task {self.name} ({lang}): {where}{hub}. "
            f"Put the data there (fields: {self.data.schema or 'see the task'}), "
            f"or point data.path in {self.file} (or $INDICTUNE_EVAL_DATA / $INDICTUNE_SHARED_DATA) at it"
        )

    def _from_hub(self, lang: str, path: Path | None) -> list[dict]:
        import datasets

        name = _fill(self.data.hf_name, lang) if self.data.hf_name else None
        try:
            dataset = datasets.load_dataset(self.data.hf, name, split=self.data.split, revision=self.data.hf_revision)
        except Exception as err:  # network, gated access, a removed loading script: say what to do instead
            raise MissingTaskData(
                f"task {self.name} ({lang}): loading {self.data.hf} ({name}, {self.data.split}) failed: {err}. "
                f"Save the split as a file at {path} (data.path in {self.file}) to run offline"
            ) from err
        return dataset.to_list()

    def texts(self, lang: str) -> list[str]:
        """language_modeling: the paragraphs to score."""
        records, _ = self.records(lang)
        return [str(r["text"]) for r in records if str(r.get("text", "")).strip()]

    # ---- items ------------------------------------------------------------------------------------

    def render(self, template: str, record: dict, lang: str) -> str:
        language = languages.get(lang)
        return _JINJA.from_string(template).render(
            **record, doc=record, language=language, lit=self.literals.get(lang, {})
        )

    def items(self, lang: str, shots: int = 0, limit: int | None = None, seed: int = 0) -> tuple[list[dict], Counter]:
        """What the scorer needs per item, the first ``limit`` of them, and rejects by reason.

        multiple_choice: {id, context, choices, gold}; generation: {id, context, references}.
        Worked examples (``shots``) are other items of the same data, drawn with a fixed seed per item.
        """
        records, rejected = self.records(lang)
        choice_set = None
        if self.choices_from:
            values = (str(r.get(self.choices_from) or "").strip() for r in records)
            choice_set = sorted({v for v in values if v})
        built, errors = [], []
        for record in records:
            try:
                item = self._item(record, lang, choice_set)
            except (UndefinedError, TemplateError, ValueError, KeyError, TypeError, IndexError) as err:
                rejected[_reason(err)] += 1
                errors.append(f"record {record['id']}: {err}")
                continue
            if isinstance(item, str):
                rejected[item] += 1
            else:
                built.append(item)
        if records and not built:
            raise ValueError(
                f"task {self.name} ({lang}): every record was rejected ({dict(rejected)}); "
                f"first error: {errors[0] if errors else '-'}; check the templates in {self.file}"
            )
        # Worked examples are written before any context gains its own examples, so they never nest.
        worked = {item["id"]: self._worked(item) for item in built} if shots else {}
        if limit is not None:
            built = built[:limit]
        for item in built if shots else []:
            rng = random.Random(f"{seed}:{self.name}:{lang}:{item['id']}")
            others = [other for other in worked if other != item["id"]]
            examples = rng.sample(others, min(shots, len(others)))
            item["context"] = "".join(worked[e] + self.fewshot_delimiter for e in examples) + item["context"]
        return built, rejected

    def _worked(self, item: dict) -> str:
        answer = item["choices"][item["gold"]] if "choices" in item else item["references"][0]
        return item["context"] + self.target_delimiter + answer

    def _item(self, record: dict, lang: str, choice_set: list[str] | None) -> dict | str:
        context = self.render(self.prompt, record, lang)
        if self.type == "multiple_choice":
            choices = choice_set or [self.render(c, record, lang) for c in self.choices]
            if any(not c.strip() for c in choices):
                return "empty_choice"
            gold_text = self.render(self.target, record, lang).strip()
            if gold_text.lstrip("-").isdigit():
                gold = int(gold_text)
                if not 0 <= gold < len(choices):
                    return "target_out_of_range"
            elif gold_text in choices:
                gold = choices.index(gold_text)
            else:
                return "target_not_a_choice"
            return {"id": record["id"], "context": context, "choices": choices, "gold": gold}
        if self.references:
            value: Any = record
            for part in self.references.split("."):
                value = value[part]
            if (
                isinstance(value, dict) and "text" in value
            ):  # the hub's SQuAD layout: {text: [...], answer_start: [...]}
                value = value["text"]
            references = [value] if isinstance(value, str) else [str(v) for v in value]
        else:
            references = [self.render(self.target, record, lang)]
        references = [r.strip() for r in references if r and r.strip()]
        if not references:
            return "no_reference"
        return {"id": record["id"], "context": context, "references": references}


def _reason(err: Exception) -> str:
    if isinstance(err, UndefinedError):
        return "missing_field"
    return f"bad_record:{type(err).__name__}"


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _fill(template: str, lang: str) -> str:
    language = languages.get(lang)
    return template.format(
        lang=language.code,
        flores=language.flores,
        name=language.name,
        shared=str(shared_data_dir()),
        eval_data=str(eval_data_dir()),
    )


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def _read(path: Path, fmt: str, rejected: Counter, fieldnames: list[str] | None = None) -> list[dict]:
    """Rows of a local file; unreadable rows are counted in ``rejected``, never dropped silently."""
    if fmt == "auto":
        suffix = path.suffix.lower().lstrip(".")
        fmt = {"txt": "text", "jsonl": "jsonl", "json": "json", "parquet": "parquet", "csv": "csv", "tsv": "tsv"}.get(
            suffix
        )
        if fmt is None:
            raise ValueError(f"{path}: cannot tell the format from the extension; set data.format")
    if fmt == "text":
        return [{"text": line} for line in _lines(path)]
    if fmt == "jsonl":
        rows = []
        for line in path.read_text(encoding="utf-8").split("\n"):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                rejected["bad_json"] += 1
                continue
            if isinstance(row, dict):
                rows.append(row)
            else:
                rejected["not_an_object"] += 1
        return rows
    if fmt in ("json", "squad"):
        content = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(content, dict) and "data" in content:
            return _squad_rows(content)
        if isinstance(content, list):
            return [row for row in content if isinstance(row, dict)]
        raise ValueError(f"{path}: expected a list of objects or SQuAD JSON ({{'data': [...]}})")
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, fieldnames=fieldnames or None, delimiter="\t" if fmt == "tsv" else ",")
        header = [h.strip().lower() for h in reader.fieldnames or []]
        rows = []
        for row in reader:
            if [str(v).strip().lower() for v in row.values()] == header:  # a header repeated mid-file
                rejected["repeated_header"] += 1
            elif None in row or any(v is None for v in row.values()):
                rejected["wrong_column_count"] += 1
            else:
                rows.append(row)
        return rows


def _squad_rows(content: dict) -> list[dict]:
    rows = []
    for article in content["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                rows.append(
                    {
                        "id": str(qa["id"]),
                        "title": article.get("title", ""),
                        "context": paragraph["context"],
                        "question": qa["question"],
                        "answers": [a["text"] for a in qa.get("answers", [])],
                    }
                )
    return rows


def load_task(name_or_path: str) -> Task:
    path = Path(name_or_path)
    if not path.is_file():
        path = TASKS_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in TASKS_DIR.glob("*.yaml")))
        raise RecipeError(f"unknown task {name_or_path!r}; tasks in {TASKS_DIR}: {known}")
    task = build(Task, read_yaml(path), str(path))
    task.source = str(path)
    return task


def chunks(paragraphs: list[str], max_bytes: int) -> list[str]:
    """Consecutive paragraphs joined with newlines into chunks of at most `max_bytes` UTF-8 bytes.

    A paragraph longer than that is cut at spaces (or, with no space in reach, between characters).
    """
    pieces: list[str] = []
    for paragraph in paragraphs:
        while len(paragraph.encode("utf-8")) > max_bytes:
            head = paragraph.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")
            if not head:  # not even one character fits: cutting would never end
                raise ValueError(
                    f"chunk_bytes {max_bytes} is smaller than the character {paragraph[0]!r} "
                    f"({len(paragraph[0].encode('utf-8'))} UTF-8 bytes); use at least 4"
                )
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

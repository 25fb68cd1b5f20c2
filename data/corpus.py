"""Reading a prepared corpus back: the Parquet files ``scripts/prepare_data.py`` writes, as a ``datasets``
table of text and language, for the tokenizer and training steps."""

from __future__ import annotations

import glob
from pathlib import Path

import datasets

from indictune.core import languages


def parquet_files(paths: list[str]) -> list[str]:
    """Expand recipe paths: a prepare_data output directory (its ``data/``), a directory, a glob or a file."""
    files: list[str] = []
    for path in paths:
        p = Path(path)
        if p.is_dir():
            root = p / "data" if (p / "data").is_dir() else p
            found = sorted(str(f) for f in root.rglob("*.parquet"))
        else:
            found = sorted(glob.glob(path, recursive=True))
        found = [f for f in found if f.endswith(".parquet")]
        if not found:
            raise FileNotFoundError(
                f"no Parquet files at {path!r}: point train_data at the output_dir of scripts/prepare_data.py, "
                "a folder of .parquet files, or a glob"
            )
        files.extend(found)
    return files


def load_corpus(paths: list[str], langs: list[str] | None = None, text_field: str = "text") -> datasets.Dataset:
    """The text and language of each record of the prepared corpus, restricted to `langs` (codes as in
    core/languages.py)."""
    corpus = datasets.load_dataset("parquet", data_files=parquet_files(paths), split="train")
    if text_field not in corpus.column_names:
        raise ValueError(f"the corpus has no column {text_field!r} (columns: {', '.join(corpus.column_names)})")
    if langs:
        wanted = {languages.get(code).code for code in langs}
        if "lang" not in corpus.column_names:
            raise ValueError("a language filter needs a 'lang' column; prepare the data with scripts/prepare_data.py")
        corpus = corpus.filter(lambda batch: [lang in wanted for lang in batch["lang"]], batched=True)
        missing = wanted - set(corpus.unique("lang"))
        if missing:
            raise ValueError(f"no records for language(s) {', '.join(sorted(missing))} in {', '.join(paths)}")
    if len(corpus) == 0:
        raise ValueError(f"no records in {', '.join(paths)}")
    if "lang" not in corpus.column_names:
        corpus = corpus.add_column("lang", ["unknown"] * len(corpus))
    return corpus.select_columns([text_field, "lang"])

"""prepare_data's output folder: it never costs the user a file, never hangs, ends with its workers, and every
data or recipe problem is one line ``error: ...`` on the command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from indictune.core import io, recipe
from indictune.core.io import OutputDirError, OutputLocked, atomic_directory
from indictune.data import pipeline

REPO = Path(__file__).resolve().parent.parent
LINE = json.dumps(
    {"text": "यह एक छोटा सा वाक्य है जो परीक्षण के लिए लिखा गया है और इसमें बीस से अधिक शब्द हैं ताकि यह गुणवत्ता की जाँच पार कर सके"},
    ensure_ascii=False,
)


def corpus(folder: Path, lines: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "in.jsonl"
    path.write_text("\n".join(LINE.replace("छोटा", f"छोटा{i}") for i in range(lines)) + "\n", encoding="utf-8")
    return path


def config(source: str, output: Path, **settings) -> pipeline.PrepareConfig:
    values = {"sources": [{"path": source, "format": "jsonl", "lang": "hi"}], "output_dir": str(output), **settings}
    return recipe.build(pipeline.PrepareConfig, values, "test")


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# 1. output_dir safety


@pytest.mark.parametrize(
    ("source", "output"),
    [
        ("in/in.jsonl", "in"),  # the folder that holds the input
        ("in/in.jsonl", "."),  # a folder above it
        ("in", "in/out"),  # inside a folder the source reads
        ("in/**/*.jsonl", "in/out"),  # inside the folder a recursive glob searches
        ("in/in.jsonl", "in/in.jsonl"),  # the input itself
    ],
)
def test_an_output_dir_that_is_holds_or_lies_in_an_input_is_refused(tmp_path, source, output):
    corpus(tmp_path / "in")
    (tmp_path / "in" / "notes.txt").write_text("the user's own file")
    before = tree(tmp_path)
    with pytest.raises(OutputDirError, match="input"):
        pipeline.run(config(str(tmp_path / source), tmp_path / output))
    assert tree(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_an_output_beside_the_files_of_a_plain_glob_is_allowed(tmp_path):
    corpus(tmp_path / "in")
    pipeline.run(config(str(tmp_path / "in" / "*.jsonl"), tmp_path / "in" / "out"))
    report = pipeline.run(config(str(tmp_path / "in" / "*.jsonl"), tmp_path / "in" / "out"))  # not read back
    assert report["totals"]["input"] == 3


def test_an_existing_file_as_output_dir_is_refused_and_kept(tmp_path):
    source = corpus(tmp_path / "in")
    (tmp_path / "out").write_text("a file of the user's")
    with pytest.raises(OutputDirError, match="existing file"):
        pipeline.run(config(str(source), tmp_path / "out"))
    assert (tmp_path / "out").read_text() == "a file of the user's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]


def test_files_the_pipeline_did_not_write_are_kept_unless_overwrite(tmp_path):
    source = corpus(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    with pytest.raises(OutputDirError, match="thesis.tex.*--overwrite true"):
        pipeline.run(config(str(source), out))
    assert tree(out) == {"thesis.tex": b"years of work"}

    pipeline.run(config(str(source), out, overwrite=True))
    assert not (out / "thesis.tex").exists() and (out / "data").is_dir()
    first = tree(out)
    pipeline.run(config(str(source), out))  # a previous result of ours is replaced without overwrite
    del first["recipe.yaml"]  # it records overwrite: true
    assert {name: data for name, data in tree(out).items() if name != "recipe.yaml"} == first
    assert sorted(json.loads(first[io.MANIFEST])["files"])[0] == "data/part-00000.parquet"

    (out / "data" / "my-notes.txt").write_text("added by the user")
    with pytest.raises(OutputDirError, match="my-notes.txt"):
        pipeline.run(config(str(source), out))
    assert (out / "data" / "my-notes.txt").read_text() == "added by the user"


def test_atomic_directory_keeps_files_it_did_not_write_for_every_step(tmp_path):
    """The tokenizer, the merged model and the data all go through atomic_directory."""
    out = tmp_path / "tokenizer"
    out.mkdir()
    (out / "vocab-i-made.txt").write_text("x")
    with pytest.raises(OutputDirError, match="vocab-i-made.txt") as refused, atomic_directory(out) as partial:
        (partial / "tokenizer.json").write_text("{}")
    assert "--overwrite" not in str(refused.value)  # offered only where the step has that option
    assert tree(out) == {"vocab-i-made.txt": b"x"} and sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer"]
    foreign = tmp_path / "model.partial"
    foreign.mkdir()
    (foreign / "weights.bin").write_text("not ours")
    with pytest.raises(OutputDirError, match="model.partial"), atomic_directory(tmp_path / "model"):
        pass
    assert (foreign / "weights.bin").read_text() == "not ours"


# 2. one run at a time


def test_a_second_run_into_the_same_output_stops_at_once_naming_the_first(tmp_path):
    out = tmp_path / "out"
    with atomic_directory(out) as partial:
        (partial / "a.txt").write_text("first")
        with pytest.raises(OutputLocked, match=rf"{out}.*pid {os.getpid()}"), atomic_directory(out):
            pass
        assert (partial / "a.txt").read_text() == "first"
    assert (out / "a.txt").read_text() == "first" and not (tmp_path / "out.lock").exists()


# 3. the crash window of the swap


class Killed(Exception):
    """The process dying at that point."""


def _write(out: Path, content: str) -> None:
    with atomic_directory(out) as partial:
        (partial / "v.txt").write_text(content)


@pytest.mark.parametrize(
    ("exchange", "crash"),
    [
        (False, "rename 1"),  # before the old output is moved aside
        (False, "rename 2"),  # between the two renames: no output_dir, the old one at .previous
        (False, "remove"),  # new output in place, the old one not yet deleted from .previous
        (True, "exchange"),  # before the swap
        (True, "remove"),  # swapped; the old output not yet deleted from .partial
    ],
)
def test_a_crash_at_any_point_of_the_swap_leaves_a_whole_result_that_the_next_run_repairs(
    tmp_path, monkeypatch, exchange, crash
):
    out = tmp_path / "out"
    _write(out, "old")
    calls = {"rename": 0}
    real_rename, real_exchange, real_remove = os.rename, io._exchange, io._remove

    def rename(a, b):
        calls["rename"] += 1
        if crash == f"rename {calls['rename']}":
            raise Killed
        real_rename(a, b)

    def swap(a, b):
        if crash == "exchange":
            raise Killed
        return exchange and real_exchange(a, b)

    def remove(directory):
        if crash == "remove":
            (directory / "v.txt").unlink()  # half deleted when the process dies
            raise Killed
        real_remove(directory)

    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(io, "_exchange", swap, raising=False)
    monkeypatch.setattr(io, "_remove", remove, raising=False)
    with pytest.raises(Killed):
        _write(out, "new")
    monkeypatch.undo()

    whole = [p for p in (out, tmp_path / "out.previous", tmp_path / "out.partial") if (p / "v.txt").is_file()]
    assert whole, "no complete result left"

    with pytest.raises(RuntimeError), atomic_directory(out):  # the next run repairs first, then fails itself
        raise RuntimeError("the next run fails too")
    assert (out / "v.txt").read_text() in ("old", "new") and not (tmp_path / "out.previous").exists()
    _write(out, "newer")
    assert (out / "v.txt").read_text() == "newer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# 4. workers end with the main process


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_workers_die_with_a_killed_main_process(tmp_path):
    source = corpus(tmp_path / "in", lines=60_000)
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(to_recipe(source, tmp_path / "out", num_proc=2, batch_size=200)))
    main = subprocess.Popen(
        [sys.executable, "scripts/prepare_data.py", "--config", str(recipe_file)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while len(workers) < 2 and time.monotonic() < deadline and main.poll() is None:
            time.sleep(0.2)
            workers = [c.pid for c in psutil.Process(main.pid).children() if "spawn_main" in " ".join(c.cmdline())]
        assert len(workers) == 2, "the workers never started"
        time.sleep(2)  # mid-run: the workers are busy with batches
        assert main.poll() is None, "the run ended before it could be killed; make the corpus larger"
        main.send_signal(signal.SIGKILL)
        main.wait()
        deadline = time.monotonic() + 10
        while any(map(_alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(map(_alive, workers)), "workers outlived the main process"
    finally:
        for pid in filter(_alive, workers):
            os.kill(pid, signal.SIGKILL)


def to_recipe(source: Path, output: Path, **settings) -> dict:
    return {"sources": [{"path": str(source), "format": "jsonl", "lang": "hi"}], "output_dir": str(output), **settings}


# 5. every number in range, and --help says the ranges


@pytest.mark.parametrize(
    ("key", "value"),
    [("shard_records", "0"), ("num_proc", "-3"), ("batch_size", "0"), ("shard_mb", "0")],
)
def test_numeric_settings_out_of_range_are_refused_at_load(key, value):
    with pytest.raises(recipe.RecipeError, match=rf"'{key}' must be at least 1"):
        recipe.load(pipeline.PrepareConfig, REPO / "recipes/data/sample.yaml", [f"--{key}", value])


def test_help_lists_every_key_with_its_range_sources_included():
    text = "\n".join(recipe.describe(pipeline.PrepareConfig))
    assert "--num_proc (default: 1)" in text and "(minimum 1, maximum 1024)" in text
    assert "--shard_mb (default: 256)" in text and "--overwrite (default: False)" in text
    assert "--sources.N.path (required)" in text
    assert "--sources.N.max_chars (default: 10000000)" in text and "(minimum 1)" in text
    assert "--stages.dedup.threshold" in text


# 7. a recipe that is not UTF-8


@pytest.mark.parametrize(("encoding", "offset"), [("cp1252", 20), ("utf-16", 0)])
def test_a_recipe_not_in_utf8_names_the_file_the_byte_and_the_fix(tmp_path, encoding, offset):
    path = tmp_path / "recipe.yaml"
    path.write_bytes("output_dir: runs/café\nsources: []\n".encode(encoding))
    with pytest.raises(recipe.RecipeError) as err:
        recipe.read_yaml(path)
    assert (
        str(path) in str(err.value)
        and f"byte {offset}" in str(err.value)
        and "save the recipe as UTF-8" in str(err.value)
    )


# 8. the command line: one line, never a traceback


def _bad_cases(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    source = corpus(tmp_path / "in")
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(to_recipe(source, tmp_path / "out")))
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(good.read_bytes().replace(b"out", "café".encode("cp1252")))
    bad_eval = tmp_path / "eval.jsonl"
    bad_eval.write_text("not json\n")
    return {
        "recipe not UTF-8": (["--config", str(latin)], "save the recipe as UTF-8"),
        "missing source": (["--config", str(good), "--sources.0.path", str(tmp_path / "none.jsonl")], "none.jsonl"),
        "stage setup": (["--config", str(good), "--stages.decontaminate.paths", f"[{bad_eval}]"], "not JSON"),
        "output_dir .": (["--config", str(good), "--output_dir", "."], "input"),
        "out of range": (["--config", str(good), "--shard_records", "0"], "shard_records"),
        "locked": (["--config", str(good)], f"pid {os.getpid()}"),
    }


def test_every_data_or_recipe_problem_is_one_error_line(tmp_path):
    for name, (args, expected) in _bad_cases(tmp_path).items():
        cwd = tmp_path / "in" if name == "output_dir ." else REPO
        command = [sys.executable, str(REPO / "scripts/prepare_data.py"), *args]
        if name == "locked":
            with atomic_directory(tmp_path / "out"):
                result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)
        else:
            result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)
        lines = result.stderr.strip().splitlines()
        assert result.returncode in (1, 2) and len(lines) == 1 and lines[0].startswith("error: "), (name, result.stderr)
        assert expected in lines[0], (name, lines[0])

"""Evaluation beyond one device: a model split over devices (here cpu and disk, accelerate's hooks bringing the
offloaded weights in for each forward pass) scores as on one device, and a data-parallel run on two CPU processes
records what one process records: the same scores, one run per model in the store, whole tasks in the cache."""

import json
import re
import socket
import sqlite3
from pathlib import Path

import pytest
import torch
import yaml
from conftest import lora_adapter, run_unless_hung, write_copa

from indictune.eval import suite
from indictune.eval.suite import EvalConfig, EvalError, Loaded, Variant, evaluate

REPO = Path(__file__).resolve().parent.parent

# Layer 0, the final norm and the output layer live on disk between forward passes; the first weights (the input
# embeddings) stay on the CPU, where scoring sends its inputs.
PLACEMENT = {
    "model.embed_tokens": "cpu",
    "model.rotary_emb": "cpu",
    "model.layers.0": "disk",
    "model.layers.1": "cpu",
    "model.norm": "disk",
    "lm_head": "disk",
}
# Language modelling, multiple choice and generation.
TASKS = [
    {"task": "sample-heldout", "languages": ["hi", "en"]},
    {"task": "indiccopa", "languages": ["hi"], "shots": 1},
    {"task": "indicqa", "languages": ["hi"]},
]


@pytest.fixture(autouse=True)
def one_thread():
    """One thread, as each launched process has (OMP_NUM_THREADS=1): on a few shared cores, threads that wait on
    each other make a tiny model's forward passes many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_indicqa(folder, n=6):
    rows = [
        {"context": f"गाँव {i} में {i + 2} कुएँ हैं।", "question": f"गाँव {i} में कितने कुएँ हैं?", "answers": [str(i + 2)]}
        for i in range(n)
    ]
    (folder / "indicqa").mkdir(parents=True, exist_ok=True)
    (folder / "indicqa" / "hi.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows))


@pytest.fixture
def eval_data(tmp_path, monkeypatch):
    folder = tmp_path / "eval-data"
    write_copa(folder)
    write_indicqa(folder)
    monkeypatch.setenv("INDICTUNE_EVAL_DATA", str(folder))
    return folder


def same_scores(got: dict, expected: dict, tolerance: float) -> None:
    """Two runs' score rows: the same rows and counts, values, deltas, intervals and p within tolerance."""
    assert [(s["task"], s["lang"], s["metric"], s["n"]) for s in got["scores"]] == [
        (s["task"], s["lang"], s["metric"], s["n"]) for s in expected["scores"]
    ]
    for a, b in zip(got["scores"], expected["scores"]):
        for key in ("value", "delta", "delta_low", "delta_high", "p_value"):
            if b.get(key) is None:
                assert a.get(key) is None, (a, key)
            else:
                assert a[key] == pytest.approx(b[key], rel=tolerance, abs=tolerance), (a, key)


def test_a_model_split_over_cpu_and_disk_scores_as_on_one_device(tmp_path, long_base_dir, eval_data):
    adapter = lora_adapter(long_base_dir, tmp_path / "adapter", 1)
    (tmp_path / "placement.json").write_text(json.dumps(PLACEMENT))

    def config(name, adapters, **settings):
        return EvalConfig(
            tasks=TASKS,
            model=str(long_base_dir),
            adapter=[str(a) for a in adapters],
            use_cache=False,  # the cache would serve the one-device scores to the split model
            output_dir=str(tmp_path / name),
            db=str(tmp_path / "lb.sqlite"),
            bootstrap_samples=200,
            **settings,
        )

    split = {"device_map": str(tmp_path / "placement.json"), "offload_folder": str(tmp_path / "offload")}
    whole_base, whole_adapted = evaluate(config("whole", [adapter]))["runs"]
    # With an adapter the model is put together in memory and then placed; without one, placed while it loads.
    split_base, split_adapted = evaluate(config("split", [adapter], **split))["runs"]
    (split_alone,) = evaluate(config("split-alone", [], **split))["runs"]
    assert whole_base["device_map"] is None and split_base["device_map"] == split_adapted["device_map"] == PLACEMENT
    for got, expected in ((split_base, whole_base), (split_adapted, whole_adapted), (split_alone, whole_base)):
        same_scores(got, expected, 1e-5)
    assert {s["task"] for s in split_adapted["scores"]} == {"sample-heldout", "indiccopa", "indicqa"}
    recorded = json.loads((tmp_path / "split" / "results.json").read_text())
    assert recorded["config"]["device_map"] == split["device_map"] and recorded["runs"][1]["device_map"] == PLACEMENT

    # The offloaded weights really are away: on the meta device, brought in by accelerate's hooks.
    for adapters in ([], [Variant("a", str(long_base_dir), str(adapter), "adapter0")]):
        loaded = Loaded(str(long_base_dir), adapters, config("x", [], **split), "cpu")
        plain = loaded.model.get_base_model() if adapters else loaded.model
        layer = plain.model.layers[0]
        assert {p.device.type for p in layer.parameters()} == {"meta"} and hasattr(layer, "_hf_hook")
        assert {p.device.type for p in plain.model.layers[1].parameters()} == {"cpu"}
    assert any(p.suffix == ".dat" for p in (tmp_path / "offload").iterdir())  # what dispatch_model wrote there


def test_placements_are_checked_with_the_key_and_the_fix(tmp_path, long_base_dir):
    def placement(name, content):
        path = tmp_path / name
        path.write_text(json.dumps(content))
        return str(path)

    common = {"tasks": [{"task": "sample-heldout", "languages": ["en"], "limit": 1}], "model": str(long_base_dir)}
    with pytest.raises(EvalError, match=r"device_map 'nowhere.json' is neither a strategy \(auto, .*\) nor a file"):
        EvalConfig(**common, device_map="nowhere.json")
    with pytest.raises(EvalError, match=r"'model.layers.0': unknown device 'gpu'; use a GPU's index"):
        EvalConfig(**common, device_map=placement("gpu.json", {**PLACEMENT, "model.layers.0": "gpu"}))
    with pytest.raises(EvalError, match=r"'lm_head': GPU 99, but this machine has \d+ GPU"):
        EvalConfig(**common, device_map=placement("far.json", {**PLACEMENT, "lm_head": "cuda:99"}))
    with pytest.raises(EvalError, match="places modules on disk; set offload_folder"):
        EvalConfig(**common, device_map=placement("disk.json", PLACEMENT))
    with pytest.raises(EvalError, match="max_memory and offload_folder apply to a model split with device_map"):
        EvalConfig(**common, max_memory={"cpu": "1GiB"})
    with pytest.raises(EvalError, match=r"max_memory.cpu: 'lots' is not a size; .* e.g. 70GiB"):
        EvalConfig(**common, device_map="auto", max_memory={"cpu": "lots"})
    with pytest.raises(EvalError, match="give device .* or device_map .*, not both"):
        EvalConfig(**common, device="cpu", device_map="auto")

    # Checked against the model when it loads.
    def load(device_map):
        return evaluate(
            EvalConfig(
                **common,
                device_map=device_map,
                offload_folder=str(tmp_path / "offload"),
                use_cache=False,
                output_dir=str(tmp_path / "eval"),
                db=str(tmp_path / "lb.sqlite"),
            )
        )

    uncovered = {k: v for k, v in PLACEMENT.items() if k != "model.norm"}
    with pytest.raises(EvalError, match=r"gives no device for 1 weights, e.g. model.norm.weight; add 'model.norm'"):
        load(placement("uncovered.json", uncovered))
    with pytest.raises(EvalError, match=r"'model.layer.1' names no module of the model; module names start"):
        load(placement("typo.json", {**uncovered, "model.layer.1": "cpu", "model.norm": "cpu"}))
    with pytest.raises(EvalError, match=r"offloads model.embed_tokens.weight \(the model's first weights\) to disk"):
        load(placement("all-disk.json", {"": "disk"}))
    (run,) = load("auto")["runs"]  # one CPU: all of it there
    assert run["device_map"] == {"": "cpu"} and run["scores"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(launcher: list[str], config: dict, tmp_path: Path, env: dict, timeout: int = 240) -> dict:
    """scripts/evaluate.py on two CPU processes; its exit status and output. A run still going after `timeout`
    seconds is taken for a hang: every process of it is killed and the test fails."""
    path = tmp_path / f"eval-{len(list(tmp_path.glob('eval-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    returncode, stdout, stderr = run_unless_hung(
        [*launcher, "scripts/evaluate.py", "--config", str(path)], env, timeout, "the two processes"
    )
    return {"returncode": returncode, "stdout": stdout, "stderr": stderr}


def accelerate_launch() -> list[str]:
    return [
        "accelerate",
        "launch",
        "--config_file",
        "recipes/accelerate/multi-gpu.yaml",
        "--num_processes",
        "2",
        "--mixed_precision",
        "no",
        "--main_process_port",
        str(free_port()),
    ]


def torchrun() -> list[str]:
    return ["torchrun", "--nproc_per_node", "2", "--master_port", str(free_port())]


@pytest.mark.slow
def test_two_processes_record_what_one_process_records(tmp_path, long_base_dir, eval_data, monkeypatch):
    adapter = lora_adapter(long_base_dir, tmp_path / "adapter", 1)
    settings = {"tasks": TASKS, "model": str(long_base_dir), "adapter": [str(adapter)], "bootstrap_samples": 200}
    parallel = {**settings, "output_dir": str(tmp_path / "two"), "db": str(tmp_path / "two.sqlite")}
    cache_dir = tmp_path / "cache-two"
    ran = launch(accelerate_launch(), parallel, tmp_path, {"INDICTUNE_CACHE": str(cache_dir)})
    assert ran["returncode"] == 0, ran["stdout"][-3000:] + ran["stderr"][-5000:]
    assert "data-parallel on 2 processes" in ran["stdout"]
    assert ran["stdout"].count("results: ") == 1  # printed by the main process only
    two = json.loads((tmp_path / "two" / "results.json").read_text())

    monkeypatch.setenv("INDICTUNE_CACHE", str(tmp_path / "cache-one"))
    one = evaluate(EvalConfig(**settings, output_dir=str(tmp_path / "one"), db=str(tmp_path / "one.sqlite")))
    assert [r["label"] for r in two["runs"]] == [r["label"] for r in one["runs"]]
    for got, expected in zip(two["runs"], one["runs"]):
        same_scores(got, expected, 1e-5)  # the shares are batched apart: float noise at most (none on this CPU)
        assert got["batch_dependent"] == expected["batch_dependent"] == []
    assert two["skipped"] == one["skipped"] and two["rejected"] == one["rejected"]

    with sqlite3.connect(tmp_path / "two.sqlite") as db:
        assert sorted(label for (label,) in db.execute("SELECT label FROM runs")) == sorted(
            r["label"] for r in one["runs"]
        )
    assert sorted(p.name for p in (tmp_path / "two" / "samples").iterdir()) == sorted(
        p.name for p in (tmp_path / "one" / "samples").iterdir()
    )
    # The cache holds whole tasks only (two models x four entries), and one process is served them as they are.
    assert len(list((cache_dir / "eval" / "results").glob("*.json"))) == 2 * 4
    monkeypatch.setenv("INDICTUNE_CACHE", str(cache_dir))
    monkeypatch.setattr(suite, "score_task", lambda *a, **k: pytest.fail("scored again instead of from the cache"))
    again = evaluate(EvalConfig(**settings, output_dir=str(tmp_path / "again"), db=str(tmp_path / "again.sqlite")))
    for got, expected in zip(again["runs"], two["runs"]):
        assert got["scores"] == expected["scores"]


@pytest.mark.slow
def test_a_failure_on_the_main_process_stops_both_with_its_error(tmp_path, tiny_base_dir, long_base_dir):
    settings = {
        "tasks": [{"task": "sample-heldout", "languages": ["en"], "limit": 2}],
        "model": str(long_base_dir),
        "adapter": [str(lora_adapter(tiny_base_dir, tmp_path / "adapter", 1))],  # trained on another base
        "output_dir": str(tmp_path / "eval"),
        "db": str(tmp_path / "lb.sqlite"),
    }
    ran = launch(torchrun(), settings, tmp_path, {"INDICTUNE_CACHE": str(tmp_path / "cache")}, timeout=120)
    assert ran["returncode"] != 0
    messages = [line for line in ran["stderr"].splitlines() if line.startswith("error: ")]
    assert len(messages) == 1 and re.search(r"error: adapter .* was trained on .*tiny-base", messages[0]), ran[
        "stderr"
    ][-3000:]
    assert not (tmp_path / "eval" / "results.json").exists()


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        ({"device_map": "auto"}, "device_map splits one model over this machine's devices, but 2 processes"),
        ({"backend": "vllm"}, "backend vllm runs one engine"),
    ],
)
def test_what_several_processes_cannot_do_is_refused(settings, error, long_base_dir):
    from types import SimpleNamespace

    from indictune.eval.suite import _process_device

    config = EvalConfig(tasks=["sample-heldout"], model=str(long_base_dir), **settings)
    two = SimpleNamespace(count=2, state=SimpleNamespace(device=torch.device("cpu")))
    with pytest.raises(EvalError, match=error):
        _process_device(config, two)

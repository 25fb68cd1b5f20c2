"""The shape of the code: installed names that cannot collide, and imports that only point down the layers."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parent.parent
# Each step may import the steps before it, never the ones after: core <- data <- training <- eval <- export.
LAYERS = ["core", "data", "training", "eval", "export"]


def test_installed_names_live_under_indictune_only(tmp_path):
    # From a folder of the user's own, with a package of theirs called `data` next to it.
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "__init__.py").write_text("MINE = True\n")
    probe = (
        "import importlib.util, data, indictune.data.pipeline, indictune.eval.suite, indictune.core.recipe\n"
        "assert data.MINE\n"
        "assert importlib.util.find_spec('eval') is None and importlib.util.find_spec('training') is None\n"
        "assert importlib.util.find_spec('core') is None\n"
        "print(indictune.data.pipeline.__file__)"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).resolve() == REPO / "data" / "pipeline.py"


def test_every_package_folder_is_installed_under_its_namespace_name():
    setup = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {
        ".".join(["indictune", *init.parent.relative_to(REPO).parts])
        for layer in LAYERS
        for init in (REPO / layer).rglob("__init__.py")
    }
    assert set(setup["packages"]) == folders
    assert setup["package-dir"] == {f"indictune.{layer}": layer for layer in LAYERS}


def imported_layers(path: Path) -> set[str]:
    layers = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = (
            [node.module or ""]
            if isinstance(node, ast.ImportFrom)
            else [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else []
        )
        for name in names:
            parts = name.split(".")
            if parts[0] == "indictune" and len(parts) > 1:
                layers.add(parts[1])
            elif parts[0] in LAYERS:  # a bare top-level import would bypass the namespace
                layers.add(f"bare {parts[0]}")
    return layers


@pytest.mark.parametrize("layer", LAYERS)
def test_imports_point_only_down_the_layers(layer):
    allowed = set(LAYERS[: LAYERS.index(layer) + 1])
    wrong = {
        str(path.relative_to(REPO)): sorted(imported_layers(path) - allowed)
        for path in (REPO / layer).rglob("*.py")
        if imported_layers(path) - allowed
    }
    assert wrong == {}

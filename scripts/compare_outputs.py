"""Run the same chains with an earlier revision and with this working tree, and compare their outputs byte by byte.

    python scripts/compare_outputs.py --before REV [--chains sample,mix,demo] [--work DIR]

For a change that must not change behaviour (a refactoring): the earlier revision is checked out into a
git worktree, each side runs in its own checkout with the same relative output paths (so recorded
recipes are identical), imports its own code, and every output file is compared. Exits 1 on a difference.

Chains: ``sample`` (the embedded sample through prepare_data), ``mix`` (recipes/data/multilingual-mix.yaml
on the shared data) and ``demo`` (scripts/demo.sh, the whole chain). What legitimately differs between
two runs is left out: TensorBoard event files, the SQLite store, trainer_state.json (timings), and the
``created`` and ``code_commit`` fields of JSON files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = {"core": "core", "data": "data", "training": "training", "eval": "eval"}
CHAINS = {
    "sample": (
        [
            "{python}",
            "scripts/prepare_data.py",
            "--config",
            "recipes/data/sample.yaml",
            "--output_dir",
            "runs/compare/sample",
        ],
        "runs/compare/sample",
    ),
    "mix": (
        [
            "{python}",
            "scripts/prepare_data.py",
            "--config",
            "recipes/data/multilingual-mix.yaml",
            "--output_dir",
            "runs/compare/mix",
        ],
        "runs/compare/mix",
    ),
    "demo": (["bash", "scripts/demo.sh"], "runs/demo"),
}
SKIPPED_NAMES = ("events.out.tfevents.", "leaderboard.sqlite", "trainer_state.json")
VOLATILE_KEYS = {"created", "code_commit"}


def import_root(checkout: Path, work: Path) -> Path:
    """What to put on PYTHONPATH so that the checkout's own code is imported: the checkout itself for the
    layout with top-level packages, else a folder whose ``indictune/`` links to the checkout's folders."""
    if not (checkout / "core").is_dir():
        return checkout
    root = work / f"imports-{checkout.name}"
    (root / "indictune").mkdir(parents=True, exist_ok=True)
    for name, folder in PACKAGES.items():
        link = root / "indictune" / name
        if not link.exists():
            link.symlink_to(checkout / folder)
    return root


def run_chain(checkout: Path, command: list[str], env: dict) -> None:
    command = [part.format(python=sys.executable) for part in command]
    result = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(
            f"error: {' '.join(command)} failed in {checkout}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )


def _without_volatile(value):
    if isinstance(value, dict):
        return {k: _without_volatile(v) for k, v in value.items() if k not in VOLATILE_KEYS}
    if isinstance(value, list):
        return [_without_volatile(v) for v in value]
    return value


def digests(folder: Path) -> dict[str, str]:
    """sha256 of every output file under folder, by relative path, JSON files without their volatile fields."""
    result = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if any(name in path.name for name in SKIPPED_NAMES):
            continue
        content = path.read_bytes()
        if path.suffix == ".json":
            try:
                content = json.dumps(_without_volatile(json.loads(content)), sort_keys=True).encode()
            except ValueError:
                pass
        result[str(path.relative_to(folder))] = hashlib.sha256(content).hexdigest()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="the revision to compare with (e.g. HEAD~1 or a commit)")
    parser.add_argument("--chains", default="sample,mix,demo", help=f"comma-separated, of {', '.join(CHAINS)}")
    parser.add_argument("--work", default=None, help="where the earlier revision is checked out (default: a temp dir)")
    args = parser.parse_args()
    chains = args.chains.split(",")
    unknown = set(chains) - set(CHAINS)
    if unknown:
        raise SystemExit(f"error: unknown chain(s) {', '.join(sorted(unknown))}; choose from {', '.join(CHAINS)}")
    work = Path(args.work or tempfile.mkdtemp(prefix="indictune-compare-")).resolve()
    before = work / "before"
    if not before.exists():
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(before), args.before], cwd=REPO, check=True, capture_output=True
        )
    shared = os.environ.get("INDICTUNE_SHARED_DATA") or str(REPO.parent / "shared" / "data")
    different = []
    for chain in chains:
        command, output = CHAINS[chain]
        found = {}
        for side, checkout in (("before", before), ("after", REPO)):
            # This interpreter's folder first, so that the demo's `python` and `accelerate` are this environment's.
            env = {
                **os.environ,
                "PYTHONPATH": str(import_root(checkout, work)),
                "INDICTUNE_SHARED_DATA": shared,
                "INDICTUNE_CACHE": str(work / f"cache-{side}"),
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            }
            print(f"{chain}: running the {side} side in {checkout}", file=sys.stderr)
            run_chain(checkout, command, env)
            found[side] = digests(checkout / output)
        for name in sorted(set(found["before"]) | set(found["after"])):
            if found["before"].get(name) != found["after"].get(name):
                different.append(f"{chain}: {output}/{name}")
        print(f"{chain}: {len(found['after'])} files compared", file=sys.stderr)
    if different:
        print("different:\n  " + "\n  ".join(different))
        raise SystemExit(1)
    print(f"identical: {', '.join(chains)} give the same outputs at {args.before} and in this working tree")


if __name__ == "__main__":
    main()

"""The Slurm launchers under a stand-in Slurm. scripts/launch.slurm packs the data once, then starts one
`accelerate launch` per node with the machine count, the node's rank and the main node's address from Slurm;
scripts/launch_ray.slurm starts a Ray head and workers and prepares a data recipe on them."""

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def executable(path: Path, body: str) -> None:
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_launch_slurm_packs_once_and_starts_each_node_with_its_rank(
    tmp_path, prepared_sample, tiny_base_dir, extended_tokenizer_dir
):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    executable(bin_dir / "scontrol", 'printf "gpu-node-a\\ngpu-node-b\\n"\n')
    # srun runs the per-node command as the second node would; accelerate records what it was given.
    executable(bin_dir / "srun", 'while [ "$1" != bash ]; do shift; done; SLURM_NODEID=1 "$@"\n')
    executable(bin_dir / "accelerate", f'printf "%s\\n" "$@" > {tmp_path}/accelerate-args; env > {tmp_path}/env\n')
    executable(bin_dir / "python", f'exec {sys.executable} "$@"\n')
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_NNODES": "2",
        "SLURM_JOB_NODELIST": "gpu-node-[a-b]",
        "INDICTUNE_CACHE": str(tmp_path / "cache"),
    }
    result = subprocess.run(
        [
            "bash",
            "scripts/launch.slurm",
            "recipes/train/demo/cpt-lora.yaml",
            "--model_name_or_path",
            str(tiny_base_dir),
            "--tokenizer_name_or_path",
            str(extended_tokenizer_dir),
            "--train_data",
            str(prepared_sample[0]),
            "--learning_rate",
            "1e-4",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "per GPU" in result.stdout  # the memory plan, before anything is packed
    assert len(list((tmp_path / "cache" / "packed").iterdir())) == 1  # packed before the launch
    exported = dict(line.split("=", 1) for line in (tmp_path / "env").read_text().splitlines() if "=" in line)
    assert (
        exported["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
        and "expandable_segments" in exported["PYTORCH_CUDA_ALLOC_CONF"]
    )
    args = (tmp_path / "accelerate-args").read_text().split("\n")
    assert args[0] == "launch"
    flags = dict(zip(args[1:-1:2], args[2::2]))
    assert flags["--num_machines"] == "2" and flags["--num_processes"] == "16" and flags["--machine_rank"] == "1"
    assert flags["--main_process_ip"] == "gpu-node-a" and flags["--config_file"] == "recipes/accelerate/multi-node.yaml"
    assert args[args.index("scripts/train.py") + 1 : args.index("scripts/train.py") + 3] == [
        "--config",
        "recipes/train/demo/cpt-lora.yaml",
    ]
    assert args[-3:-1] == ["--learning_rate", "1e-4"]


def test_launch_ray_slurm_starts_a_head_and_a_worker_and_prepares_on_both(tmp_path, prepared_sample):
    """scripts/launch_ray.slurm on two stand-in nodes of this machine: a real Ray head and a real worker node
    (ray start), then the recipe on the cluster they form, with the local executor's output."""
    pytest.importorskip("ray")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    executable(bin_dir / "scontrol", 'printf "data-node-a\\ndata-node-b\\n"\n')
    # srun runs the step on this machine: drop its options, keep the command
    executable(bin_dir / "srun", 'while [[ "$1" == -* ]]; do [[ "$1" == -w ]] && shift; shift; done; exec "$@"\n')
    executable(bin_dir / "hostname", "echo 127.0.0.1\n")
    executable(bin_dir / "python", f'exec {sys.executable} "$@"\n')
    executable(bin_dir / "ray", f'exec {Path(sys.executable).parent / "ray"} "$@"\n')
    out = tmp_path / "o"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_NNODES": "2",
        "SLURM_JOB_NODELIST": "data-node-[a-b]",
        "SLURM_JOB_ID": "4242",
        "CPUS_PER_NODE": "1",
        "RAY_PORT": "26379",
        "RAY_TMPDIR": tempfile.mkdtemp(prefix="r", dir="/tmp"),  # Ray's socket paths must stay under 108 bytes
        "RAY_AUTH_TOKEN_PATH": str(tmp_path / "ray.token"),
    }
    for name in ("RAY_ADDRESS", "RAY_AUTH_MODE"):
        env.pop(name, None)
    command = ["bash", "scripts/launch_ray.slurm", "recipes/data/sample.yaml", "--output_dir", str(out)]
    try:
        result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    finally:
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "on 2 nodes x 1 CPUs" in result.stdout
    assert not (tmp_path / "ray.token").exists()  # the job's token goes with the job
    for name in ("data", "rejected"):
        made = {p.name: p.read_bytes() for p in sorted((out / name).glob("*.parquet"))}
        assert made == {p.name: p.read_bytes() for p in sorted((prepared_sample[0] / name).glob("*.parquet"))}

"""Deployment files, checked without a Docker engine or a cluster: the Dockerfile statically, the
entrypoint and launch scripts by running them with fake `python`, `srun` and `torchrun` on PATH."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from psp.io.fetch import load_manifest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
SBATCH = ROOT / "scripts" / "slurm" / "train.sbatch"
TORCHRUN = ROOT / "scripts" / "torchrun_train.sh"


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    result, pending = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending += " " + stripped
        if pending.endswith("\\"):
            pending = pending[:-1]
            continue
        keyword, _, args = pending.strip().partition(" ")
        result.append((keyword.upper(), " ".join(args.split())))
        pending = ""
    return result


@pytest.fixture(scope="module")
def dockerfile():
    return _instructions(DOCKERFILE)


def _args(instructions, keyword: str) -> list[str]:
    return [args for kw, args in instructions if kw == keyword]


def _global_arg(instructions, name: str) -> str:
    for args in _args(instructions, "ARG"):
        key, _, value = args.partition("=")
        if key == name and value:
            return value.strip('"')
    raise AssertionError(f"no ARG {name}=... in the Dockerfile")


def _fake(bin_dir: Path, name: str, body: str = 'printf "%s\\n" "$(basename "$0")" "$@"') -> None:
    """An executable `name` in bin_dir that prints its name and arguments, one per line."""
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text(f"#!/usr/bin/env bash\n{body}\n")
    path.chmod(0o755)


def _run(cmd, bin_dir: Path, cwd=ROOT, **env) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", **env}
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=60)


# ----------------------------------------------------------------------------------------------
# Dockerfile


def test_base_image_is_cuda_devel_matching_pinned_torch(dockerfile):
    image = _global_arg(dockerfile, "CUDA_IMAGE")
    match = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-cudnn-devel-ubuntu24\.04", image)
    assert match, image
    assert "torch==2.14.1" in (ROOT / "requirements.lock").read_text().split()
    if torch.version.cuda:  # the installed wheel is the pinned one: its CUDA must be the image's
        assert torch.version.cuda.split(".")[:2] == [match.group(1), match.group(2)]
    assert "${CUDA_IMAGE} AS cuda-system" in _args(dockerfile, "FROM")
    assert _global_arg(dockerfile, "CPU_IMAGE") == "python:3.11-slim"
    assert _global_arg(dockerfile, "FLAVOR") == "cuda"
    assert "${FLAVOR}-system AS app" in _args(dockerfile, "FROM")


def test_python_install_is_make_setup(dockerfile):
    runs = " ; ".join(_args(dockerfile, "RUN"))
    recipe = re.search(r"^setup:\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    pip_lines = [line.strip().replace("$(BIN)/python", "python") for line in recipe.splitlines()
                 if "-m pip" in line]
    assert any("-r requirements.lock" in line for line in pip_lines)
    for line in pip_lines:
        assert line in runs, f"Dockerfile does not run the `make setup` step: {line}"
    assert '"$(uv python find 3.11)" -m venv /opt/venv' in runs
    assert "python3.11 -m venv /opt/venv" in runs
    assert any(args.startswith("PATH=/opt/venv/bin:$PATH") for args in _args(dockerfile, "ENV"))


def test_runs_as_non_root_user(dockerfile):
    users = _args(dockerfile, "USER")
    assert users and users[-1] not in ("root", "0") and not users[-1].startswith("0:")
    assert any(f"useradd --create-home --uid \"${{APP_UID}}\" --shell /bin/bash {users[-1]}" in args
               for args in _args(dockerfile, "RUN"))


def test_cuda_ops_prebuilt_for_explicit_arches(dockerfile):
    assert '"8.0;8.6;8.9;9.0+PTX"' in [a.partition("=")[2] for a in _args(dockerfile, "ARG")
                                   if a.startswith("TORCH_CUDA_ARCH_LIST=")]
    env = " ".join(_args(dockerfile, "ENV"))
    for setting in ('TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST}"', "TORCH_EXTENSIONS_DIR=/opt/torch_extensions",
                    "PYTHONUNBUFFERED=1", "PSP_WEIGHTS_DIR=/checkpoints"):
        assert setting in env
    order = [kw + " " + args for kw, args in dockerfile]
    build = next(i for i, s in enumerate(order) if "python -m stylegan2.ops build" in s)
    install = next(i for i, s in enumerate(order) if "pip install --no-deps --no-build-isolation -e ." in s)
    user = max(i for i, s in enumerate(order) if s.startswith("USER "))
    assert install < user < build  # built after the install, as the runtime user
    assert 'chmod -R a+rwX "${TORCH_EXTENSIONS_DIR}"' in order[build]


def test_volumes_and_entrypoint(dockerfile):
    assert _args(dockerfile, "VOLUME") == ['["/data", "/checkpoints", "/runs"]']
    assert _args(dockerfile, "ENTRYPOINT") == ['["/app/docker/entrypoint.sh"]']
    assert _args(dockerfile, "WORKDIR") == ["/app"]
    assert os.access(ENTRYPOINT, os.X_OK)
    assert os.access(ROOT / "docker" / "link-mounts.sh", os.X_OK)


def test_dockerignore_keeps_local_state_out():
    lines = set((ROOT / ".dockerignore").read_text().split("\n"))
    assert {".git", ".venv", "runs", "**/__pycache__", "checkpoints/*", "!checkpoints/README.md",
            "!checkpoints/manifest.json", "**/*.pt", "**/*.pth", "**/*.ckpt"} <= lines
    assert not {"docker", "Dockerfile", "requirements.lock", "psp", "stylegan2"} & lines


# ----------------------------------------------------------------------------------------------
# Entrypoint and the link script


@pytest.mark.parametrize("argv, expected", [
    (["train", "--config", "ffhq", "train.max_steps=10"], ["python", "/app/train.py", "--config", "ffhq",
                                                           "train.max_steps=10"]),
    (["infer", "/data/my images", "--out", "/runs/lat"], ["python", "/app/infer.py", "/data/my images",
                                                          "--out", "/runs/lat"]),
    (["fetch", "stylegan2-ffhq-config-f.pt"], ["python", "-m", "psp.cli.main", "fetch", "stylegan2-ffhq-config-f.pt"]),
    (["fetch", "list"], ["python", "-m", "psp.cli.main", "fetch", "list"]),
    (["python", "-m", "stylegan2.ops", "build"], ["python", "-m", "stylegan2.ops", "build"]),
    (["echo", "as", "given"], ["as given"]),
])
def test_entrypoint_dispatch(tmp_path, argv, expected):
    _fake(tmp_path / "bin", "python")
    done = _run([ENTRYPOINT, *argv], tmp_path / "bin", PSP_APP_DIR="/app")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == expected


def test_entrypoint_defaults_to_its_repository_and_prints_help(tmp_path):
    _fake(tmp_path / "bin", "python")
    done = _run([ENTRYPOINT, "train"], tmp_path / "bin", cwd=tmp_path)
    assert done.stdout.splitlines() == ["python", str(ROOT / "train.py")]
    for flag in ("--help", "help"):
        usage = _run([ENTRYPOINT, flag], tmp_path / "bin").stdout
        assert "train ARGS  -> python train.py ARGS" in usage and "fetch ARGS" in usage


def test_link_mounts_points_relative_paths_at_the_mounts(tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    done = _run([ROOT / "docker" / "link-mounts.sh", app, "/checkpoints", "/runs"], tmp_path / "bin",
                PYTHON=sys.executable)
    assert done.returncode == 0, done.stderr
    for name in load_manifest():
        assert os.readlink(app / "checkpoints" / name) == f"/checkpoints/{name}"
    assert os.readlink(app / "runs") == "/runs"


# ----------------------------------------------------------------------------------------------
# SLURM and torchrun


def _sbatch_options() -> dict[str, str]:
    options = {}
    for line in SBATCH.read_text().splitlines():
        if line.startswith("#SBATCH "):
            key, _, value = line.split()[1].partition("=")
            options[key] = value
    return options


def test_sbatch_syntax_and_directives():
    assert subprocess.run(["bash", "-n", SBATCH], capture_output=True).returncode == 0
    options = _sbatch_options()
    for key in ("--nodes", "--ntasks-per-node", "--gpus-per-node", "--cpus-per-task", "--time", "--requeue"):
        assert key in options, key
    assert options["--signal"] == "SIGUSR1@90"
    assert options["--ntasks-per-node"] == options["--gpus-per-node"]  # one task per GPU


SLURM_ENV = {"SLURM_NNODES": "2", "SLURM_NTASKS_PER_NODE": "4", "SLURM_CPUS_PER_TASK": "6"}
TRAIN_TAIL = ["train.py", "--config", "ffhq", "train.accelerator=gpu", "train.strategy=ddp",
              "train.num_nodes=2", "train.devices=4", "--resume", "auto", "data.train_dir=/data/ffhq"]


def test_sbatch_launches_one_srun_with_slurm_sizes(tmp_path):
    _fake(tmp_path / "bin", "srun", 'echo "cpus=$SRUN_CPUS_PER_TASK"; printf "%s\\n" srun "$@"')
    done = _run(["bash", SBATCH, "ffhq", "data.train_dir=/data/ffhq"], tmp_path / "bin", cwd=tmp_path,
                SLURM_SUBMIT_DIR=tmp_path, **SLURM_ENV)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["cpus=6", "srun", "--kill-on-bad-exit=1", "python", *TRAIN_TAIL]


def test_sbatch_container_options(tmp_path):
    _fake(tmp_path / "bin", "srun")
    done = _run(["bash", SBATCH, "ffhq", "data.train_dir=/data/ffhq"], tmp_path / "bin", cwd=tmp_path,
                SLURM_SUBMIT_DIR=tmp_path, PSP_CONTAINER_IMAGE="reg.example/psp:1", **SLURM_ENV)
    mounts = f"{tmp_path}/data:/data,{tmp_path}/checkpoints:/checkpoints,{tmp_path}/runs:/runs"
    assert done.stdout.splitlines() == ["srun", "--kill-on-bad-exit=1", "--container-image=reg.example/psp:1",
                                        f"--container-mounts={mounts}", "--container-workdir=/app", "python",
                                        *TRAIN_TAIL]
    done = _run(["bash", SBATCH, "ffhq", "data.train_dir=/data/ffhq"], tmp_path / "bin", cwd=tmp_path,
                SLURM_SUBMIT_DIR=tmp_path, PSP_APPTAINER_SIF="/img/psp.sif", **SLURM_ENV)
    assert done.stdout.splitlines() == ["srun", "--kill-on-bad-exit=1", "apptainer", "exec", "--nv",
                                        "--writable-tmpfs", "--pwd", "/app", "--bind", mounts, "/img/psp.sif",
                                        "python", *TRAIN_TAIL]


def test_torchrun_script_single_and_multi_node(tmp_path):
    assert subprocess.run(["bash", "-n", TORCHRUN], capture_output=True).returncode == 0
    _fake(tmp_path / "bin", "torchrun")
    done = _run([TORCHRUN, "ffhq", "data.train_dir=/data/ffhq"], tmp_path / "bin", TORCHRUN="torchrun",
                NNODES="2", NPROC_PER_NODE="4", RDZV_ENDPOINT="node0:29500", RDZV_ID="job7")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["torchrun", "--nnodes", "2", "--nproc-per-node", "4",
                                        "--rdzv-backend", "c10d", "--rdzv-endpoint", "node0:29500",
                                        "--rdzv-id", "job7", *TRAIN_TAIL]


def test_torchrun_script_needs_a_gpu_or_an_explicit_count(tmp_path):
    _fake(tmp_path / "bin", "gpu-count", "echo 0")
    done = _run([TORCHRUN, "ffhq"], tmp_path / "bin", TORCHRUN="torchrun", PYTHON="gpu-count")
    assert done.returncode == 2
    assert "no CUDA device visible; set NPROC_PER_NODE" in done.stderr


INFER_SBATCH = ROOT / "scripts" / "slurm" / "infer.sbatch"


def test_infer_sbatch_runs_one_step_or_one_array_shard(tmp_path):
    assert subprocess.run(["bash", "-n", INFER_SBATCH], capture_output=True).returncode == 0
    _fake(tmp_path / "bin", "srun")
    args = ["/data/faces", "--out", "runs/latents"]
    done = _run(["bash", INFER_SBATCH, *args], tmp_path / "bin", cwd=tmp_path, SLURM_SUBMIT_DIR=tmp_path)
    assert done.returncode == 0, done.stderr
    # No --kill-on-bad-exit: the other tasks finish when one dies; --resume makes requeues continue.
    assert done.stdout.splitlines() == ["srun", "python", "infer.py", *args, "--resume", "--quiet"]
    done = _run(["bash", INFER_SBATCH, *args], tmp_path / "bin", cwd=tmp_path, SLURM_SUBMIT_DIR=tmp_path,
                SLURM_ARRAY_TASK_ID="7", SLURM_ARRAY_TASK_MIN="4", SLURM_ARRAY_TASK_COUNT="8")
    assert done.stdout.splitlines() == ["srun", "python", "infer.py", *args, "--shard", "3/8", "--resume",
                                        "--quiet"]
    done = _run(["bash", INFER_SBATCH], tmp_path / "bin", cwd=tmp_path, SLURM_SUBMIT_DIR=tmp_path)
    assert done.returncode == 2 and "give the inputs" in done.stderr

"""Resuming: Ranger's state round trip, Lightning resume of step/optimiser/logger run, and a real
SIGTERM'd `train.py` subprocess continued with `--resume auto`."""
import copy
import csv
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as L
import torch

import psp.training.run as training
from psp.errors import InputError
from psp.config import OptimConfig
from psp.training.optim import Ranger, build_optimizer
from psp.training.run import resolve_resume, run
from test_system import tiny_config, write_tiny_yaml

ROOT = Path(__file__).resolve().parent.parent
# One thread per subprocess: see tests/conftest.py.
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


# -- Ranger -----------------------------------------------------------------------------------

def _params(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    shapes = [(4, 3), (4,), (2, 3, 3, 3)]
    return [torch.nn.Parameter(torch.randn(s, generator=g, dtype=dtype)) for s in shapes]


def _grads(step, params):
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]


def _oracle(params, n_steps, lr, betas=(0.95, 0.999), eps=6.1e-5, alpha=0.5, k=6):
    """pSp's Ranger (20.4.11) written from its definition, one parameter at a time, float64."""
    b1, b2 = betas
    rho_inf = 2 / (1 - b2) - 1
    out = []
    for i, p0 in enumerate(params):
        p = p0.detach().clone()
        slow, m, v = p.clone(), torch.zeros_like(p), torch.zeros_like(p)
        for t in range(1, n_steps + 1):
            grad = _grads(t, params)[i]
            if grad.dim() > 1:
                grad = grad - grad.mean(dim=tuple(range(1, grad.dim())), keepdim=True)
            v = b2 * v + (1 - b2) * grad * grad
            m = b1 * m + (1 - b1) * grad
            rho = rho_inf - 2 * t * b2 ** t / (1 - b2 ** t)
            if rho > 5:
                r = math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
                p = p - lr * r * math.sqrt(1 - b2 ** t) / (1 - b1 ** t) * m / (v.sqrt() + eps)
            else:
                p = p - lr / (1 - b1 ** t) * m
            if t % k == 0:
                slow = slow + alpha * (p - slow)
                p = slow.clone()
        out.append(p)
    return out


def _run(opt, params, first, last):
    for t in range(first, last + 1):
        for p, g in zip(params, _grads(t, params)):
            p.grad = g.clone()
        opt.step()
        opt.zero_grad()


def test_ranger_matches_psp_definition():
    params = _params()
    expected = _oracle(params, n_steps=14, lr=1e-2)
    opt = Ranger(params, lr=1e-2)
    _run(opt, params, 1, 14)
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.detach(), e, rtol=1e-10, atol=1e-12)


def test_ranger_state_dict_resumes_the_same_trajectory():
    straight = _params()
    opt = Ranger(straight, lr=1e-2)
    _run(opt, straight, 1, 14)

    first = _params()
    opt = Ranger(first, lr=1e-2)
    _run(opt, first, 1, 7)
    buffer = io.BytesIO()
    torch.save({"params": [p.detach() for p in first], "optim": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert all("slow_buffer" in s for s in saved["optim"]["state"].values())

    resumed = [torch.nn.Parameter(p.clone()) for p in saved["params"]]
    opt = Ranger(resumed, lr=1e-2)
    opt.load_state_dict(saved["optim"])
    _run(opt, resumed, 8, 14)  # crosses the Lookahead sync at step 12
    for a, b in zip(straight, resumed):
        assert torch.equal(a, b)


def test_ranger_runs_a_closure_before_centralising():
    p = torch.nn.Parameter(torch.ones(2, 2))
    opt = Ranger([p], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (p * torch.tensor([[1.0, 3.0], [0.0, 0.0]])).sum()
        loss.backward()
        return loss

    assert float(opt.step(closure).detach()) == 4.0
    # The row gradient [1, 3] is centralised to [-1, 1] before the (sign-like) first step.
    assert p[0, 0] > 1 > p[0, 1]


def test_build_optimizer_choices():
    params = _params(torch.float32)
    assert isinstance(build_optimizer(params, OptimConfig(name="ranger", lr=1e-4)), Ranger)
    adam = build_optimizer(params, OptimConfig(name="adam", lr=3e-4))
    assert type(adam) is torch.optim.Adam and adam.param_groups[0]["lr"] == 3e-4


# -- Lightning resume (in process) ---------------------------------------------------------------

def test_resume_restores_step_optimizer_and_logger_run(tmp_path, monkeypatch):
    out = tmp_path / "run"
    config = tiny_config(out, max_steps=4, val_every=2)
    assert run(config) == 0
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4

    seen = {}

    class Probe(L.Callback):
        def on_train_start(self, trainer, pl_module):
            seen["step"] = trainer.global_step
            seen["optim"] = copy.deepcopy(trainer.optimizers[0].state_dict())  # training mutates it

    original = training.build_callbacks
    monkeypatch.setattr(training, "build_callbacks", lambda *args: [*original(*args), Probe()])
    assert run(tiny_config(out, max_steps=6, val_every=2), resume="auto") == 0

    assert seen["step"] == 4
    saved = ckpt["optimizer_states"][0]["state"]
    for index, state in saved.items():
        restored = seen["optim"]["state"][index]
        for key in ("exp_avg", "exp_avg_sq", "slow_buffer", "step"):
            assert torch.equal(restored[key], state[key]), key
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6]
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6
    assert [p.name for p in (out / "logs").iterdir()] == ["csv"]  # the same CSV run, continued
    with (out / "logs" / "csv" / "metrics.csv").open() as f:
        csv_steps = {int(row["step"]) for row in csv.DictReader(f)}
    assert min(csv_steps) < 4 and max(csv_steps) >= 5


def test_resume_auto_without_checkpoint_starts_fresh(tmp_path, capsys):
    assert resolve_resume(tmp_path, "auto") is None
    assert "starting a new run" in capsys.readouterr().err


def test_refuses_to_overwrite_a_run_without_resume(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    with pytest.raises(InputError, match="--resume auto"):
        resolve_resume(tmp_path, None)
    with pytest.raises(InputError, match="does not exist"):
        resolve_resume(tmp_path, str(tmp_path / "other.ckpt"))
    assert resolve_resume(tmp_path, "auto") == str(tmp_path / "checkpoints" / "last.ckpt")


# -- SIGTERM + --resume auto (real subprocesses) -------------------------------------------------

def _metric_steps(path: Path) -> list[int]:
    if not path.is_file():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.endswith("}")]


@pytest.mark.slow
def test_sigterm_saves_and_resume_auto_continues(tmp_path):
    out = tmp_path / "run"
    cfg = write_tiny_yaml(tmp_path / "tiny.yaml", out, max_steps=100000, val_every=3)
    cmd = [sys.executable, str(ROOT / "train.py"), "--config", str(cfg)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    deadline = time.time() + 120
    while not any(s >= 3 for s in _metric_steps(out / "metrics.jsonl")):
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "no validation within 120 s"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    log = proc.communicate(timeout=60)[0]
    assert proc.returncode == 143, log
    assert "stopped by SIGTERM" in log and "Traceback" not in log
    stopped = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert stopped >= 3

    target = stopped + 4
    done = subprocess.run([*cmd, "--resume", "auto", f"train.max_steps={target}"], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == target
    steps = _metric_steps(out / "metrics.jsonl")
    assert steps == sorted(set(steps)) and steps[0] == 3 and steps[-1] > stopped

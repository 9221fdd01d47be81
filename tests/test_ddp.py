"""Two-process DDP on the CPU (gloo) through the real CLI: it trains, and rank zero alone writes
the run directory (one metrics line per validation, one set of checkpoints, one psp.pt)."""
import json
import subprocess
import sys

import pytest
import torch

from test_resume import ENV, ROOT
from test_system import write_tiny_yaml


def _train_two_processes(cfg, cwd) -> str:
    """Run train.py with ``cfg`` as two DDP processes on the CPU; their log (the run must succeed)."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--config", str(cfg),
         "train.accelerator=cpu", "train.devices=2", "train.strategy=ddp"],
        cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    return log


@pytest.mark.ddp
def test_two_process_ddp_on_cpu(tmp_path):
    out = tmp_path / "run"
    cfg = write_tiny_yaml(tmp_path / "tiny.yaml", out, max_steps=4, val_every=2)
    log = _train_two_processes(cfg, tmp_path)
    assert "distributed_backend=gloo" in log and "All distributed processes registered" in log

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoints", "config.yaml", "images", "logs", "metrics.jsonl", "psp.pt"]
    assert len(list((out / "images").iterdir())) == 2
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4


@pytest.mark.ddp
def test_two_process_ddp_restyle_e4e_with_its_discriminator(tmp_path):
    """The most demanding family: several backward passes per batch, a second optimiser, rows
    unlocking (parameters without gradients), under DDP; the discriminator's steps do not count."""
    from test_family_training import E4E_RECIPE, RESTYLE

    out = tmp_path / "run"
    extra = ["model.family=restyle_e4e", *RESTYLE, *E4E_RECIPE]
    cfg = write_tiny_yaml(tmp_path / "tiny.yaml", out, max_steps=4, val_every=2, extra=extra)
    log = _train_two_processes(cfg, tmp_path)
    assert "distributed_backend=gloo" in log
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    assert all("l2_iter_2" in r and "discriminator_loss" in r for r in records)
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4 and len(ckpt["optimizer_states"]) == 2

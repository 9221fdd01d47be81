"""Two-process DDP on the CPU (gloo) through the real CLI: it trains, and rank zero alone writes
the run directory (one metrics line per validation, one set of checkpoints, one psp.pt)."""
import json
import subprocess
import sys

import pytest
import torch

from test_resume import ENV, ROOT
from test_system import write_tiny_yaml


@pytest.mark.ddp
def test_two_process_ddp_on_cpu(tmp_path):
    out = tmp_path / "run"
    cfg = write_tiny_yaml(tmp_path / "tiny.yaml", out, max_steps=4, val_every=2)
    done = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--config", str(cfg),
         "train.accelerator=cpu", "train.devices=2", "train.strategy=ddp"],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    assert "distributed_backend=gloo" in log and "All distributed processes registered" in log

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoints", "config.yaml", "images", "logs", "metrics.jsonl", "psp.pt"]
    assert len(list((out / "images").iterdir())) == 2
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4

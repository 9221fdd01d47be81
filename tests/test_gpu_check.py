"""bench/gpu_check.py on the CPU: the smoke run end to end, and the partial report on SIGTERM."""
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import gpu_check  # noqa: E402


def test_smoke_run_writes_json_and_table(tmp_path, capsys):
    assert gpu_check.main(["--smoke", "--out", str(tmp_path / "check")]) == 0
    data = json.loads((tmp_path / "check.json").read_text())
    assert [(k, v["status"]) for k, v in data["stages"].items()] == [("ops", "ok"), ("info", "ok")]
    rows = data["stages"]["ops"]["result"]["rows"]
    assert {r["op"] for r in rows} == set(gpu_check.ops_cases(64, "cpu"))
    assert all(r["forward_ms"] > 0 and r["forward_backward_ms"] > 0 for r in rows)
    assert data["stages"]["info"]["result"]["returncode"] == 0
    table = (tmp_path / "check.md").read_text()
    assert "| ops | ok |" in table and "| upsample2d | float32 | ref |" in table
    assert table in capsys.readouterr().out


def test_no_gpu_is_a_one_line_refusal(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(gpu_check.torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path / "check")]) == 2
    assert capsys.readouterr().err.count("\n") == 1 and not (tmp_path / "check.json").exists()


def test_sigterm_keeps_finished_stages(tmp_path):
    """The second stage is killed by a real SIGTERM: the first stage's result is on disk, the
    second is 'interrupted', the third 'not run', and the handlers are restored."""
    report = gpu_check.Report(tmp_path / "r.json", tmp_path / "r.md", {"device": "cpu"})

    def killed(limit):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        raise AssertionError("SIGTERM did not stop the stage")

    def after_first(limit):
        return {"value": 1}

    stages = [gpu_check.Stage("first", after_first, 10), gpu_check.Stage("second", killed, 10),
              gpu_check.Stage("third", after_first, 10)]
    before = signal.getsignal(signal.SIGTERM)
    gpu_check.run_stages(stages, report, budget_s=60)
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["stages"]["first"]["status"] == "ok" and data["stages"]["first"]["result"] == {"value": 1}
    assert data["stages"]["second"]["status"] == "interrupted" and data["interrupted"] is True
    assert data["stages"]["third"] == {"status": "not run"}
    assert "| second | interrupted |" in (tmp_path / "r.md").read_text()
    assert signal.getsignal(signal.SIGTERM) == before


def test_failed_and_timed_out_stages_do_not_stop_the_run(tmp_path):
    report = gpu_check.Report(tmp_path / "r.json", tmp_path / "r.md", {"device": "cpu"})
    hang = [sys.executable, "-c", "import time; time.sleep(30)"]
    stages = [gpu_check.Stage("hangs", lambda limit: gpu_check.run_command(hang, limit), 1),
              gpu_check.Stage("fails", lambda limit: 1 / 0, 10),
              gpu_check.Stage("ok", lambda limit: {}, 10)]
    start = time.monotonic()
    data = gpu_check.run_stages(stages, report, budget_s=60)
    assert time.monotonic() - start < 20
    assert data["stages"]["hangs"]["status"] == "failed" and "limit" in data["stages"]["hangs"]["error"]
    assert data["stages"]["fails"]["error"].startswith("ZeroDivisionError")
    assert data["stages"]["ok"]["status"] == "ok"


@pytest.mark.parametrize("tail,counts", [
    ("== 312 passed, 4 skipped in 80.1s ==", {"passed": 312, "skipped": 4}),
    ("2 failed, 10 passed, 1 error in 3s", {"failed": 2, "passed": 10, "error": 1}),
])
def test_pytest_counts(tail, counts):
    assert gpu_check.pytest_counts(tail) == counts

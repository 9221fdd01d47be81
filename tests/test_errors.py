"""User errors are one line and exit code 2; a bug in our code keeps its traceback."""
import subprocess
import sys
from pathlib import Path

import pytest

from psp.errors import CheckpointError, ConfigError, InputError, UnsafeCheckpointError, UserError

ROOT = Path(__file__).resolve().parent.parent


def test_one_hierarchy():
    for kind in (ConfigError, InputError, CheckpointError, UnsafeCheckpointError):
        assert issubclass(kind, UserError) and issubclass(kind, ValueError)


@pytest.mark.parametrize("argv, words", [
    (["infer.py", "no/such/folder", "--out", "OUT"], "does not exist"),
    (["infer.py", "IMG", "--out", "OUT", "--checkpoint", "JUNK"], "not a readable PyTorch checkpoint"),
    (["train.py", "--config", "demo", "train.batch_size=zero"], "train.batch_size"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, argv, words):
    (tmp_path / "IMG").mkdir()
    from PIL import Image
    Image.new("RGB", (64, 64)).save(tmp_path / "IMG" / "a.png")
    (tmp_path / "JUNK").write_bytes(b"this is no checkpoint")
    argv = [str(tmp_path / a) if a in ("IMG", "OUT", "JUNK") else a for a in argv]
    argv[0] = str(ROOT / argv[0])
    done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], done.stderr
    assert not (tmp_path / "OUT").exists()


def test_a_bug_keeps_its_traceback(monkeypatch, tmp_path, checkpoint):
    from psp.cli import infer as infer_cli

    def broken(*args, **kwargs):
        raise ValueError("an internal bug")  # not a UserError: must not become a one-line message

    monkeypatch.setattr(infer_cli, "collect_jobs", broken)
    with pytest.raises(ValueError, match="an internal bug"):
        infer_cli.main([str(tmp_path), "--out", str(tmp_path / "out"), "--checkpoint", str(checkpoint)])

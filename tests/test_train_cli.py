"""train.py / psp.cli.train: the entry point, --print-config, --resume handling and exit codes."""
import subprocess
import sys

import pytest
import torch
import yaml

from psp.cli.train import main
from test_resume import ENV, ROOT
from test_system import write_tiny_yaml


def test_train_py_prints_the_resolved_config(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), "--config", "demo", "train.max_steps=9",
                           f"train.output_dir={tmp_path / 'run'}", "--print-config"],
                          cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    printed = yaml.safe_load(done.stdout)
    assert printed["train"]["max_steps"] == 9 and printed["data"]["kind"] == "synthetic"
    assert not (tmp_path / "run").exists()


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "--resume" in capsys.readouterr().out


def test_train_then_refuse_overwrite_then_resume(tmp_path, capsys):
    out = tmp_path / "run"
    cfg = str(write_tiny_yaml(tmp_path / "tiny.yaml", out, max_steps=2, val_every=2))
    assert main(["--config", cfg]) == 0
    assert (out / "config.yaml").is_file() and (out / "psp.pt").is_file()
    capsys.readouterr()

    assert main(["--config", cfg, "train.max_steps=4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--resume auto" in err[0] and str(out) in err[0]

    assert main(["--config", cfg, "--resume", str(tmp_path / "missing.ckpt")]) == 2
    assert "missing.ckpt" in capsys.readouterr().err

    assert main(["--config", cfg, "train.max_steps=4", "--resume", "auto"]) == 0
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["max_steps"] == 4



def test_generator_file_that_does_not_fit_the_config_is_one_line(tmp_path, capsys):
    """A 32 px generator file named in a 64 px config: exit 2, one line naming the file."""
    from stylegan2 import Generator

    g_file = tmp_path / "g32.pt"
    torch.save({"g_ema": Generator(32, 32, 2, channel_multiplier=1, channel_max=16).state_dict()}, g_file)
    cfg = str(write_tiny_yaml(tmp_path / "tiny.yaml", tmp_path / "run"))
    code = main(["--config", cfg, "model.generator.size=64", f"model.generator.checkpoint={g_file}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "g32.pt" in err[0], err
    assert not (tmp_path / "run").exists()

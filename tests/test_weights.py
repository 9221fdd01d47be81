"""Safe checkpoint IO as the psp package uses it (docs/design.md, "Loading files safely"); the crafted-pickle attack on a torch
file itself is in test_stylegan2_io.py."""
import argparse
import os
import pickle

import pytest
import torch

from stylegan2.io import CheckpointFormatError, UnsafeCheckpointError, safe_load
from test_stylegan2_io import RunsACommand


def test_plain_pickle_file_is_refused_too(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(RunsACommand(marker)))
    with pytest.raises((UnsafeCheckpointError, CheckpointFormatError)):
        safe_load(path)
    assert not marker.exists()


def test_rosinality_style_file_with_namespace_loads(tmp_path):
    path = tmp_path / "g.pt"
    args = argparse.Namespace(size=256, channel_multiplier=2, latent=512)
    torch.save({"g_ema": {"style.1.weight": torch.ones(2, 2)}, "args": args,
                "latent_avg": torch.zeros(512)}, path)
    loaded = safe_load(path)
    assert loaded["args"].size == 256
    assert torch.equal(loaded["g_ema"]["style.1.weight"], torch.ones(2, 2))


def test_not_a_checkpoint_and_missing_file(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointFormatError, match="junk.pt"):
        safe_load(junk)
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        safe_load(tmp_path / "absent.pt")


def test_torch_load_is_never_called_unsafely():
    """A guard against regressions: no module calls torch.load without weights_only=True."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    offenders = []
    for folder in ("psp", "stylegan2", "bench"):
        for dirpath, _, files in os.walk(os.path.join(root, folder)):
            for name in files:
                if not name.endswith(".py"):
                    continue
                text = open(os.path.join(dirpath, name)).read()
                for line_no, line in enumerate(text.splitlines(), 1):
                    if "torch.load(" in line and "weights_only=True" not in line:
                        offenders.append(f"{name}:{line_no}")
    assert not offenders, f"torch.load without weights_only=True: {offenders}"

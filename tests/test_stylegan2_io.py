"""Safe checkpoint loading (stylegan2.io) and the rosinality-file loader (stylegan2.loader)."""
import argparse
import hashlib
import os

import pytest
import torch

from stylegan2 import Generator, UnsafeCheckpointError, load_generator, safe_load, sha256_file
from stylegan2.io import CheckpointFormatError
from stylegan2.loader import build_generator, infer_generator_config


class RunsACommand:
    """Unpickling this calls os.system: the attack a weights-only load must refuse."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_refuses_a_pickle_that_would_run_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"g_ema": {"w": torch.zeros(1)}, "payload": RunsACommand(marker)}, path)
    with pytest.raises(UnsafeCheckpointError) as info:
        safe_load(path)
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert str(path) in message and "system" in message and "execute code" in message
    assert "\n" not in message
    assert not marker.exists()
    with pytest.raises(UnsafeCheckpointError):
        load_generator(path)
    assert not marker.exists()


def test_accepts_a_rosinality_style_file_with_namespace(tmp_path):
    path = tmp_path / "ckpt.pt"
    args = argparse.Namespace(size=16, channel_multiplier=2, lr=0.002)
    torch.save({"g_ema": {"w": torch.ones(2)}, "args": args, "latent_avg": torch.zeros(4)}, path)
    loaded = safe_load(path)
    assert loaded["args"] == args and torch.equal(loaded["g_ema"]["w"], torch.ones(2))
    # The allowance is scoped to the call: plain torch.load still refuses the Namespace.
    with pytest.raises(Exception, match="Namespace"):
        torch.load(path, weights_only=True)


def test_missing_and_non_torch_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.pt"):
        safe_load(tmp_path / "nothere.pt")
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointFormatError, match="notes.pt: not a readable PyTorch checkpoint"):
        safe_load(text)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.pt"):
        safe_load(empty)


def test_sha256_file(tmp_path):
    path = tmp_path / "blob.bin"
    data = os.urandom(3 << 20)
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def tiny_generator(size=32, cm=2, cap=8, style_dim=16, n_mlp=2):
    torch.manual_seed(0)
    return Generator(size, style_dim, n_mlp, channel_multiplier=cm, channel_max=cap).eval()


@pytest.mark.parametrize("wrapped", [True, False])
def test_load_generator_round_trip(tmp_path, wrapped):
    g = tiny_generator()
    path = tmp_path / "g.pt"
    latent_avg = torch.randn(16)
    if wrapped:
        torch.save({"g_ema": g.state_dict(), "latent_avg": latent_avg,
                    "args": argparse.Namespace(size=32)}, path)
    else:
        torch.save(g.state_dict(), path)
    loaded, avg = load_generator(path)
    assert (loaded.size, loaded.style_dim, len(loaded.style) - 1) == (32, 16, 2)
    assert not loaded.training
    assert torch.equal(avg, latent_avg) if wrapped else avg is None
    w = torch.randn(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded([w], randomize_noise=False)[0], g([w], randomize_noise=False)[0],
                                   rtol=0, atol=0)


def shapes_of(size, cm, cap=None):
    """A state dict of meta tensors (shapes only) for the inference tests."""
    with torch.device("meta"):
        return Generator(size, 512, 8, channel_multiplier=cm, channel_max=cap).state_dict()


@pytest.mark.parametrize("size,cm,cap", [(1024, 2, None), (1024, 1, None), (256, 2, None),
                                         (512, 4, None), (32, 2, None), (512, 1, 64), (64, 2, 32)])
def test_infers_size_multiplier_and_cap(size, cm, cap):
    config = infer_generator_config(shapes_of(size, cm, cap))
    assert config["size"] == size and config["style_dim"] == 512 and config["n_mlp"] == 8
    if size >= 64 and cap is None:
        assert config["channel_multiplier"] == cm
    assert config["channel_max"] == cap


def test_multiplier_mismatch_names_key_shapes_and_the_files_config(tmp_path):
    g = Generator(512, 8, 1, channel_multiplier=1, channel_max=64)
    path = tmp_path / "g.pt"
    torch.save({"g_ema": g.state_dict()}, path)
    with pytest.raises(ValueError) as info:
        load_generator(path, channel_multiplier=2)
    message = str(info.value)
    assert "convs.12.conv.weight" in message
    assert "[1, 32, 64, 3, 3]" in message and "[1, 64, 64, 3, 3]" in message
    assert "size=512" in message and "channel_multiplier=1" in message and str(path) in message


def test_size_mismatch_both_ways():
    sd = tiny_generator(size=32).state_dict()
    with pytest.raises(ValueError, match=r"missing key 'noises.noise_7'.*size=32"):
        build_generator(sd, size=64)
    with pytest.raises(ValueError, match=r"does not have.*size=32"):
        build_generator(sd, size=16)


def test_not_a_generator(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"encoder": {"w": torch.zeros(1)}, "opts": {}}, path)
    with pytest.raises(ValueError, match=r"other.pt: no StyleGAN2 generator found.*encoder"):
        load_generator(path)
    with pytest.raises(ValueError, match="not a StyleGAN2 generator state dict: no 'input.input'"):
        infer_generator_config({"w": torch.zeros(1)})

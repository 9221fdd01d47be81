"""The editing commands on a tiny pSp checkpoint: outputs, edit-then-render equality, one-line errors."""
import numpy as np
import pytest
import torch
from PIL import Image

from psp.cli.edit import decode, main, strip
from psp.editing.ops import edit
from psp.models.inference import InferenceModel
from psp.inference.outputs import load_latent, save_latent
from stylegan2.fingerprint import generator_sha256


@pytest.fixture(scope="module")
def model(checkpoint):
    return InferenceModel.from_checkpoint(checkpoint)


@pytest.fixture
def latents(tmp_path, model, checkpoint):
    folder = tmp_path / "latents"
    with torch.no_grad():
        w = model.generator.get_latent(torch.randn(3, model.generator.style_dim))
    for i, row in enumerate(w):
        save_latent(folder / f"face{i}.pt", row.expand(model.n_styles, -1), {"checkpoint": str(checkpoint)})
    return folder


def test_edit_then_render_equals_python_edit_then_decode(tmp_path, latents, model):
    d = torch.randn(model.generator.style_dim)
    np.save(tmp_path / "boundary.npy", d.numpy()[None])  # InterFaceGAN [1, D]
    out = tmp_path / "out"
    assert main(["edit", str(latents), "--direction", str(tmp_path / "boundary.npy"),
                 "--strength", "-2:2:3", "--layers", "0-3", "--out", str(out), "--animate"]) == 0
    codes, _ = load_latent(latents / "face1.pt")
    expected = torch.stack([edit(codes, d, s, [0, 1, 2, 3]) for s in (-2.0, 0.0, 2.0)])
    saved = torch.stack([load_latent(out / f"face1_{i:02d}.pt")[0] for i in range(3)])
    assert torch.equal(saved, expected)
    assert torch.equal(decode(model, saved), decode(model, expected))
    meta = load_latent(out / "face1_02.pt")[1]
    assert meta["edit"]["strength"] == 2.0 and meta["generator_sha256"] == generator_sha256(model.generator)
    png = np.asarray(Image.open(out / "face1.png"))
    assert np.array_equal(png, np.asarray(strip(decode(model, expected))))
    assert Image.open(out / "face1.gif").n_frames == 4
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 1 + 3 * 3  # header + latents x strengths


def test_one_line_errors_write_nothing(tmp_path, latents, model, checkpoint, capsys):
    out = tmp_path / "out"
    good = tmp_path / "good.npy"
    np.save(good, np.ones(model.generator.style_dim, dtype=np.float32))
    np.save(tmp_path / "narrow.npy", np.ones(7, dtype=np.float32))
    torch.save(torch.ones(model.n_styles + 1, model.generator.style_dim), tmp_path / "rows.pt")
    (tmp_path / "empty").mkdir()
    other = tmp_path / "other"
    save_latent(other / "x.pt", torch.zeros(model.n_styles, model.generator.style_dim),
                {"checkpoint": str(checkpoint), "generator_sha256": "0" * 64})
    older = tmp_path / "older"  # infer.py files that record only the checkpoint file's sha256
    save_latent(older / "x.pt", torch.zeros(model.n_styles, model.generator.style_dim),
                {"checkpoint": str(checkpoint), "checkpoint_sha256": "1" * 64})
    cases = [
        ([str(latents), "--direction", str(good), "--strength", "-3:3"], "strength"),
        ([str(latents), "--direction", str(tmp_path / "narrow.npy")], "does not fit"),
        ([str(latents), "--direction", str(tmp_path / "rows.pt")], "does not fit"),
        ([str(latents), "--direction", str(good), "--layers", "0-99"], "layer range"),
        ([str(tmp_path / "empty"), "--direction", str(good)], "no latent files"),
        ([str(other), "--direction", str(good)], "another generator"),
        ([str(older), "--direction", str(good)], "another checkpoint"),
    ]
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        cases.append(([str(latents), "--direction", str(good), "--animate", "mp4"], "imageio-ffmpeg"))
    for args, message in cases:
        assert main(["edit", *args, "--out", str(out)]) == 2, args
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert not out.exists()


def test_computed_and_fitted_directions_via_cache(tmp_path, latents, model, checkpoint, capsys):
    ck = ["--checkpoint", str(checkpoint)]
    assert main(["directions", "sefa", "--layers", "0-3", "--k", "2", *ck]) == 0
    assert main(["directions", "ganspace", "--samples", "500", "--k", "2", *ck]) == 0
    labels = tmp_path / "labels.csv"
    labels.write_text("file,label\n" + "".join(f"s{i}.pt,{i % 2}\n" for i in range(20)))
    fit_dir = tmp_path / "fitlat"
    with torch.no_grad():
        w = model.generator.get_latent(torch.randn(20, model.generator.style_dim))
    for i, row in enumerate(w):
        save_latent(fit_dir / f"s{i}.pt", row.expand(model.n_styles, -1), {"checkpoint": str(checkpoint)})
    assert main(["directions", "fit", str(fit_dir), "--labels", str(labels), "--name", "parity",
                 "--orthogonal-to", "ganspace_0", *ck]) == 0
    assert "held-out accuracy" in capsys.readouterr().out
    assert main(["directions", "list", *ck]) == 0
    listing = capsys.readouterr().out
    for name in ("sefa_0-3_0", "ganspace_1", "parity"):
        assert name in listing
    assert main(["directions", "show", "sefa_0-3_1", "--preview", str(tmp_path / "p.png"), *ck]) == 0
    assert Image.open(tmp_path / "p.png").size == (5 * 32, 3 * 32)
    out = tmp_path / "out"
    assert main(["edit", str(latents / "face0.pt"), "--direction", "sefa_0-3_0", "--direction", "parity",
                 "--strength", "1", "--out", str(out)]) == 0
    assert (out / "face0_00.pt").is_file()


def test_mix_and_interpolate(tmp_path, latents, model):
    a, b = latents / "face0.pt", latents / "face1.pt"
    assert main(["mix", str(a), str(b), "--layers", "0-3", "--out", str(tmp_path / "m")]) == 0
    mixed, _ = load_latent(tmp_path / "m" / "mix.pt")
    ca, cb = load_latent(a)[0], load_latent(b)[0]
    assert torch.equal(mixed[:4], cb[:4]) and torch.equal(mixed[4:], ca[4:])
    assert main(["interpolate", str(a), str(b), "--steps", "4", "--out", str(tmp_path / "i"),
                 "--spherical"]) == 0
    assert torch.allclose(load_latent(tmp_path / "i" / "step_03.pt")[0], cb, atol=1e-5)
    assert Image.open(tmp_path / "i" / "interpolation.png").size == (4 * 32, 32)

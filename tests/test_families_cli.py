"""infer.py, infer.py render and psp evaluate with e4e and ReStyle models (tiny, in our psp.pt format)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_PSP
from psp.cli.evaluate import main as evaluate_main
from psp.cli.infer import main as infer_main
from psp.config import load_config
from psp.inference.outputs import load_latent
from psp.io.images import load_rgb, to_tensor
from psp.models.model import PSP

FAMILY_OVERRIDES = {"e4e": ["model.family=e4e"],
                    "restyle_psp": ["model.family=restyle_psp", "model.encoder.input_nc=6", "model.iterations=3"],
                    "restyle_e4e": ["model.family=restyle_e4e", "model.encoder.input_nc=6", "model.iterations=3"]}


@pytest.fixture(scope="module", params=sorted(FAMILY_OVERRIDES))
def family_checkpoint(request, tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp(request.param) / f"{request.param}.pt"
    PSP.from_config(load_config([], TINY_PSP + FAMILY_OVERRIDES[request.param], command="model").model).save(path)
    return request.param, path


@pytest.fixture(scope="module")
def restyle_checkpoint(tmp_path_factory):
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("restyle") / "restyle_psp.pt"
    PSP.from_config(load_config([], TINY_PSP + FAMILY_OVERRIDES["restyle_psp"], command="model").model).save(path)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    for i, name in enumerate(["a.png", "b.png", "c.png"]):
        pixels = np.random.default_rng(i).integers(0, 256, (40, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / name)
    return root


def infer(*argv) -> int:
    return infer_main([str(a) for a in argv] + ["--quiet", "--workers", "0"])


def test_infer_and_render_work_with_every_family(family_checkpoint, photos, tmp_path):
    family, checkpoint = family_checkpoint
    model = PSP.from_checkpoint(checkpoint)
    out = tmp_path / "latents"
    iterations = ["--iterations", 2] if model.is_iterative else []
    assert infer(photos, "--out", out, "--checkpoint", checkpoint, "--batch-size", 2, "--save-images", *iterations) == 0
    expected_iterations = 2 if model.is_iterative else 1
    w_plus, meta = load_latent(out / "b.pt")
    assert meta["family"] == family and meta["iterations"] == expected_iterations
    x = to_tensor(load_rgb(photos / "b.png"), model.input_size)[None]
    with torch.inference_mode():
        torch.testing.assert_close(w_plus, model.encode(x, iterations=expected_iterations)[0], rtol=1e-4, atol=1e-4)
    header = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
    assert header["family"] == family and header["iterations"] == expected_iterations
    assert header["model"]["family"] == family
    rendered = tmp_path / "rendered"
    assert infer_main(["render", str(out), "--out", str(rendered), "--quiet"]) == 0
    with Image.open(rendered / "b.png") as a, Image.open(out / "b.png") as b:
        assert np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max() <= 1


def test_restyle_default_iterations_and_refinement_after_the_encoder(restyle_checkpoint, photos, tmp_path):
    model = PSP.from_checkpoint(restyle_checkpoint)
    out = tmp_path / "default"
    assert infer(photos / "a.png", "--out", out, "--checkpoint", restyle_checkpoint) == 0
    w_default, meta = load_latent(out / "a.pt")
    assert meta["iterations"] == 3  # the model's model.iterations
    refined = tmp_path / "refined"
    assert infer(photos / "a.png", "--out", refined, "--checkpoint", restyle_checkpoint, "--refine-steps", 3,
                 "refine.lpips=0", "refine.lr=0.05") == 0
    w_refined, meta = load_latent(refined / "a.pt")
    assert meta["refine_steps"] == 3 and meta["iterations"] == 3
    assert not torch.allclose(w_refined, w_default)
    x = to_tensor(load_rgb(photos / "a.png"), model.input_size)[None]
    with torch.inference_mode():
        l2 = lambda w: (model.decode(w[None]) - x).pow(2).mean().item()  # noqa: E731
        assert l2(w_refined) < l2(w_default)


def test_iterations_for_a_single_pass_model_is_a_usage_error(checkpoint, photos, tmp_path, capsys):
    assert infer(photos / "a.png", "--out", tmp_path / "o", "--checkpoint", checkpoint, "--iterations", 3) == 2
    err = capsys.readouterr().err.strip()
    assert "needs a ReStyle model" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_evaluate_reports_every_restyle_pass(restyle_checkpoint, photos, tmp_path):
    out = tmp_path / "synthetic"
    assert evaluate_main(["--checkpoint", str(restyle_checkpoint), "--synthetic", "2", "--out", str(out),
                          "--no-lpips", "--quiet"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert [row["method"] for row in report["table"]] == ["w_avg", "encoder pass 1", "encoder pass 2", "encoder"]
    folder = tmp_path / "folder"
    assert evaluate_main(["--checkpoint", str(restyle_checkpoint), str(photos), "--out", str(folder),
                          "--no-lpips", "--iterations", "2", "--quiet"]) == 0
    report = json.loads((folder / "metrics.json").read_text())
    assert [row["method"] for row in report["table"]] == ["encoder pass 1", "encoder"]
    assert report["config"]["iterations"] == 2 and report["method"] == "encoder"
    assert all(row["n"] == 3 for row in report["table"])

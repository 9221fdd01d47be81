"""psp.evaluation.evaluate end to end on a tiny model, and the metrics, statistics and report it is built from."""
import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from psp.evaluation.report import Extremes, draw_report
from psp.cli.evaluate import main
from psp.models.lpips import LPIPSLoss
from psp.evaluation.metrics import ReconstructionMetrics, l2_per_image, summarize

SCHEMA_KEYS = {"format", "version", "mode", "created", "checkpoint", "config", "machine", "method", "n_images",
               "n_failed", "metrics", "seconds_per_image", "table", "table_markdown", "definitions", "failed"}


def _photo(path: Path, seed: int, size=(40, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ramp = np.linspace(0, 255, size[0])[None, :, None] * np.ones((size[1], 1, 3))
    pixels = ramp * (seed + 1) / 6 + np.random.default_rng(seed).normal(0, 15, ramp.shape)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture
def photos(tmp_path) -> Path:
    root = tmp_path / "photos"
    for i, rel in enumerate(["a.png", "b.jpg", "sub/c.png", "sub/deeper/d.png", "e.png"]):
        _photo(root / rel, i)
    (root / "sub" / "broken.png").write_bytes(b"not an image")
    return root


def evaluate(*argv) -> int:
    return main([str(a) for a in argv] + ["--quiet"])


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------------------------
# The command


def test_checkpoint_mode_scores_every_readable_image(checkpoint, photos, tmp_path, capsys):
    out = tmp_path / "eval"
    code = evaluate("--checkpoint", checkpoint, photos, "--out", out, "--no-lpips", "--workers", 0,
                    "--batch-size", 2)
    assert code == 1  # the broken file is reported, the rest scored
    captured = capsys.readouterr()
    assert "failed: sub/broken.png: not an image" in captured.err
    report = json.loads((out / "metrics.json").read_text())
    assert SCHEMA_KEYS <= set(report)
    assert report["mode"] == "checkpoint" and report["method"] == "encoder"
    assert report["n_images"] == 5 and report["n_failed"] == 1
    assert report["failed"][0]["path"] == "sub/broken.png"
    assert len(report["checkpoint"]["sha256"]) == 64
    assert set(report["metrics"]) == {"l2", "ms_ssim"}  # no LPIPS asked for, no ArcFace given
    assert report["seconds_per_image"] > 0
    assert {"cpu", "usable_cores", "torch", "torch_threads", "cuda_devices"} <= set(report["machine"])
    rows = _rows(out / "per_image.csv")
    assert [r["path"] for r in rows] == ["a.png", "b.jpg", "e.png", "sub/c.png", "sub/deeper/d.png"]
    l2 = [float(r["l2"]) for r in rows]
    assert report["metrics"]["l2"]["mean"] == pytest.approx(sum(l2) / 5, rel=1e-5)
    assert "| encoder |" in captured.out
    with Image.open(out / "report.png") as png:
        assert png.mode == "RGB" and png.width >= 640 and png.height >= 400


def test_checkpoint_mode_with_refinement_improves_l2(checkpoint, tmp_path):
    photos = tmp_path / "two"
    _photo(photos / "x.png", 1)
    _photo(photos / "y.png", 4)
    plain, refined = tmp_path / "plain", tmp_path / "refined"
    assert evaluate("--checkpoint", checkpoint, photos, "--out", plain, "--no-lpips", "--workers", 0) == 0
    assert evaluate("--checkpoint", checkpoint, photos, "--out", refined, "--no-lpips", "--workers", 0,
                    "--refine-steps", 3, "--refine-lr", 0.05) == 0
    before = json.loads((plain / "metrics.json").read_text())
    after = json.loads((refined / "metrics.json").read_text())
    assert after["method"] == "encoder + refine 3"
    assert after["config"]["refine_steps"] == 3 and after["config"]["refine_lpips"] == 0.0
    assert after["metrics"]["l2"]["mean"] < before["metrics"]["l2"]["mean"]


def test_pairs_mode_matches_by_relative_path(photos, tmp_path, capsys):
    outputs = tmp_path / "outputs"
    # a perfect copy under another extension, a noisy one, and no output for the rest
    (outputs / "sub").mkdir(parents=True)
    Image.open(photos / "a.png").save(outputs / "a.webp", lossless=True)
    noisy = np.asarray(Image.open(photos / "sub" / "c.png")).astype(float)
    noisy += np.random.default_rng(0).normal(0, 40, noisy.shape)
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(outputs / "sub" / "c.png")
    out = tmp_path / "eval"
    code = evaluate("--targets", photos, "--outputs", outputs, "--out", out, "--no-lpips", "--size", 40,
                    "--workers", 0)
    assert code == 1
    report = json.loads((out / "metrics.json").read_text())
    assert report["mode"] == "pairs" and report["checkpoint"] is None and report["n_images"] == 2
    assert {f["path"] for f in report["failed"]} == {"b.jpg", "e.png", "sub/deeper/d.png", "sub/broken.png"}
    assert report["seconds_per_image"] is None
    rows = {r["path"]: r for r in _rows(out / "per_image.csv")}
    assert float(rows["a.png"]["l2"]) == 0.0
    assert float(rows["a.png"]["ms_ssim"]) == pytest.approx(1.0, abs=1e-5)
    assert float(rows["sub/c.png"]["l2"]) > 0.01 and float(rows["sub/c.png"]["ms_ssim"]) < 0.9
    assert "no reconstruction in" in capsys.readouterr().err


def test_synthetic_mode_writes_the_benchmark_table(checkpoint, tmp_path, capsys):
    out = tmp_path / "synthetic"
    code = evaluate("--checkpoint", checkpoint, "--synthetic", 3, "--refine-steps", 2, "--refine-lr", 0.05,
                    "--out", out, "--no-lpips", "--batch-size", 3)
    assert code == 0
    report = json.loads((out / "metrics.json").read_text())
    methods = [row["method"] for row in report["table"]]
    assert methods == ["w_avg", "encoder", "encoder + refine 2"]
    assert report["method"] == "encoder + refine 2" and report["config"]["seed"] == 1_000_000
    for row in report["table"]:
        assert row["n"] == 3 and set(row["metrics"]) == {"l2", "ms_ssim", "latent_mse"}
    table = {row["method"]: row for row in report["table"]}
    assert table["w_avg"]["seconds_per_image"] is None and table["encoder"]["seconds_per_image"] > 0
    assert (table["encoder + refine 2"]["metrics"]["l2"]["mean"]
            < table["encoder"]["metrics"]["l2"]["mean"])
    printed = capsys.readouterr().out
    assert report["table_markdown"] in printed
    assert printed.splitlines()[0] == "| method | L2 | MS-SSIM | W+ MSE | s / image |"
    rows = _rows(out / "per_image.csv")
    assert len(rows) == 9 and rows[0]["method"] == "w_avg" and rows[0]["path"] == "synthetic/000000"


@pytest.mark.parametrize("argv, message", [
    ([], "nothing to evaluate"),
    (["--targets", "{photos}", "--out", "{tmp}/o"], "--targets and --outputs go together"),
    (["--checkpoint", "{ckpt}", "--out", "{tmp}/o"], "needs IMAGES_DIR"),
    (["--checkpoint", "{ckpt}", "--synthetic", "0", "--out", "{tmp}/o"], "--synthetic must be a positive"),
    (["--checkpoint", "{ckpt}", "{photos}", "--synthetic", "2", "--out", "{tmp}/o"], "not both"),
    (["--checkpoint", "{tmp}/nope.pt", "{photos}", "--out", "{tmp}/o"], "nope.pt' does not exist"),
    (["--checkpoint", "{ckpt}", "{tmp}/missing", "--out", "{tmp}/o"], "is not a folder"),
    (["--checkpoint", "{ckpt}", "{photos}"], "--out DIR is required"),
    (["--checkpoint", "{ckpt}", "{photos}", "--out", "{photos}/a.png"], "is a file"),
    (["--checkpoint", "{ckpt}", "{photos}", "--out", "{tmp}/o", "--no-lpips", "--lpips-weights", "{ckpt}"],
     "contradict"),
    (["--targets", "{photos}", "--outputs", "{photos}", "--refine-steps", "3", "--out", "{tmp}/o"],
     "--refine-steps needs --checkpoint"),
    (["--checkpoint", "{ckpt}", "{photos}", "--out", "{tmp}/o", "--batch-size", "0"], "infer.batch_size' must be"),
    (["--checkpoint", "{ckpt}", "{photos}", "--out", "{tmp}/o", "--bogus"], "unrecognized arguments"),
])
def test_usage_errors_are_one_line_with_exit_code_2(argv, message, checkpoint, photos, tmp_path, capsys):
    values = {"ckpt": checkpoint, "photos": photos, "tmp": tmp_path}
    code = main([a.format(**values) for a in argv])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "o").exists()


def test_missing_lpips_backbone_is_a_usage_error(checkpoint, photos, tmp_path, monkeypatch, capsys):
    def offline(url, dst, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    code = evaluate("--checkpoint", checkpoint, photos, "--out", tmp_path / "o")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert "alexnet-owt-7be5be79.pth" in err[-1] and "lpips.weights" in err[-1]


def test_a_file_that_is_not_arcface_is_a_usage_error(checkpoint, photos, tmp_path, capsys):
    bogus = tmp_path / "not_arcface.pth"
    torch.save({"weight": torch.zeros(3)}, bogus)
    code = evaluate("--checkpoint", checkpoint, photos, "--out", tmp_path / "o", "--no-lpips", "--arcface", bogus)
    err = capsys.readouterr().err
    assert code == 2 and "ArcFace" in err and "not_arcface.pth" in err


# ----------------------------------------------------------------------------------------------
# Metrics


class TinyRecogniser(nn.Module):
    """A stand-in for ArcFace: [B, 3, 112, 112] -> unit [B, 16]."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, 16)

    def forward(self, x):
        return F.normalize(self.fc(F.adaptive_avg_pool2d(x, 8).flatten(1)), dim=1)


def _images(batch=3, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size, generator=g) * 2 - 1


def test_metrics_of_identical_images_are_perfect():
    torch.manual_seed(0)
    metrics = ReconstructionMetrics(LPIPSLoss(pretrained=False), TinyRecogniser()).eval()
    y = _images()
    scores = metrics(y, y)
    assert metrics.names == ("l2", "lpips", "ms_ssim", "id_similarity")
    assert all(v.shape == (3,) and v.dtype == torch.float32 for v in scores.values())
    assert torch.equal(scores["l2"], torch.zeros(3))
    assert torch.allclose(scores["lpips"], torch.zeros(3), atol=1e-6)
    assert torch.allclose(scores["ms_ssim"], torch.ones(3), atol=1e-5)
    assert torch.allclose(scores["id_similarity"], torch.ones(3), atol=1e-5)


def test_metrics_get_worse_with_more_noise():
    metrics = ReconstructionMetrics()
    y = _images(batch=1).repeat(3, 1, 1, 1)
    noise = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    y_hat = (y + noise * torch.tensor([0.05, 0.2, 0.5]).view(3, 1, 1, 1)).clamp(-1, 1)
    scores = metrics(y_hat, y)
    assert scores["l2"][0] < scores["l2"][1] < scores["l2"][2]
    assert scores["ms_ssim"][0] > scores["ms_ssim"][1] > scores["ms_ssim"][2]


def _ms_ssim_oracle(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Zhao et al.'s MS-SSIM from its definition, float64: five Gaussians (sigma 0.5..8) at full
    resolution, 33-tap windows, zero padding 16; luminance at the coarsest scale times the product
    of contrast-structure terms, averaged over channels and pixels. x, y [B, C, H, W] in [0, 1] -> [B]."""
    x, y = x.double(), y.double()
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    taps = torch.arange(33, dtype=torch.float64) - 16
    product, luminance = 1.0, None
    for sigma in (0.5, 1.0, 2.0, 4.0, 8.0):
        g = torch.exp(-taps ** 2 / (2 * sigma ** 2))
        window = torch.outer(g, g) / torch.outer(g, g).sum()
        window = window.expand(x.shape[1], 1, 33, 33)

        def blur(t):
            return F.conv2d(t, window, padding=16, groups=x.shape[1])

        mx, my = blur(x), blur(y)
        vx, vy, cov = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
        product = product * (2 * cov + c2) / (vx + vy + c2)
        luminance = (2 * mx * my + c1) / (mx ** 2 + my ** 2 + c1)
    return (luminance * product).mean(dim=(1, 2, 3))


def test_ms_ssim_is_the_full_resolution_definition():
    y = _images(batch=2, size=40)
    y_hat = (y + 0.3 * torch.randn(y.shape, generator=torch.Generator().manual_seed(2))).clamp(-1, 1)
    ours = ReconstructionMetrics()(y_hat, y)["ms_ssim"]
    assert torch.allclose(ours.double(), _ms_ssim_oracle((y_hat + 1) / 2, (y + 1) / 2), atol=1e-5)


def test_l2_is_the_mean_square_in_minus_one_to_one_units():
    y = torch.zeros(2, 3, 4, 4, dtype=torch.float64)
    y_hat = y.clone()
    y_hat[1] = 1.0  # half of [-1, 1]'s range everywhere
    assert l2_per_image(y_hat, y).tolist() == [0.0, 1.0]


def test_metric_shape_errors():
    metrics = ReconstructionMetrics(LPIPSLoss(pretrained=False))
    with pytest.raises(ValueError, match="same shape"):
        metrics(_images(2), _images(3))
    with pytest.raises(ValueError, match="at least 32x32"):
        metrics(_images(size=16), _images(size=16))


def test_summarize():
    assert summarize([1.0, 2.0, 3.0, 4.0]) == {"n": 4, "mean": 2.5, "std": math.sqrt(1.25), "median": 2.5,
                                               "min": 1.0, "max": 4.0}
    odd = summarize([3.0, float("nan"), 1.0, 2.0])
    assert odd["n"] == 3 and odd["non_finite"] == 1 and odd["median"] == 2.0
    assert summarize([])["mean"] is None


# ----------------------------------------------------------------------------------------------
# Report


@pytest.mark.parametrize("metric", ["l2", "ms_ssim"])
def test_extremes_keep_the_k_best_and_worst(metric):
    values = [0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 0.8]
    extremes = Extremes(metric, k=2, thumb=8)
    image = torch.zeros(3, 4, 4)
    for i, v in enumerate(values):
        extremes.add(f"img{i}", image, image, {metric: v})
    higher_better = metric == "ms_ssim"
    ranked = sorted(values, reverse=higher_better)
    assert [e.scores[metric] for e in extremes.best] == ranked[:2]
    assert [e.scores[metric] for e in extremes.worst] == ranked[::-1][:2]
    assert extremes.best[0].target.size == (8, 8)


def test_report_draws_with_few_or_no_examples():
    extremes = Extremes("l2", k=3)
    assert draw_report("empty", ["nothing"], extremes, {"l2": []}, {"l2": None}).width >= 640
    extremes.add("only.png", _images(1)[0], _images(1, seed=1)[0], {"l2": 0.5, "ms_ssim": 0.2})
    image = draw_report("one", ["a line"], extremes, {"l2": [0.5], "ms_ssim": [0.2]}, {"l2": 0.5, "ms_ssim": 0.2})
    assert image.mode == "RGB"

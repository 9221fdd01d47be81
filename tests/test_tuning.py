"""Pivotal tuning and compact generator deltas on a tiny generator: the tuning, the delta maths,
the delta files' safety, and the commands that write and draw them (infer, render, PSP.decode)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from psp.cli.edit import main as edit_main
from psp.cli.infer import main
from psp.config import TuneConfig
from psp.inference.outputs import DELTA_KEY, load_latent
from psp.inference.refine import reconstruct
from psp.models.model import PSP
from psp.tuning import locality_codes, save_delta, tune
from stylegan2 import Generator
from stylegan2.delta import (DeltaFileError, apply_delta, compress_delta, delta_to_record, load_delta,
                             matrix_shape)
from stylegan2.fingerprint import generator_sha256

SIZE, STYLE_DIM = 16, 16
# Few steps, a large learning rate: the effect is visible in seconds. Pixels only (no LPIPS weights here).
FAST = TuneConfig(steps=6, lr=3e-3, lpips=0.0, locality=0.1, stop_lpips=0.0)


@pytest.fixture(scope="module")
def generator():
    torch.manual_seed(3)
    return Generator(SIZE, STYLE_DIM, n_mlp=2, channel_multiplier=1, channel_max=16, impl="ref").eval()


def _problem(generator, n=2, seed=4):
    """Images the generator cannot draw (smooth random fields) and pivots (its average code)."""
    g = torch.Generator().manual_seed(seed)
    targets = F.interpolate(torch.rand(n, 3, 4, 4, generator=g) * 2 - 1, size=SIZE, mode="bilinear")
    with torch.no_grad():
        w_avg = generator.mean_latent(256)
    pivots = w_avg[:, None].repeat(n, generator.n_latent, 1)
    return targets, pivots, w_avg


def _l2(generator, pivots, targets):
    with torch.no_grad():
        return (reconstruct(generator, pivots, tuple(targets.shape[-2:])) - targets).pow(2).mean().item()


@pytest.fixture(scope="module")
def tuned(generator):
    targets, pivots, w_avg = _problem(generator)
    return tune(generator, targets, pivots, FAST, w_avg=w_avg)


def test_tuning_lowers_the_image_loss_and_leaves_the_base_alone(generator):
    targets, pivots, w_avg = _problem(generator)
    before = generator_sha256(generator)
    flags = [p.requires_grad for p in generator.parameters()]
    result = tune(generator, targets, pivots, FAST, w_avg=w_avg)
    assert generator_sha256(generator) == before
    assert [p.requires_grad for p in generator.parameters()] == flags
    assert all(p.grad is None for p in generator.parameters())
    assert _l2(result.generator, pivots, targets) < 0.7 * _l2(generator, pivots, targets)
    assert result.steps == FAST.steps and result.history.shape == (FAST.steps + 1,)
    assert not any(p.requires_grad for p in result.generator.parameters())
    # The mapping network is off the path of W+ codes: unchanged.
    base = dict(generator.named_parameters())
    assert all(torch.equal(p, base[n]) for n, p in result.generator.named_parameters() if n.startswith("style."))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_the_inference_rewrite_of_a_clamped_generator_tunes_and_round_trips(device):
    """NVIDIA imports are Generators with a conv_clamp; inversion uses the inference rewrite."""
    from stylegan2.inference import optimize_generator_for_inference

    torch.manual_seed(5)
    spec = Generator(SIZE, STYLE_DIM, n_mlp=2, channel_multiplier=1, channel_max=16, conv_clamp=0.5)
    base = optimize_generator_for_inference(spec).to(device)
    targets, pivots, w_avg = _problem(base.cpu())
    base.to(device)
    targets, pivots, w_avg = targets.to(device), pivots.to(device), w_avg.to(device)
    before = generator_sha256(base)
    result = tune(base, targets, pivots, FAST, w_avg=w_avg)
    assert generator_sha256(base) == before and type(result.generator) is type(base)
    assert _l2(result.generator, pivots, targets) < _l2(base, pivots, targets)
    drawn = apply_delta(base, compress_delta(base, result.generator, rank=0))
    with torch.no_grad():
        assert torch.allclose(reconstruct(drawn, pivots, (SIZE, SIZE)),
                              reconstruct(result.generator, pivots, (SIZE, SIZE)), atol=1e-5)


def test_inference_mode_callers_and_a_custom_lpips(generator):
    targets, pivots, w_avg = _problem(generator, n=1)
    calls = []

    def distance(a, b):  # per-image, like LPIPSLoss(reduction="none")
        calls.append(a.shape[0])
        return (a - b).abs().flatten(1).mean(1)

    with torch.inference_mode():
        result = tune(generator, targets, pivots, TuneConfig(steps=2, lr=3e-3, lpips=1.0), lpips=distance, w_avg=w_avg)
    assert result.steps == 2 and calls  # the image and the locality terms both used it
    with pytest.raises(ValueError, match="cfg.lpips=0"):
        tune(generator, targets, pivots, TuneConfig(steps=1, lpips=1.0))


def test_early_stop_at_the_lpips_threshold(generator):
    targets, pivots, w_avg = _problem(generator, n=1)
    result = tune(generator, targets, pivots, TuneConfig(steps=50, lpips=1.0, stop_lpips=10.0),
                  lpips=lambda a, b: (a - b).abs().flatten(1).mean(1), w_avg=w_avg)
    assert result.steps == 0


def test_locality_codes_lie_alpha_from_the_pivot_towards_a_truncated_random_code(generator):
    _, pivots, w_avg = _problem(generator)
    cfg = TuneConfig(locality_alpha=3.0, locality_samples=2, locality_truncation=0.5)
    codes = locality_codes(generator, pivots, w_avg, cfg, torch.Generator().manual_seed(0))
    start = pivots.repeat_interleave(2, dim=0)
    assert codes.shape == (4, generator.n_latent, STYLE_DIM)
    assert torch.allclose((codes - start).flatten(1).norm(dim=1), torch.full((4,), 3.0), atol=1e-4)
    z = torch.randn(4, STYLE_DIM, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        w = w_avg + 0.5 * (generator.get_latent(z) - w_avg)
    direction = (codes - start)[:, 0]
    assert torch.allclose(F.cosine_similarity(direction, w - start[:, 0]), torch.ones(4), atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Deltas


def test_full_rank_delta_reproduces_the_tuned_generator(generator, tuned):
    delta = compress_delta(generator, tuned.generator, rank=0)
    drawn = apply_delta(generator, delta)
    for name, p in drawn.named_parameters():
        assert torch.allclose(p, dict(tuned.generator.named_parameters())[name], atol=1e-6, rtol=0), name
    # A rank at least the matrix size is stored dense, hence exact as well.
    big = compress_delta(generator, tuned.generator, rank=10_000)
    assert all(layer.dense is not None for layer in big.layers.values())


def test_low_rank_error_is_the_discarded_singular_values(generator, tuned):
    rank = 2
    delta = compress_delta(generator, tuned.generator, rank=rank)
    base, after = dict(generator.named_parameters()), dict(tuned.generator.named_parameters())
    factored = [name for name, layer in delta.layers.items() if layer.u is not None]
    assert factored, "the tiny generator has matrices larger than rank 2"
    for name in factored:
        change = (after[name] - base[name]).detach()
        m, n = matrix_shape(tuple(change.shape))
        s = torch.linalg.svdvals(change.reshape(m, n).double())
        error = (delta.layers[name].tensor() - change).double().norm()
        assert torch.isclose(error, s[rank:].norm(), rtol=1e-3, atol=1e-7), name
        assert delta.layers[name].u.shape == (m, rank)
    # Higher rank: closer images; fewer bytes than dense.
    codes = _problem(generator)[1]
    errors = [_l2(apply_delta(generator, compress_delta(generator, tuned.generator, r)), codes,
                  reconstruct(tuned.generator, codes, (SIZE, SIZE)).detach()) for r in (1, 4)]
    assert errors[1] < errors[0]
    assert delta.nbytes < compress_delta(generator, tuned.generator, rank=0).nbytes


def test_delta_file_round_trip(generator, tuned, tmp_path):
    delta = compress_delta(generator, tuned.generator, rank=3, meta={"steps": 6})
    save_delta(tmp_path / "a.delta", delta)
    loaded = load_delta(tmp_path / "a.delta")
    assert loaded.base_sha256 == generator_sha256(generator) and loaded.meta == {"steps": 6}
    codes = _problem(generator)[1]
    with torch.no_grad():
        a = reconstruct(apply_delta(generator, delta), codes, (SIZE, SIZE))
        b = reconstruct(apply_delta(generator, loaded), codes, (SIZE, SIZE))
    assert torch.equal(a, b)


def test_a_delta_of_another_generator_is_refused(generator, tuned):
    delta = compress_delta(generator, tuned.generator, rank=2)
    other = Generator(SIZE, STYLE_DIM, n_mlp=2, channel_multiplier=1, channel_max=16, impl="ref")
    with pytest.raises(DeltaFileError) as info:
        apply_delta(other, delta, source="x.delta")
    message = str(info.value)
    assert "\n" not in message and message.startswith("x.delta: made for generator sha256") and "checkpoint" in message


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.delta"
    with open(path, "wb") as f:
        torch.save({"format": "stylegan2-generator-delta", "payload": _Exploit(marker)}, f)
    with pytest.raises(DeltaFileError, match="refused to load") as info:
        load_delta(path)
    assert "\n" not in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("corrupt, message", [
    (lambda r: r.update(format="other"), "format tag"),
    (lambda r: r.update(base_sha256="abc"), "base_sha256"),
    (lambda r: next(v for v in r["layers"].values() if "dense" in v).update(dense=torch.zeros(1)), "dense change of shape"),
    (lambda r: next(v for v in r["layers"].values() if "u" in v).update(u=torch.zeros(2, 2)), "do not make"),
    (lambda r: next(v for v in r["layers"].values() if "dense" in v).update(dense=torch.tensor([float("nan")])), "NaN"),
])
def test_a_malformed_delta_names_the_problem(generator, tuned, tmp_path, corrupt, message):
    record = delta_to_record(compress_delta(generator, tuned.generator, rank=2))
    corrupt(record)
    torch.save(record, tmp_path / "bad.delta")
    with pytest.raises(DeltaFileError, match=message) as info:
        load_delta(tmp_path / "bad.delta")
    assert "\n" not in str(info.value) and "bad.delta" in str(info.value)


def test_a_truncated_delta_file_is_one_line(generator, tuned, tmp_path):
    save_delta(tmp_path / "a.delta", compress_delta(generator, tuned.generator, rank=2))
    data = (tmp_path / "a.delta").read_bytes()
    (tmp_path / "a.delta").write_bytes(data[: len(data) // 2])
    with pytest.raises(DeltaFileError) as info:
        load_delta(tmp_path / "a.delta")
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------
# Commands


def _photo(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).resize((32, 32), Image.BILINEAR).save(path)
    return path


def _infer(*argv) -> int:
    return main([str(a) for a in argv] + ["--quiet", "--workers", "0"])


TUNE_FAST = ["tune.lpips=0", "tune.lr=0.003", "tune.rank=2"]


def test_infer_tunes_per_image_and_render_draws_with_the_delta(checkpoint, tmp_path, capsys):
    photos = tmp_path / "photos"
    for i in range(2):
        _photo(photos / f"p{i}.png", seed=i)
    out = tmp_path / "out"
    assert _infer(photos, "--out", out, "--checkpoint", checkpoint, "--tune-generator", 3, "--save-images",
                  "--batch-size", 1, *TUNE_FAST) == 0
    assert sorted(p.name for p in out.glob("*.delta")) == ["p0.delta", "p1.delta"]
    codes, meta = load_latent(out / "p1.pt")
    assert meta[DELTA_KEY] == "p1.delta" and meta["tune_steps"] == 3
    header = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
    assert header["tune"]["steps"] == 3

    rendered, plain = tmp_path / "rendered", tmp_path / "plain"
    assert main(["render", str(out), "--out", str(rendered), "--quiet"]) == 0
    for i in range(2):
        with Image.open(rendered / f"p{i}.png") as a, Image.open(out / f"p{i}.png") as b:
            assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() <= 1
    # Without its delta the same latent draws another image.
    (out / "p0.delta").unlink()
    assert main(["render", str(out / "p0.pt"), "--out", str(plain), "--quiet"]) == 1  # reported, skipped
    assert not (plain / "p0.png").exists()
    assert f"failed: {out / 'p0.pt'} names {out / 'p0.delta'}: generator delta file not found" in capsys.readouterr().err

    model = PSP.from_checkpoint(checkpoint).eval()
    with torch.no_grad():
        tuned = model.decode(codes[None], delta=out / "p1.delta")
        base = model.decode(codes[None])
    with Image.open(out / "p1.png") as saved:
        expected = torch.from_numpy(np.asarray(saved, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1
    assert (tuned[0].clamp(-1, 1) - expected).abs().max() < 0.02
    assert (base[0].clamp(-1, 1) - expected).abs().max() > 0.05

    # psp edit draws the tuned latent with its delta, and its edited latents keep naming it.
    np.save(tmp_path / "direction.npy", np.ones((1, codes.shape[1]), dtype=np.float32))
    edited = tmp_path / "edited"
    assert edit_main(["edit", str(out / "p1.pt"), "--direction", str(tmp_path / "direction.npy"),
                      "--strength", "0:1:2", "--out", str(edited)]) == 0
    with Image.open(edited / "p1.png") as strip_image, Image.open(out / "p1.png") as saved:
        first = np.asarray(strip_image, dtype=int)[:, : saved.width]
        assert np.abs(first - np.asarray(saved, dtype=int)).max() <= 1
    assert Path(load_latent(edited / "p1_01.pt")[1][DELTA_KEY]) == (out / "p1.delta").resolve()


def test_tune_per_folder_shares_one_delta_per_folder(checkpoint, tmp_path):
    photos = tmp_path / "photos"
    for folder in ("a", "b"):
        for i in range(2):
            _photo(photos / folder / f"{i}.png", seed=hash(folder) % 100 + i)
    out = tmp_path / "out"
    assert _infer(photos, "--out", out, "--checkpoint", checkpoint, "--tune-generator", 2, "--tune-per", "folder",
                  "--batch-size", 3, *TUNE_FAST) == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.delta")) == [
        "a/tuned-generator.delta", "b/tuned-generator.delta"]
    for folder in ("a", "b"):
        metas = [load_latent(out / folder / f"{i}.pt")[1] for i in range(2)]
        assert {m[DELTA_KEY] for m in metas} == {"tuned-generator.delta"}
        assert len(load_delta(out / folder / "tuned-generator.delta").meta["images"]) == 2
    # A resume finds everything finished.
    assert _infer(photos, "--out", out, "--checkpoint", checkpoint, "--tune-generator", 2, "--tune-per", "folder",
                  "--resume", *TUNE_FAST) == 0
    last = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()][-4:]
    assert {r["status"] for r in last} == {"skipped"}


def test_array_shards_keep_a_folder_on_one_shard_when_tuning_per_folder(checkpoint, tmp_path):
    # A strided split would give each shard half of each folder, and both would write the folder's delta.
    photos = tmp_path / "photos"
    for k, folder in enumerate(("a", "b")):
        for i in range(2):
            _photo(photos / folder / f"{i}.png", seed=10 * k + i)
    out = tmp_path / "out"
    for shard in ("0/2", "1/2"):
        assert _infer(photos, "--out", out, "--checkpoint", checkpoint, "--tune-generator", 2, "--tune-per",
                      "folder", "--shard", shard, *TUNE_FAST) == 0
    for folder in ("a", "b"):
        delta = load_delta(out / folder / "tuned-generator.delta")
        assert sorted(Path(p).name for p in delta.meta["images"]) == ["0.png", "1.png"]
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["output"] for r in records if r.get("status") == "ok") == [
        "a/0.pt", "a/1.pt", "b/0.pt", "b/1.pt"]


def test_missing_lpips_weights_stop_tuning_before_any_work(checkpoint, tmp_path, monkeypatch, capsys):
    def offline(url, dst, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    _photo(tmp_path / "photos" / "a.png", seed=0)
    out = tmp_path / "out"
    assert _infer(tmp_path / "photos", "--out", out, "--checkpoint", checkpoint, "--tune-generator", 2) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "tune.lpips=0" in err[-1] and "lpips.weights" in err[-1]
    assert not out.exists()


def test_tuning_config_errors(checkpoint, tmp_path, capsys):
    _photo(tmp_path / "photos" / "a.png", seed=0)
    for args, message in [(["infer.tune_lpips=0"], "is now 'tune.lpips'"),
                          (["--format", "npy", "--tune-generator", "2"], "infer.format=pt"),
                          (["tune.per=video"], "tune.per")]:
        assert _infer(tmp_path / "photos", "--out", tmp_path / "out", "--checkpoint", checkpoint, *args) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err, err


def test_evaluate_gains_the_tuned_rows(checkpoint, tmp_path, capsys):
    from psp.cli.evaluate import main as evaluate_main

    for i in range(2):
        _photo(tmp_path / "photos" / f"{i}.png", seed=10 + i)
    out = tmp_path / "eval"
    assert evaluate_main([str(tmp_path / "photos"), "--checkpoint", str(checkpoint), "--out", str(out), "--no-lpips",
                          "--workers", "0", "--tune-generator", "4", "--tune-rank", "2", "tune.lr=0.003",
                          "--quiet"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    methods = [row["method"] for row in report["table"]]
    assert methods == ["encoder", "encoder + PTI 4 (full)", "encoder + PTI 4 (rank 2)"]
    l2 = [row["metrics"]["l2"]["mean"] for row in report["table"]]
    assert l2[1] < l2[0] and l2[2] < l2[0]
    assert report["table"][2]["metrics"]["delta_mb"]["mean"] > 0
    assert report["config"]["tune"]["lpips"] == 0.0 and report["config"]["tune_steps"] == 4
    assert "| encoder + PTI 4 (full) |" in capsys.readouterr().out
    assert evaluate_main(["--checkpoint", str(checkpoint), "--synthetic", "2", "--out", str(tmp_path / "s"),
                          "--no-lpips", "--tune-generator", "2", "--quiet"]) == 2
    assert "needs IMAGES_DIR" in capsys.readouterr().err

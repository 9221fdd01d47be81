"""Editing: planted attribute recovered by fit_direction, SeFa against a direct eigen-solve,
GANSpace variance order, direction formats, and the error cases."""
import numpy as np
import pytest
import torch

from psp.editing.directions import Direction, load_direction, save_direction
from psp.editing.errors import EditingError
from psp.editing.fit import fit_direction
from psp.editing.ganspace import ganspace
from psp.editing.ops import edit, interpolate, mix, parse_layers, parse_strengths
from psp.editing.sefa import modulation_matrix, sefa
from stylegan2.fingerprint import generator_sha256
from stylegan2.generator import Generator


def tiny(seed=0):
    torch.manual_seed(seed)
    return Generator(16, style_dim=64, n_mlp=2, channel_max=8).eval()


def planted(seed=0):
    """A generator whose red-channel mean is driven by w . d (d planted in the last ToRGB)."""
    g = tiny(seed)
    d = torch.randn(64, generator=torch.Generator().manual_seed(1))
    d = d / d.norm()
    with torch.no_grad():
        for name, p in g.named_parameters():
            if name.endswith("modulation.weight"):  # other layers: blind to d, and weak
                p.sub_((p @ d)[:, None] * d).mul_(0.03)
        last = g.to_rgbs[-1].conv
        last.modulation.weight.copy_(d.expand_as(last.modulation.weight) * 20)
        last.weight[:, 1:] = 0  # green and blue of the last ToRGB do not depend on w . d
        w = g.get_latent(torch.randn(8, 64))
    # The planted direction is the one along which red grows: +d or -d.
    return g, d * torch.sign((red_mean(g, w + 0.1 * d)[0] - red_mean(g, w)[0]).mean())


def red_mean(g, w):
    with torch.no_grad():
        img, _ = g([w], input_is_latent=True, randomize_noise=False)
    return img[:, 0].mean((1, 2)), img[:, 1:].mean((1, 2, 3))


def test_fit_recovers_planted_direction_and_edit_is_monotonic():
    g, d = planted()
    with torch.no_grad():
        w = g.get_latent(torch.randn(1000, 64, generator=torch.Generator().manual_seed(2)))
    red, _ = red_mean(g, w)
    fit = fit_direction(w, red)
    assert fit.metric == "r2" and fit.score > 0.8
    assert torch.dot(fit.direction, d).item() >= 0.9
    binary = fit_direction(w, (red > red.median()).float())
    assert binary.metric == "accuracy" and binary.score > 0.8
    assert torch.dot(binary.direction, d).item() >= 0.9

    codes = w[:4, None].repeat(1, g.n_latent, 1)
    scale = w.std(0).norm().item()
    reds, others = [], []
    for s in torch.linspace(-1, 1, 5).tolist():
        r, o = red_mean(g, edit(codes, fit.direction, s * scale))
        reds.append(r)
        others.append(o)
    reds, others = torch.stack(reds), torch.stack(others)
    assert (reds.diff(dim=0) > 0).all()
    assert (others[-1] - others[0]).abs().mean() < 0.5 * (reds[-1] - reds[0]).abs().mean()


def test_fit_orthogonal_to_named_direction():
    g, _ = planted()
    with torch.no_grad():
        w = g.get_latent(torch.randn(200, 64, generator=torch.Generator().manual_seed(3)))
    red, _ = red_mean(g, w)
    first = torch.randn(64)
    second = first + 0.5 * torch.randn(64)  # not orthogonal to the first
    fit = fit_direction(w, red, orthogonal_to=[first, second])
    for other in (first, second):
        assert abs(torch.dot(fit.direction, other / other.norm()).item()) < 1e-5


def test_sefa_orthonormal_and_top_eigenvectors():
    g = tiny()
    layers = [0, 1, 2, 3]
    dirs, eig = sefa(g, layers, 5)
    assert torch.allclose(dirs @ dirs.T, torch.eye(5), atol=1e-5)
    a = modulation_matrix(g, layers).numpy()
    values, vectors = np.linalg.eigh(a.T @ a)  # independent solver: symmetric eigen-decomposition
    order = np.argsort(values)[::-1][:5]
    assert np.allclose(eig.numpy(), values[order], rtol=1e-4)
    cos = np.abs((dirs.numpy().astype(np.float64) @ vectors[:, order]).diagonal())
    assert (cos > 0.9999).all()
    assert torch.equal(sefa(g, layers, 5)[0], dirs)  # deterministic


def test_ganspace_decreasing_variance_and_deterministic():
    g = tiny()
    pca = ganspace(g, 2000, 8, seed=0)
    assert (pca["std"].diff() <= 0).all() and (pca["explained_variance_ratio"] > 0).all()
    assert torch.allclose(pca["comp"] @ pca["comp"].T, torch.eye(8), atol=1e-4)
    assert torch.equal(ganspace(g, 2000, 8, seed=0)["comp"], pca["comp"])


def test_direction_formats(tmp_path):
    v = torch.randn(64)
    np.save(tmp_path / "b.npy", v.numpy()[None])
    assert load_direction(str(tmp_path / "b.npy")).vectors.shape == (1, 64)
    torch.save(torch.randn(6, 64), tmp_path / "rows.pt")
    assert load_direction(str(tmp_path / "rows.pt")).vectors.shape == (6, 64)
    torch.save({"comp": torch.randn(10, 1, 64), "mean": torch.randn(1, 64), "std": torch.rand(10)},
               tmp_path / "pca.pt")
    with pytest.raises(EditingError, match="pick one"):
        load_direction(str(tmp_path / "pca.pt"))
    assert load_direction(str(tmp_path / "pca.pt") + "#3").vectors.shape == (1, 64)
    g = tiny()
    sha = generator_sha256(g)
    save_direction(tmp_path / "ours.pt", Direction("red", v[None], [0, 1], sha, (-2, 2)))
    back = load_direction(str(tmp_path / "ours.pt"))
    assert torch.equal(back.vectors[0], v) and back.layers == [0, 1] and back.strength_range == (-2, 2)
    back.check_fits(g.n_latent, 64, sha)
    with pytest.raises(EditingError, match="another generator"):
        back.check_fits(g.n_latent, 64, generator_sha256(tiny(seed=1)))
    load_direction(str(tmp_path / "rows.pt")).check_fits(g.n_latent, 64)
    torch.save(torch.randn(5, 64), tmp_path / "five.pt")
    with pytest.raises(EditingError, match="does not fit"):
        load_direction(str(tmp_path / "five.pt")).check_fits(g.n_latent, 64)


def test_ops_and_parsers():
    a, b = torch.randn(6, 64), torch.randn(6, 64)
    assert torch.equal(mix(a, b, [0, 1])[:2], b[:2]) and torch.equal(mix(a, b, [0, 1])[2:], a[2:])
    path = interpolate(a, b, 5)
    assert torch.allclose(path[0], a) and torch.allclose(path[-1], b)
    sph = interpolate(a, b, 5, spherical=True)
    assert torch.allclose(sph[0], a, atol=1e-5) and torch.allclose(sph[-1], b, atol=1e-5)
    d = torch.randn(64)
    out = edit(a, d, 2.0, [1, 2])
    assert torch.equal(out[0], a[0]) and torch.allclose(out[1], a[1] + 2 * d)
    assert parse_strengths("-3:3:7") == [-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0]
    assert parse_layers("0-3,5", 6) == [0, 1, 2, 3, 5]
    for bad in ("a:b", "1:2", "0:1:0"):
        with pytest.raises(EditingError):
            parse_strengths(bad)
    with pytest.raises(EditingError):
        parse_layers("0-9", 6)
    with pytest.raises(EditingError, match="does not fit"):
        edit(a, torch.randn(32), 1.0)


def test_fingerprint_changes_with_weights():
    g = tiny()
    sha = generator_sha256(g)
    assert sha == generator_sha256(tiny())
    with torch.no_grad():
        g.input.input[0, 0, 0, 0] += 1
    assert generator_sha256(g) != sha

"""Latent refinement on a tiny random generator: it improves, keeps the best, and leaves G alone."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from psp.inference.refine import refine, refine_codes
from stylegan2 import Generator

SIZE, STYLE_DIM = 32, 32


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(1)
    generator = Generator(SIZE, STYLE_DIM, n_mlp=2, channel_multiplier=1, channel_max=32, impl="ref")
    return SimpleNamespace(generator=generator.eval())


def _problem(model, batch=2, noise_scale=0.5, seed=2):
    """A generated target, its true W+ codes, and a perturbed start (what an imperfect encoder gives)."""
    g = model.generator
    torch.manual_seed(seed)
    with torch.no_grad():
        w = g.get_latent(torch.randn(batch, STYLE_DIM))[:, None].repeat(1, g.n_latent, 1)
        target, _ = g([w], input_is_latent=True, randomize_noise=False)
    start = w + noise_scale * torch.randn_like(w)
    return target, w, start


def _l2(model, codes, target):
    with torch.no_grad():
        image, _ = model.generator([codes], input_is_latent=True, randomize_noise=False)
    image = F.adaptive_avg_pool2d(image, target.shape[-2:])
    return (image - target).pow(2).flatten(1).mean(1)


def test_refinement_lowers_l2_and_returns_the_best_codes(model):
    target, _, start = _problem(model)
    result = refine(model, target, start, steps=20, lr=0.05, lpips_weight=0.0)
    assert result.history.shape == (21, 2)
    before, after = _l2(model, start, target), _l2(model, result.codes, target)
    torch.testing.assert_close(result.history[0], before)
    assert (after < 0.5 * before).all(), (before, after)
    # Best tracking: the returned codes are the lowest point seen, not merely the last one.
    torch.testing.assert_close(result.loss, result.history.min(0).values)
    torch.testing.assert_close(after, result.loss, rtol=1e-5, atol=1e-7)
    assert not result.codes.requires_grad


def test_best_codes_survive_a_diverging_run(model):
    target, _, start = _problem(model)
    result = refine(model, target, start, steps=6, lr=50.0, lpips_weight=0.0)  # overshoots
    assert (result.history[-1] > result.history[0]).any()
    torch.testing.assert_close(result.loss, result.history.min(0).values)
    torch.testing.assert_close(_l2(model, result.codes, target), result.loss, rtol=1e-5, atol=1e-7)


def test_true_codes_score_zero_at_a_smaller_comparison_size(model):
    target, w, _ = _problem(model)
    small = F.avg_pool2d(target, 2)  # the engine compares at 256 while G draws 1024: pooled
    result = refine(model, small, w, steps=0, lpips_weight=0.0)
    assert result.loss.max() < 1e-10
    torch.testing.assert_close(result.codes, w)


@pytest.mark.parametrize("optimize_noise", [False, True])
def test_generator_is_frozen_and_untouched(model, optimize_noise):
    g = model.generator
    state = {k: v.clone() for k, v in g.state_dict().items()}
    flags = {k: p.requires_grad for k, p in g.named_parameters()}
    target, _, start = _problem(model)
    refine(model, target, start, steps=3, lr=0.05, lpips_weight=0.0, optimize_noise=optimize_noise)
    for key, value in g.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert all(p.grad is None for p in g.parameters())
    assert flags == {k: p.requires_grad for k, p in g.named_parameters()}


def test_a_batch_refines_like_its_images_one_by_one(model):
    target, _, start = _problem(model, batch=3)
    batch = refine_codes(model, target, start, steps=5, lr=0.05, lpips_weight=0.0)
    single = torch.cat([refine_codes(model, target[i:i + 1], start[i:i + 1], steps=5, lr=0.05,
                                     lpips_weight=0.0) for i in range(3)])
    torch.testing.assert_close(batch, single, rtol=1e-4, atol=1e-4)


def test_works_when_the_caller_is_in_inference_mode(model):
    target, _, start = _problem(model, batch=1)
    with torch.inference_mode():
        target, start = target.clone(), start.clone()  # inference tensors, as the engine makes them
        codes = refine_codes(model, target, start, steps=4, lr=0.05, lpips_weight=0.0)
    assert (_l2(model, codes, target) < _l2(model, start, target)).all()
    with torch.no_grad():
        assert refine_codes(model, target.clone(), start.clone(), steps=1, lpips_weight=0.0).shape == start.shape


def test_batch_averaged_lpips_is_scored_per_image(model):
    lpips = pytest.importorskip("lpips")
    net = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).eval()
    target, _, start = _problem(model)
    per_image = refine(model, target, start, steps=4, lr=0.05, lpips=net)
    averaged = refine(model, target, start, steps=4, lr=0.05, lpips=lambda a, b: net(a, b).mean())
    torch.testing.assert_close(per_image.history, averaged.history, rtol=1e-4, atol=1e-6)
    assert (per_image.loss < per_image.history[0]).all()


def test_noise_optimisation_returns_regularised_maps(model):
    g = model.generator
    target, _, start = _problem(model)
    result = refine(model, target, start, steps=8, lr=0.05, lpips_weight=0.0, optimize_noise=True)
    assert [n.shape for n in result.noise] == [
        (2, 1, s, s) for s in (getattr(g.noises, f"noise_{i}").shape[-1] for i in range(g.num_layers))]
    assert (result.loss < result.history[0]).all()
    for n in result.noise:
        assert n.mean(dim=(1, 2, 3)).abs().max() < 1e-4
        torch.testing.assert_close(n.std(dim=(1, 2, 3)), torch.ones(2), rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        image, _ = g([result.codes], input_is_latent=True, randomize_noise=False, noise=result.noise)
    torch.testing.assert_close((image - target).pow(2).flatten(1).mean(1), result.loss, rtol=1e-5, atol=1e-7)


def test_bad_inputs_name_the_shape(model):
    target, _, start = _problem(model)
    with pytest.raises(ValueError, match=r"codes must be \[B, n_styles, style_dim\] with B = 2"):
        refine(model, target, start[:1], steps=1, lpips_weight=0.0)
    with pytest.raises(ValueError, match=r"images must be \[B, 3, H, W\]"):
        refine(model, target[:, :1], start, steps=1, lpips_weight=0.0)
    with pytest.raises(ValueError, match=r"steps must be an integer >= 0, got -1"):
        refine(model, target, start, steps=-1, lpips_weight=0.0)

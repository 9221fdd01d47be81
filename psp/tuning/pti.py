"""Pivotal tuning (Roich et al. 2021, "Pivotal Tuning for Latent-based Editing of Real Images").

A W+ code can only reach what the frozen generator draws; pivotal tuning moves the generator
instead. From the pivot codes ``w_p`` (the encoder's answer, optionally refined), a copy ``G'`` of
the generator is fine-tuned with Adam (all synthesis weights; the mapping network is not on the
path of W+ codes) to minimise, per step, on a batch of the images ``x``::

    image term     mean_i  l2 * MSE(G'(w_p,i), x_i) + lpips * LPIPS(G'(w_p,i), x_i)
    locality term  locality * mean_j  l2 * MSE(G'(w_r,j), G(w_r,j)) + lpips * LPIPS(G'(w_r,j), G(w_r,j))

(``psp.inference.refine.image_loss`` for both), where each regularised code ``w_r`` lies at distance
``locality_alpha`` from its pivot towards a random code ``w_z``: ``w_z`` is the mapping of
``z ~ N(0, I)`` truncated towards ``w_avg`` by ``locality_truncation`` (on every W+ row), and
``w_r = w_p + alpha * (w_z - w_p) / ||w_z - w_p||`` with the norm over the whole W+ code. The
locality term is added every ``locality_every`` steps with ``locality_samples`` codes per pivot; it
keeps the latent space around the pivot where it was, so edits of the pivot still work.

The defaults (``psp.config.TuneConfig``) are the paper's code's: lr 3e-4, 350 steps, l2 = lpips = 1,
regulariser weights 0.1 (here: ``locality`` 0.1 times the same L2 + LPIPS mix), alpha 30, truncation
0.5, one sample every step, and an early stop once LPIPS is at most 0.07.

Images are compared at the targets' resolution (the generator's output pooled to it, as
``PSP.decode`` does); noise is the generator's stored maps (deterministic). The base generator
is never modified: a deep copy is tuned, and gradients reach only the copy's weights.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from psp.config import TuneConfig
from psp.inference.refine import image_loss, reconstruct

# Seed of the random codes of the locality term, so a tuning run is repeatable.
LOCALITY_SEED = 0
# Random z averaged for w_avg when the caller gives none.
W_AVG_SAMPLES = 4096


@dataclass
class Tuning:
    """What :func:`tune` produced.

    generator: the tuned copy (frozen, eval mode, same class and device as the base).
    history: [steps_run + 1] the mean image term of the step's batch before each update; the last
        entry scores the final weights (on the batch of the step after the last).
    steps: Adam updates made (fewer than ``cfg.steps`` after an early stop).
    """

    generator: nn.Module
    history: Tensor
    steps: int


def tune_generator(generator: nn.Module, targets: Tensor, pivots: Tensor, cfg: TuneConfig,
                   lpips: Optional[Callable[[Tensor, Tensor], Tensor]] = None,
                   w_avg: Optional[Tensor] = None, batch_size: Optional[int] = None) -> nn.Module:
    """The tuned copy of ``generator``; see :func:`tune` for the arguments."""
    return tune(generator, targets, pivots, cfg, lpips, w_avg, batch_size).generator


def tune(generator: nn.Module, targets: Tensor, pivots: Tensor, cfg: TuneConfig,
         lpips: Optional[Callable[[Tensor, Tensor], Tensor]] = None,
         w_avg: Optional[Tensor] = None, batch_size: Optional[int] = None) -> Tuning:
    """Fine-tune a copy of ``generator`` for ``cfg.steps`` steps so it draws ``targets`` from ``pivots``.

    Args:
        generator: a ``stylegan2.Generator`` (or its inference rewrite); left untouched.
        targets: [N, 3, H, W] images in [-1, 1] (one image, or a group tuned together).
        pivots: [N, n_styles, style_dim] their W+ codes (``w_avg`` already added).
        cfg: the ``tune`` config section (steps, lr, weights, locality settings).
        lpips: an LPIPS distance (``psp.models.lpips.LPIPSLoss``); needed when ``cfg.lpips > 0``.
        w_avg: [n_styles or 1, style_dim] the truncation centre of the locality codes; None:
            the mean of the generator's mapping of 4096 random z.
        batch_size: images per step (a group larger than this is cycled through); None: all.

    Works on clones of ``targets`` and ``pivots`` outside inference mode, so callers inside
    ``torch.inference_mode()`` may call it (as with ``refine``).
    """
    _check_inputs(targets, pivots, cfg, lpips)
    device = next(generator.parameters()).device
    count = targets.shape[0]
    per_step = min(batch_size or count, count)
    with torch.inference_mode(False), torch.enable_grad():
        targets = targets.detach().to(device, torch.float32).clone()
        pivots = pivots.detach().to(device, torch.float32).clone()
        tuned = copy.deepcopy(generator).requires_grad_(False)
        # The mapping network (style.*) is not on the path of W+ codes: it would get no gradient.
        params = [p.requires_grad_(True) for name, p in tuned.named_parameters() if not name.startswith("style.")]
        optimizer = torch.optim.Adam(params, lr=cfg.lr)
        centre = _truncation_centre(generator, w_avg, pivots)
        rng = torch.Generator().manual_seed(LOCALITY_SEED)
        latest_lpips = torch.full((count,), float("inf"), device=device)
        size = tuple(targets.shape[-2:])
        history, step = [], 0
        while True:
            chosen = torch.arange(step * per_step, (step + 1) * per_step, device=device) % count
            final = step == cfg.steps
            with torch.set_grad_enabled(not final):
                image = reconstruct(tuned, pivots[chosen], size)
                pixel = image_loss(image, targets[chosen], cfg.l2, 0.0, None)
                perceptual = image_loss(image, targets[chosen], 0.0, 1.0, lpips) if cfg.lpips > 0 else None
                loss = pixel if perceptual is None else pixel + cfg.lpips * perceptual
            history.append(loss.detach().mean())
            if perceptual is not None:
                latest_lpips[chosen] = perceptual.detach()
            if final or (cfg.stop_lpips > 0 and bool((latest_lpips <= cfg.stop_lpips).all())):
                break
            total = loss.mean()
            if cfg.locality > 0 and step % cfg.locality_every == 0:
                total = total + cfg.locality * _locality_loss(generator, tuned, pivots[chosen], centre, cfg,
                                                              lpips, size, rng)
            optimizer.zero_grad(set_to_none=True)
            total.backward(inputs=params)
            optimizer.step()
            step += 1
    return Tuning(tuned.requires_grad_(False).eval(), torch.stack(history).cpu(), step)


def locality_codes(generator: nn.Module, pivots: Tensor, centre: Tensor, cfg: TuneConfig,
                   rng: torch.Generator) -> Tensor:
    """Regularised codes [N * locality_samples, n_styles, style_dim]: each pivot moved
    ``locality_alpha`` towards a truncated random code (module docstring); ``rng`` draws z on the CPU."""
    samples = cfg.locality_samples
    z = torch.randn(pivots.shape[0] * samples, generator.style_dim, generator=rng).to(pivots.device)
    with torch.no_grad():
        w = generator.get_latent(z)[:, None]  # [M, 1, D]: the same w on every row
    random_codes = centre + cfg.locality_truncation * (w - centre)
    start = pivots.repeat_interleave(samples, dim=0)
    direction = random_codes - start
    norm = direction.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None]
    return start + cfg.locality_alpha * direction / norm


def _locality_loss(base: nn.Module, tuned: nn.Module, pivots: Tensor, centre: Tensor, cfg: TuneConfig,
                   lpips: Optional[Callable[[Tensor, Tensor], Tensor]], size: tuple[int, int],
                   rng: torch.Generator) -> Tensor:
    """Mean L2 + LPIPS (the image term's weights) between the tuned and the base generator's images
    of the regularised codes: a scalar with a graph into ``tuned``."""
    codes = locality_codes(base, pivots, centre, cfg, rng)
    with torch.no_grad():
        before = reconstruct(base, codes, size)
    after = reconstruct(tuned, codes, size)
    return image_loss(after, before, cfg.l2, cfg.lpips, lpips).mean()


def _truncation_centre(generator: nn.Module, w_avg: Optional[Tensor], pivots: Tensor) -> Tensor:
    """[1 or n_styles, style_dim] on the pivots' device."""
    if w_avg is not None:
        return w_avg.detach().to(pivots.device, torch.float32).reshape(-1, pivots.shape[-1])
    with torch.no_grad():
        return generator.mean_latent(W_AVG_SAMPLES).to(pivots.device, torch.float32)


def _check_inputs(targets: Tensor, pivots: Tensor, cfg: TuneConfig, lpips) -> None:
    if targets.ndim != 4 or targets.shape[1] != 3:
        raise ValueError(f"tune: targets must be [N, 3, H, W], got {list(targets.shape)}")
    if pivots.ndim != 3 or pivots.shape[0] != targets.shape[0]:
        raise ValueError(f"tune: pivots must be [N, n_styles, style_dim] with N = {targets.shape[0]} "
                         f"(the number of targets), got {list(pivots.shape)}")
    if cfg.lpips > 0 and lpips is None:
        raise ValueError("tune: cfg.lpips > 0 needs an LPIPS distance (lpips=LPIPSLoss(...)), or set cfg.lpips=0")

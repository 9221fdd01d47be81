"""Latent refinement: optimise the encoder's W+ codes so the frozen generator matches the image better.

The encoder answers in one forward pass and is only as good as its training; a few hundred Adam steps
on the codes themselves (the optimisation half of "hybrid" inversion) recover detail it misses.
Objective per image, at the target's resolution::

    loss_i = l2_weight * mean((G(w_i) - x_i)^2) + lpips_weight * LPIPS(G(w_i), x_i)

with ``G(w) = generator([w], input_is_latent=True, randomize_noise=False)`` resized to the target
(``psp.models.generated.resize_generated``: the adaptive average pool ``PSP.decode`` uses).

Noise. By default the noise inputs stay at the generator's stored ``noises.noise_K`` buffers, the
same deterministic maps every decode uses, so the refined codes alone reproduce the refined image
from a saved latent file ("noise-free" refinement). ``optimize_noise=True`` also fits per-image noise
maps, regularised as in the StyleGAN2 projector (no spatial autocorrelation at any scale; maps
renormalised to zero mean, unit variance after each step). It can fit finer detail, but the codes are
then only right together with those maps: use :func:`refine` to get them, not :func:`refine_codes`.

Gradients. Refinement runs under ``torch.enable_grad()`` and ``torch.inference_mode(False)``, and
works on clones of ``images`` and ``codes``, so a caller inside ``torch.no_grad()`` or
``torch.inference_mode()`` (tensors created there included) may call it. The model itself must not
have been built under inference mode. Gradients flow to the codes (and noise maps) only: the
generator's and the LPIPS network's parameters are never updated and never get a ``.grad``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from psp.models.generated import resize_generated
from psp.models.lpips import LPIPSLoss

# Weight of the noise autocorrelation penalty (the StyleGAN2 projector's value).
NOISE_REGULARIZE = 1e5


@dataclass
class Refinement:
    """What :func:`refine` found, all detached.

    codes: [B, n_styles, style_dim] the best codes of each image (lowest objective seen).
    noise: with ``optimize_noise``, the best noise maps, one [B, 1, s, s] per noise input; else None.
    loss: [B] the objective at the returned codes (and noise).
    history: [steps + 1, B] the objective at every evaluated point; row 0 is the starting codes.
    """

    codes: Tensor
    noise: Optional[list[Tensor]]
    loss: Tensor
    history: Tensor


def refine_codes(model, images: Tensor, codes: Tensor, steps: int, lr: float = 0.01,
                 l2_weight: float = 1.0, lpips_weight: float = 0.8,
                 lpips: Optional[Callable[[Tensor, Tensor], Tensor]] = None,
                 optimize_noise: bool = False) -> Tensor:
    """Refined W+ codes [B, n_styles, style_dim]; see :func:`refine` for the arguments."""
    return refine(model, images, codes, steps, lr, l2_weight, lpips_weight, lpips, optimize_noise).codes


def refine(model, images: Tensor, codes: Tensor, steps: int, lr: float = 0.01,
           l2_weight: float = 1.0, lpips_weight: float = 0.8,
           lpips: Optional[Callable[[Tensor, Tensor], Tensor]] = None,
           optimize_noise: bool = False) -> Refinement:
    """Optimise ``codes`` with Adam for ``steps`` steps so ``model.generator`` reproduces ``images``.

    Args:
        model: anything with a ``generator`` (a ``stylegan2.Generator``), e.g. a ``PSP``.
        images: [B, 3, H, W] targets in [-1, 1] (the encoder's input, or the 256 px image).
        codes: [B, n_styles, style_dim] starting W+ codes (the encoder's answer, ``w_avg`` added).
        steps: Adam updates (0 returns the starting codes with their loss).
        lr: Adam learning rate.
        l2_weight, lpips_weight: weights of the pixel MSE and of LPIPS (0 turns a term off).
        lpips: a ``psp.models.lpips.LPIPSLoss``, or any ``(y_hat, y) -> distance`` on [-1, 1] images
            giving one value per image ([B] or [B, 1, 1, 1]) or a batch mean (then each image is
            scored on its own); None builds ``LPIPSLoss()`` (pretrained AlexNet) when
            ``lpips_weight > 0``.
        optimize_noise: also optimise the noise maps (see the module docstring).

    Images do not interact: each one's codes follow its own loss (the batch loss is a sum), so a
    batch gives the same codes as its images one by one.
    """
    _check_inputs(images, codes, steps)
    if lpips is None and lpips_weight > 0:
        lpips = LPIPSLoss().to(images.device)
    generator = model.generator
    size = tuple(images.shape[-2:])
    with torch.inference_mode(False), torch.enable_grad():
        # Clones: tensors made under inference mode cannot join a graph; the caller's stay untouched.
        target = images.detach().clone()
        codes = codes.detach().clone().requires_grad_(True)
        noise = _initial_noise(generator, codes.shape[0]) if optimize_noise else None
        params = [codes] + (noise or [])
        optimizer = torch.optim.Adam(params, lr=lr)

        best_loss = torch.full((codes.shape[0],), float("inf"), device=codes.device)
        best_codes = codes.detach().clone()
        best_noise = [n.detach().clone() for n in noise] if noise else None
        history = []
        for step in range(steps + 1):
            # The last pass only scores the final update: no graph needed.
            with torch.set_grad_enabled(step < steps):
                image = reconstruct(generator, codes, size, noise)
                loss = image_loss(image, target, l2_weight, lpips_weight, lpips)
            history.append(loss.detach())
            better = loss.detach() < best_loss
            best_loss = torch.where(better, loss.detach(), best_loss)
            best_codes[better] = codes.detach()[better]
            if noise:
                for kept, current in zip(best_noise, noise):
                    kept[better] = current.detach()[better]
            if step == steps:
                break
            total = loss.sum()
            if noise:
                total = total + NOISE_REGULARIZE * sum(_noise_penalty(n) for n in noise).sum()
            optimizer.zero_grad(set_to_none=True)
            # inputs=params: gradients only for what we optimise, never into the frozen networks.
            total.backward(inputs=params)
            optimizer.step()
            if noise:
                _normalize_noise(noise)
    return Refinement(codes=best_codes, noise=best_noise, loss=best_loss, history=torch.stack(history))


def reconstruct(generator, codes: Tensor, size: tuple[int, int],
                noise: Optional[list[Tensor]] = None) -> Tensor:
    """``generator``'s image of W+ ``codes`` [B, n_styles, style_dim] at ``size`` (H, W) -> [B, 3, H, W].

    Deterministic noise (the stored buffers) unless ``noise`` maps are given. Resized as
    ``PSP.decode`` resizes (``resize_generated``), so the refined codes decode to what was optimised.
    """
    image, _ = generator([codes], input_is_latent=True, randomize_noise=False, noise=noise)
    return resize_generated(image, size)


def _check_inputs(images: Tensor, codes: Tensor, steps: int) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"refine: images must be [B, 3, H, W], got {list(images.shape)}")
    if codes.ndim != 3 or codes.shape[0] != images.shape[0]:
        raise ValueError(f"refine: codes must be [B, n_styles, style_dim] with B = {images.shape[0]} "
                         f"(the number of images), got {list(codes.shape)}")
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"refine: steps must be an integer >= 0, got {steps!r}")


def image_loss(y_hat: Tensor, y: Tensor, l2_weight: float, lpips_weight: float,
               lpips: Optional[Callable[[Tensor, Tensor], Tensor]]) -> Tensor:
    """Per-image loss [B] of images [B, 3, H, W] in [-1, 1]: ``l2_weight * MSE + lpips_weight * LPIPS``
    (``lpips`` as in :func:`refine`; unused when ``lpips_weight`` is 0). Refinement and pivotal
    tuning (``psp.tuning``) share it. The batch reduction is the caller's."""
    loss = l2_weight * (y_hat - y).pow(2).flatten(1).mean(1)
    if lpips_weight > 0:
        loss = loss + lpips_weight * _lpips_per_image(lpips, y_hat, y)
    return loss


def _lpips_per_image(lpips: Callable[[Tensor, Tensor], Tensor], y_hat: Tensor, y: Tensor) -> Tensor:
    if isinstance(lpips, LPIPSLoss):
        return lpips(y_hat, y, reduction="none")
    batch = y.shape[0]
    distance = lpips(y_hat, y)
    if distance.numel() == batch:
        return distance.reshape(batch)
    # A batch-averaged distance cannot tell which image improved: score them one by one.
    return torch.stack([lpips(y_hat[i:i + 1], y[i:i + 1]).reshape(()) for i in range(batch)])


def _initial_noise(generator, batch: int) -> list[Tensor]:
    """Per-image copies [B, 1, s, s] of the stored noise buffers, so refinement starts where the
    plain decode is."""
    stored = [getattr(generator.noises, f"noise_{i}") for i in range(generator.num_layers)]
    return [n.detach().expand(batch, -1, -1, -1).clone().requires_grad_(True) for n in stored]


def _noise_penalty(noise: Tensor) -> Tensor:
    """Squared autocorrelation at a one-pixel shift, summed over scales down to 8x8 -> [B]."""
    penalty = noise.new_zeros(noise.shape[0])
    while True:
        for dim in (-1, -2):
            penalty = penalty + (noise * torch.roll(noise, shifts=1, dims=dim)).flatten(1).mean(1) ** 2
        if noise.shape[-1] <= 8:
            return penalty
        noise = F.avg_pool2d(noise, 2)


@torch.no_grad()
def _normalize_noise(noise: list[Tensor]) -> None:
    # Keeps each map a plausible N(0, 1) sample: the penalty alone lets the scale drift.
    for n in noise:
        mean = n.mean(dim=(1, 2, 3), keepdim=True)
        std = n.std(dim=(1, 2, 3), keepdim=True)
        n.sub_(mean).div_(std)

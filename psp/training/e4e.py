"""e4e's training pieces: progressive unlocking of the W+ rows, the delta regulariser, and the latent
discriminator's losses and code pools. Used for the ``e4e`` and ``restyle_e4e`` families (the
discriminator for any family with ``loss.w_discriminator > 0``).

Facts of the original recipe (omertov/encoder4editing ``training/coach.py``, ``scripts/train.py``;
the ReStyle-e4e coach of yuval-alaluf/restyle-encoder), all codes [B, n_styles, D]:

- Schedule: stage 0 (row 0 = w0 alone, every row the same code) from step 0; stage k (rows 1..k add
  their delta) from step ``progressive_start + (k - 1) * progressive_every``, up to stage
  ``n_styles - 1`` (every row). Without ``--progressive_start`` the encoder runs all rows from the
  start and the delta regulariser is off.
- Delta regulariser: ``sum_j mean_b ||c[b, j] - c[b, 0]||_2`` over the unlocked rows; e4e sums rows
  1..stage-1 (the row unlocked last is not yet regularised), ReStyle-e4e rows 1..stage.
- Discriminator: an MLP on single rows (``psp.models.nets.latent_discriminator``), Adam (lr 2e-5).
  Each step, before the encoder's update: real codes ``w = mapping(z)`` (one per sample), fake codes
  the encoder's unlocked rows (no gradient), each passed through a pool of 50 past codes (below);
  loss ``softplus(-D(real)) + softplus(D(fake))`` (means). Every ``reg_every`` = 16 steps
  (``step % 16 == 0``, step 0 included) a second Adam step on R1: ``r1 / 2 * reg_every *
  mean_b ||dD(real)/dw||^2`` (r1 = 10).
- The encoder's adversarial term: the non-saturating ``mean_j softplus(-D(c[:, j])).mean()`` over
  the rows 0..stage (all rows without a schedule), weight ``w_discriminator`` (0.1).
- Pool (``LatentCodesPool``, size 50): per sample, a code (a random row among its unlocked rows)
  enters the pool while it is not full and is returned; once full, with probability 1/2 it
  replaces a random stored code, which is returned in its place, else it is returned itself.

Where this toolkit differs, on purpose: the original trains the discriminator on the encoder's
output before ``latent_avg`` is added, while its adversarial term sees the codes with it; here both
see the codes (``w_avg`` included), so the discriminator judges what the encoder is penalised on.
ReStyle-e4e's original drops its adversarial and delta terms whenever the identity loss is on
(its ``calc_loss`` assigns instead of adding); here the terms always add up.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


def progressive_stage(step: int, n_styles: int, start: Optional[int], every: int) -> Optional[int]:
    """The e4e stage at optimiser step ``step``: 0 before ``start``, then one more row every
    ``every`` steps up to ``n_styles - 1``; ``None`` (every row, no schedule) when ``start`` is None."""
    if start is None:
        return None
    if step < start:
        return 0
    return min(n_styles - 1, 1 + (step - start) // every)


def delta_rows(family: str, stage: Optional[int], n_styles: int) -> range:
    """The rows the delta regulariser sums at ``stage`` (empty without a schedule); see the module notes."""
    if stage is None:
        return range(0)
    last = stage if family == "restyle_e4e" else stage - 1
    return range(1, min(last, n_styles - 1) + 1)


def discriminated_rows(stage: Optional[int], n_styles: int) -> range:
    """Rows 0..stage the discriminator sees (all rows without a schedule)."""
    return range(n_styles if stage is None else min(stage, n_styles - 1) + 1)


def delta_loss(codes: torch.Tensor, rows: range) -> torch.Tensor:
    """``sum_{j in rows} mean_b ||codes[b, j] - codes[b, 0]||_2``: codes [B, n_styles, D] -> scalar."""
    if len(rows) == 0:
        return codes.new_zeros(())
    deltas = codes[:, rows.start:rows.stop] - codes[:, :1]
    return deltas.norm(p=2, dim=2).mean(0).sum()


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """The non-saturating discriminator loss ``softplus(-D(real)).mean() + softplus(D(fake)).mean()``
    and its two parts (detached), ``d_real_loss`` and ``d_fake_loss``."""
    real, fake = F.softplus(-real_logits).mean(), F.softplus(fake_logits).mean()
    return real + fake, {"d_real_loss": real.detach(), "d_fake_loss": fake.detach()}


def adversarial_loss(discriminator: nn.Module, codes: torch.Tensor, rows: range) -> torch.Tensor:
    """The encoder's term ``mean_{j in rows} softplus(-D(codes[:, j])).mean()``: codes [B, n_styles, D]."""
    picked = codes[:, rows.start:rows.stop]
    logits = discriminator(picked.reshape(-1, codes.shape[-1]))
    return F.softplus(-logits).view(codes.shape[0], len(rows)).mean(0).mean()


def r1_penalty(discriminator: nn.Module, real: torch.Tensor) -> torch.Tensor:
    """``mean_b ||dD(w)/dw||^2`` at the real codes ``real`` [B, D] (a graph for the second derivative)."""
    real = real.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(discriminator(real).sum(), real, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()


class LatentCodesPool:
    """A pool of past codes [size, D] the discriminator trains on (see the module notes).

    ``query(codes)``: codes [B, D], or [B, R, D] (one random row per sample is taken) -> [B, D].
    Random choices come from a private ``torch.Generator`` (``seed``), and :meth:`state_dict` holds
    the stored codes and that generator's state, so a resumed run continues the same pool.
    """

    def __init__(self, size: int, seed: int = 0) -> None:
        if size < 0:
            raise ValueError(f"LatentCodesPool size must be >= 0, got {size}")
        self.size = size
        self.codes: list[torch.Tensor] = []
        self.rng = torch.Generator().manual_seed(seed)

    def _randint(self, high: int) -> int:
        return int(torch.randint(high, (1,), generator=self.rng))

    @torch.no_grad()
    def query(self, codes: torch.Tensor) -> torch.Tensor:
        if codes.dim() == 3:
            picks = torch.randint(codes.shape[1], (codes.shape[0],), generator=self.rng).to(codes.device)
            codes = codes[torch.arange(codes.shape[0], device=codes.device), picks]
        if self.size == 0:
            return codes
        out = []
        for code in codes.detach():
            if len(self.codes) < self.size:
                self.codes.append(code.clone())
                out.append(code)
            elif float(torch.rand((), generator=self.rng)) > 0.5:
                index = self._randint(self.size)
                out.append(self.codes[index])
                self.codes[index] = code.clone()
            else:
                out.append(code)
        return torch.stack(out)

    def state_dict(self) -> dict:
        stored = torch.stack(self.codes).cpu() if self.codes else torch.zeros(0)
        return {"codes": stored, "rng": self.rng.get_state()}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        self.codes = [code.to(device) for code in state["codes"]]
        self.rng.set_state(state["rng"])

"""pSp's training losses: pixel L2, LPIPS, identity (ArcFace) and W-norm, and their weighted sum.

All images are [B, 3, H, W] in [-1, 1] (the encoder's target range). The loss networks are frozen:
no trainable parameters, and their BatchNorm / Dropout stay in eval mode whatever ``.train()`` is
called on them or on a parent module (:class:`FrozenModule`).
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from psp.models.identity import IDLoss
from psp.models.lpips import LPIPSLoss, LPIPSWeightsError

from psp.config import LPIPSConfig

if TYPE_CHECKING:
    from psp.config import LossConfig

LOSS_TERMS = ("l2", "lpips", "id", "w_norm")


# ----------------------------------------------------------------------------------------------
# Pixel and latent losses


def l2_loss(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all elements (pSp's ``F.mse_loss``): [B, 3, H, W] x2 -> scalar."""
    return F.mse_loss(y_hat, y)


def w_norm_loss(codes: torch.Tensor, w_avg: torch.Tensor | None,
                start_from_latent_avg: bool = True) -> torch.Tensor:
    """pSp's W-norm regulariser: the L2 norm of each sample's W+ offset, averaged over the batch.

    codes [B, n_styles, 512]; w_avg [n_styles, 512] or [512]. With ``start_from_latent_avg`` the
    offset is ``codes - w_avg`` (the encoder's own output), else ``codes``. The norm is taken over
    all rows and dimensions together (``norm(dim=(1, 2))``), not per row.
    """
    if start_from_latent_avg:
        if w_avg is None:
            raise ValueError("w_norm_loss: start_from_latent_avg=True needs w_avg")
        codes = codes - w_avg
    return codes.flatten(1).norm(p=2, dim=1).mean()


# ----------------------------------------------------------------------------------------------
# The weighted sum


class PSPLoss(nn.Module):
    """The pSp objective: ``id*L_id + l2*L_2 + lpips*L_lpips + w_norm*L_wnorm``.

    Only terms with a weight > 0 are built: a zero LPIPS weight creates no LPIPS network, a zero
    identity weight no recogniser. The frozen networks live under :attr:`frozen_prefixes`
    (``lpips.``, ``id_loss.``) so a training checkpoint can leave them out; ``parameters()`` has
    no trainable entries.

    forward(y_hat [B,3,H,W], y [B,3,H,W], codes [B,n_styles,512] | None, w_avg | None)
    -> (total, terms): ``total`` is the scalar to back-propagate; ``terms`` holds detached scalars
    ``loss_id``, ``id_similarity``, ``loss_l2``, ``loss_lpips``, ``loss_w_norm`` (each only when
    its weight > 0) and ``loss`` (the total).
    """

    frozen_prefixes = ("lpips.", "id_loss.")

    def __init__(self, weights: Mapping[str, float], *, lpips_net: str = "alex",
                 lpips_weights: str | Path | None = None, lpips_pretrained: bool = True,
                 arcface: nn.Module | None = None, start_from_latent_avg: bool = True):
        super().__init__()
        unknown = sorted(set(weights) - set(LOSS_TERMS))
        if unknown:
            raise ValueError(f"unknown loss term(s) {', '.join(unknown)}; known: {', '.join(LOSS_TERMS)}")
        self.weights = {term: float(weights.get(term, 0.0)) for term in LOSS_TERMS}
        for term, weight in self.weights.items():
            if weight < 0 or not math.isfinite(weight):
                raise ValueError(f"loss.{term} must be a finite weight >= 0, got {weight}")
        if not any(self.weights.values()):
            raise ValueError("all loss weights (loss.l2, loss.lpips, loss.id, loss.w_norm) are 0; "
                             "set at least one > 0")
        if self.weights["id"] > 0 and arcface is None:
            raise ValueError("loss.id > 0 needs a face recogniser; pass arcface= or set loss.id_weights")
        self.lpips_options = {"net": lpips_net, "weights_path": lpips_weights, "pretrained": lpips_pretrained}
        self.start_from_latent_avg = start_from_latent_avg
        self.lpips = LPIPSLoss(**self.lpips_options) if self.weights["lpips"] > 0 else None
        # A recogniser handed in with loss.id = 0 is kept for the identity metric of validation.
        self.id_loss = IDLoss(arcface) if arcface is not None else None
        self._lpips_metric_error: str | None = None

    @classmethod
    def from_config(cls, loss_cfg: "LossConfig", lpips_cfg: "LPIPSConfig | None" = None,
                    arcface: nn.Module | None = None, lpips_pretrained: bool = True,
                    start_from_latent_avg: bool = True) -> "PSPLoss":
        """Build from the ``loss`` config section. ``arcface`` is the recogniser loaded from
        ``loss.id_weights`` (by ``PSPSystem``), needed when loss.id > 0; given with loss.id = 0 it
        serves the validation metric only. ``lpips_cfg``: the shared ``lpips`` section (backbone and
        its file; default: AlexNet from the torch hub cache). ``start_from_latent_avg`` is
        ``model.start_from_latent_avg``."""
        lpips_cfg = lpips_cfg or LPIPSConfig()
        weights = {term: getattr(loss_cfg, term) for term in LOSS_TERMS}
        return cls(weights, lpips_net=lpips_cfg.net, lpips_weights=lpips_cfg.weights,
                   lpips_pretrained=lpips_pretrained, arcface=arcface,
                   start_from_latent_avg=start_from_latent_avg)

    def forward(self, y_hat: torch.Tensor, y: torch.Tensor, codes: torch.Tensor | None = None,
                w_avg: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        _check_pair(y_hat, y)
        w = self.weights
        parts: list[torch.Tensor] = []
        terms: dict[str, torch.Tensor] = {}
        # Summed in pSp's order (id, l2, lpips, w_norm) so float results match the reference.
        if w["id"] > 0:
            loss_id, similarity = self.id_loss(y_hat, y)
            parts.append(w["id"] * loss_id)
            terms["loss_id"], terms["id_similarity"] = loss_id.detach(), similarity
        if w["l2"] > 0:
            loss_l2 = l2_loss(y_hat, y)
            parts.append(w["l2"] * loss_l2)
            terms["loss_l2"] = loss_l2.detach()
        if w["lpips"] > 0:
            loss_lpips = self.lpips(y_hat, y)
            parts.append(w["lpips"] * loss_lpips)
            terms["loss_lpips"] = loss_lpips.detach()
        if w["w_norm"] > 0:
            if codes is None:
                raise ValueError("loss.w_norm > 0 needs the W+ codes: call the loss with codes=..., w_avg=...")
            loss_w_norm = w_norm_loss(codes, w_avg, self.start_from_latent_avg)
            parts.append(w["w_norm"] * loss_w_norm)
            terms["loss_w_norm"] = loss_w_norm.detach()
        total = parts[0]
        for part in parts[1:]:
            total = total + part
        terms["loss"] = total.detach()
        return total, terms

    @torch.no_grad()
    def metrics(self, y_hat: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Validation metrics whatever the weights: ``l2``, ``lpips`` and ``id_similarity`` (scalars).

        LPIPS is built on first use if its weight is 0, from a local or cached backbone only (a
        metric never triggers a download; without one, ``lpips`` is left out with one warning); ``id_similarity`` is present only when a recogniser
        exists (loss.id > 0, or one was passed in).
        """
        _check_pair(y_hat, y)
        out = {"l2": l2_loss(y_hat, y)}
        lpips_net = self._metric_lpips(y.device)
        if lpips_net is not None:
            out["lpips"] = lpips_net(y_hat, y)
        if self.id_loss is not None:
            out["id_similarity"] = self.id_loss(y_hat, y)[1]
        return out

    def _metric_lpips(self, device: torch.device) -> LPIPSLoss | None:
        if self.lpips is None and self._lpips_metric_error is None:
            try:
                self.lpips = LPIPSLoss(**self.lpips_options, download=False).to(device)
            except LPIPSWeightsError as exc:
                self._lpips_metric_error = str(exc)
                warnings.warn(f"LPIPS metric disabled: {exc}", stacklevel=3)
        return self.lpips


def _check_pair(y_hat: torch.Tensor, y: torch.Tensor) -> None:
    if y_hat.shape != y.shape or y.dim() != 4 or y.shape[1] != 3:
        raise ValueError(f"losses expect two [B, 3, H, W] images of the same shape, got "
                         f"{list(y_hat.shape)} and {list(y.shape)}")

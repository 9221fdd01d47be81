"""pSp's training losses: pixel L2, LPIPS, identity (ArcFace) and W-norm, and their weighted sum.

All images are [B, 3, H, W] in [-1, 1] (the encoder's target range). The loss networks are frozen:
no trainable parameters, and their BatchNorm / Dropout stay in eval mode whatever ``.train()`` is
called on them or on a parent module (:class:`FrozenModule`).
"""
from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from psp.config import LossConfig

# The face box of pSp's identity loss in a 256x256 FFHQ-aligned image: rows 35:223, columns 32:220.
ID_CROP_256 = (35, 223, 32, 220)
ID_INPUT_SIZE = 112  # the ArcFace input side

# torchvision weight enums of the LPIPS trunks; their URL names the file torch.hub caches.
LPIPS_BACKBONES = {"alex": "AlexNet_Weights", "vgg": "VGG16_Weights"}

LOSS_TERMS = ("l2", "lpips", "id", "w_norm")


class LPIPSWeightsError(FileNotFoundError):
    """The LPIPS ImageNet backbone weights are missing or not usable; the message is one line."""


class FrozenModule(nn.Module):
    """A network used only as a fixed function: no gradients to its parameters, always in eval mode.

    ``train()`` is overridden so that Lightning (which calls ``.train()`` on the whole model after
    every validation) cannot switch BatchNorm statistics or Dropout back on.
    """

    def freeze(self) -> "FrozenModule":
        self.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> "FrozenModule":
        return super().train(False)


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
# LPIPS


def _backbone_weights_info(net: str) -> tuple[str, str]:
    """(file name, URL) of the torchvision ImageNet weights of an LPIPS trunk."""
    import torchvision.models

    if net not in LPIPS_BACKBONES:
        raise ValueError(f"LPIPS net must be one of {', '.join(LPIPS_BACKBONES)}, got {net!r}")
    url = getattr(torchvision.models, LPIPS_BACKBONES[net]).IMAGENET1K_V1.url
    return url.rsplit("/", 1)[-1], url


def resolve_backbone_weights(net: str, weights_path: str | Path | None = None,
                             download: bool = True) -> Path:
    """The file holding the ImageNet weights of the LPIPS trunk ``net``.

    ``weights_path`` if given (it must exist); else the torch hub cache
    (``$TORCH_HOME/hub/checkpoints/alexnet-owt-7be5be79.pth`` for AlexNet), downloading it there
    when the machine is online and ``download`` is True, as torchvision would. Offline and
    uncached (or ``download=False``): LPIPSWeightsError naming the file and how to provide it.
    """
    filename, url = _backbone_weights_info(net)
    if weights_path is not None:
        path = Path(weights_path)
        if not path.is_file():
            raise LPIPSWeightsError(f"LPIPS backbone weights '{path}' (loss.lpips_weights) do not exist; "
                                    f"expected torchvision's {filename} ({url})")
        return path
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if cached.is_file():
        return cached
    if not download:
        raise LPIPSWeightsError(f"LPIPS backbone {filename} is not in {cached.parent}; set "
                                f"loss.lpips_weights=/path/to/{filename} to measure LPIPS")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        print(f"LPIPS: downloading {url} to {cached}", file=sys.stderr, flush=True)
        torch.hub.download_url_to_file(url, str(cached), progress=False)
    except Exception as exc:  # URLError, socket and HTTP errors, read-only cache: all mean "not here"
        raise LPIPSWeightsError(
            f"LPIPS needs the ImageNet weights {filename}: not in {cached.parent} and the download failed "
            f"({type(exc).__name__}); on a machine with internet fetch {url} and set "
            f"loss.lpips_weights=/path/to/{filename} (or copy it into {cached.parent})") from None
    return cached


def load_backbone_weights(trunk: nn.Module, path: str | Path, net: str) -> None:
    """Load torchvision ImageNet weights (``features.<i>.*`` keys) into an lpips trunk.

    lpips splits torchvision's ``features`` Sequential into ``slice1..5`` but keeps each layer's
    index, so ``sliceK.<i>.weight`` is ``features.<i>.weight``. Every trunk tensor must be present
    with the same shape; the classifier part of the file is ignored.
    """
    filename, _ = _backbone_weights_info(net)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LPIPSWeightsError(f"{path}: cannot load LPIPS backbone weights ({reason})") from None
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    mapped = {}
    for key, tensor in trunk.state_dict().items():
        _, index, name = key.split(".")
        source = f"features.{index}.{name}"
        found = state.get(source) if isinstance(state, Mapping) else None
        if not isinstance(found, torch.Tensor) or found.shape != tensor.shape:
            raise LPIPSWeightsError(f"{path}: not torchvision's ImageNet {net} weights ({filename}): "
                                    f"'{source}' is missing or has the wrong shape")
        mapped[key] = found
    trunk.load_state_dict(mapped, strict=True)


class LPIPSLoss(FrozenModule):
    """LPIPS distance (lpips package, v0.1 linear heads) between images in [-1, 1].

    forward(y_hat [B,3,H,W], y [B,3,H,W], reduction="mean") -> scalar mean over the batch
    (pSp's value), or [B] with ``reduction="none"``. AlexNet needs H, W >= 32.

    ``pretrained=False`` leaves the trunk random (tests only); the linear heads ship inside the
    lpips package and are always loaded.
    """

    def __init__(self, net: str = "alex", weights_path: str | Path | None = None, pretrained: bool = True,
                 download: bool = True):
        super().__init__()
        import lpips  # imports torchvision; only needed once an LPIPS term is built

        # An unknown net or a missing backbone file fails here, before anything is built.
        _backbone_weights_info(net)
        backbone = resolve_backbone_weights(net, weights_path, download) if pretrained else None
        # pnet_rand=True: never let torchvision download on its own; the trunk is filled below.
        with warnings.catch_warnings():  # lpips 0.1.4 still calls torchvision's deprecated `pretrained=`
            warnings.filterwarnings("ignore", message=".*(pretrained|weight enum)", category=UserWarning)
            self.net = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
        if backbone is not None:
            load_backbone_weights(self.net.net, backbone, net)
        self.freeze()

    def forward(self, y_hat: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        if reduction not in ("mean", "none"):
            raise ValueError(f"LPIPSLoss reduction must be 'mean' or 'none', got {reduction!r}")
        distance = self.net(y_hat, y, normalize=False).flatten()  # [B, 1, 1, 1] -> [B]
        return distance.mean() if reduction == "mean" else distance


# ----------------------------------------------------------------------------------------------
# Identity


def id_crop_box(height: int, width: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of pSp's face crop, scaled from 256x256 to ``height x width``."""
    top, bottom, left, right = ID_CROP_256
    sy, sx = height / 256, width / 256
    return (int(math.floor(top * sy + 0.5)), int(math.floor(bottom * sy + 0.5)),
            int(math.floor(left * sx + 0.5)), int(math.floor(right * sx + 0.5)))


class IDLoss(FrozenModule):
    """pSp's identity loss with a frozen face recogniser (ArcFace IR-SE-50).

    Each image [B, 3, H, W] in [-1, 1] is cropped to the face box (``[35:223, 32:220]`` at 256,
    scaled for other sizes), adaptive-average-pooled to 112x112 and embedded as is (no re-normalising)
    into unit vectors [B, 512]. forward(y_hat, y) -> (loss, similarity), both scalars:
    ``loss = mean(1 - <f(y_hat), f(y)>)`` and ``similarity = mean(<f(y_hat), f(y)>)`` (detached, a
    metric). The target embedding is computed without gradients, as pSp detaches it.
    """

    def __init__(self, arcface: nn.Module):
        super().__init__()
        self.arcface = arcface
        self.pool = nn.AdaptiveAvgPool2d((ID_INPUT_SIZE, ID_INPUT_SIZE))
        self.freeze()

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> unit embeddings [B, D]."""
        top, bottom, left, right = id_crop_box(x.shape[-2], x.shape[-1])
        return self.arcface(self.pool(x[:, :, top:bottom, left:right]))

    def forward(self, y_hat: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            target = self.embed(y).float()
        similarity = (self.embed(y_hat).float() * target).sum(dim=1)
        return (1.0 - similarity).mean(), similarity.mean().detach()


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
    def from_config(cls, loss_cfg: "LossConfig", arcface: nn.Module | None = None,
                    lpips_pretrained: bool = True, start_from_latent_avg: bool = True) -> "PSPLoss":
        """Build from the ``loss`` config section; loads ``loss.id_weights`` when loss.id > 0 and
        no ``arcface`` is given (an ``arcface`` given with loss.id = 0 serves the validation
        metric only). ``start_from_latent_avg`` is ``model.start_from_latent_avg``."""
        if loss_cfg.id > 0 and arcface is None:
            if loss_cfg.id_weights is None:
                raise ValueError("config key 'loss.id_weights' is null but loss.id > 0; set it to "
                                 "model_ir_se50.pth or set loss.id=0")
            from psp.nets.arcface import load_arcface

            arcface = load_arcface(loss_cfg.id_weights)
        weights = {term: getattr(loss_cfg, term) for term in LOSS_TERMS}
        return cls(weights, lpips_net=loss_cfg.lpips_net, lpips_weights=loss_cfg.lpips_weights,
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

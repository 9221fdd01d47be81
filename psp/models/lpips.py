"""LPIPS (Zhang et al. 2018) as a frozen network, with its ImageNet trunk loaded from a local file.

Used by the training loss, code refinement and the evaluation metrics. The lpips package ships the
linear heads; the AlexNet/VGG trunk comes from torchvision's ImageNet file, found in the torch hub
cache or at a given path, and is never downloaded by torchvision on its own (offline clusters).
"""
from __future__ import annotations

import sys
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from psp.errors import CheckpointError, first_line
from psp.models.frozen import FrozenModule

# torchvision weight enums of the LPIPS trunks; their URL names the file torch.hub caches.
LPIPS_BACKBONES = {"alex": "AlexNet_Weights", "vgg": "VGG16_Weights"}


class LPIPSWeightsError(CheckpointError, FileNotFoundError):
    """The LPIPS ImageNet backbone weights are missing or not usable; the message is one line."""




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
            raise LPIPSWeightsError(f"LPIPS backbone weights '{path}' (lpips.weights) do not exist; "
                                    f"expected torchvision's {filename} ({url})")
        return path
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if cached.is_file():
        return cached
    if not download:
        raise LPIPSWeightsError(f"LPIPS backbone {filename} is not in {cached.parent}; set "
                                f"lpips.weights=/path/to/{filename} to measure LPIPS")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        print(f"LPIPS: downloading {url} to {cached}", file=sys.stderr, flush=True)
        torch.hub.download_url_to_file(url, str(cached), progress=False)
    except Exception as exc:  # URLError, socket and HTTP errors, read-only cache: all mean "not here"
        raise LPIPSWeightsError(
            f"LPIPS needs the ImageNet weights {filename}: not in {cached.parent} and the download failed "
            f"({type(exc).__name__}); on a machine with internet fetch {url} and set "
            f"lpips.weights=/path/to/{filename} (or copy it into {cached.parent})") from None
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
    except Exception as exc:  # any unreadable file: name it and say what was expected
        raise LPIPSWeightsError(f"{path}: cannot load LPIPS backbone weights ({first_line(exc)})") from None
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

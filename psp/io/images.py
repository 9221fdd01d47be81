"""Image files in and out: find them, decode any of them to RGB, convert to and from tensors.

Shared by training (``psp.training.data``) and inference (``infer.py``), so both see exactly the same pixels.

Decoding policy (``load_rgb``):

- EXIF orientation is applied, so a portrait phone photo is encoded upright.
- Every PIL mode becomes 8-bit RGB. Transparent pixels (RGBA, LA, PA, palette or grey images with a
  transparency key) are composited on **white**, the background a viewer shows; 16-bit greys
  (``I;16*``, ``I``) are scaled by 255/65535; float images (``F``) are read as [0, 1] when they lie
  in it, else as [0, 255]; CMYK uses PIL's conversion (ICC profiles are not applied).
- The whole file is decoded up front, so a truncated or corrupt file fails here, with an
  :class:`ImageLoadError` whose one-line message names the file and the reason.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
DEFAULT_MIN_SIZE = 16

_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


class ImageLoadError(ValueError):
    """A file that cannot be used as an image; ``str(err)`` is ``"<path>: <reason>"`` on one line."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def is_image_file(path: str | os.PathLike) -> bool:
    """True if the name has one of :data:`IMAGE_EXTENSIONS` (any case) and is not hidden."""
    name = Path(path).name
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS


def list_images(root: str | os.PathLike) -> list[Path]:
    """All image files under ``root``, recursively, sorted by their path relative to ``root``.

    Hidden files and folders (names starting with ``.``, e.g. macOS ``._x.jpg`` forks) are skipped.
    Symlinked folders are followed once each (a link cycle cannot loop). The order is the same on
    every machine: it depends only on the relative paths.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder '{root}' does not exist or is not a folder")
    found: list[Path] = []
    seen: set[str] = set()
    for folder, subfolders, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            subfolders[:] = []
            continue
        seen.add(real)
        # Sorted so that a folder reachable by two routes is always reported under the same one.
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        found.extend(Path(folder) / f for f in files if is_image_file(f))
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def load_rgb(path: str | os.PathLike, min_size: int = DEFAULT_MIN_SIZE) -> Image.Image:
    """Decode ``path`` fully into an upright 8-bit RGB image (policy in the module docstring).

    Raises :class:`ImageLoadError` for an empty, unreadable, non-image, truncated or corrupt file,
    or one whose shorter side is below ``min_size`` pixels.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageLoadError(path, "empty file")
        img = Image.open(path)
    except ImageLoadError:
        raise
    except FileNotFoundError:
        raise ImageLoadError(path, "file not found") from None
    except PermissionError:
        raise ImageLoadError(path, "cannot read: permission denied") from None
    except UnidentifiedImageError:
        raise ImageLoadError(path, "not an image (unknown or unsupported format)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageLoadError(path, _decode_failure(exc)) from None
    with img:
        try:
            img.load()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise ImageLoadError(path, _decode_failure(exc)) from None
        try:
            upright = ImageOps.exif_transpose(img)
        except Exception as exc:  # PIL raises assorted types on malformed EXIF blocks
            raise ImageLoadError(path, f"malformed EXIF metadata ({type(exc).__name__})") from None
        try:
            rgb = _to_rgb(upright)
        except ValueError as exc:
            raise ImageLoadError(path, f"unsupported image mode {upright.mode} ({exc})") from None
    if min(rgb.size) < min_size:
        w, h = rgb.size
        raise ImageLoadError(path, f"too small: {w}x{h} < {min_size} px minimum")
    return rgb


def _decode_failure(exc: BaseException) -> str:
    """The one-line reason for a PIL decoding error (PIL's messages vary by format and version)."""
    if isinstance(exc, Image.DecompressionBombError):
        return "too large: exceeds PIL's decompression-bomb pixel limit"
    if isinstance(exc, OSError) and exc.errno is not None:  # the OS failed, not the decoder
        return f"cannot read: {exc.strerror}"
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    lowered = message.lower()
    if "truncated" in lowered or "broken data stream" in lowered or "premature end" in lowered:
        return "truncated image"
    return f"corrupt image ({message})"


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB (alpha on white, 16-bit and float rescaled)."""
    if img.mode == "RGB":
        return img.copy()
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
        return background
    if img.mode in _SIXTEEN_BIT_MODES:
        # PIL's own I -> L conversion clips at 255 instead of scaling, turning photos white.
        grey = np.asarray(img, dtype=np.float64) * (255.0 / 65535.0)
        return _grey_to_rgb(grey)
    if img.mode == "F":
        grey = np.asarray(img, dtype=np.float64)
        finite = grey[np.isfinite(grey)]
        if finite.size and finite.min() >= 0.0 and finite.max() <= 1.0:
            grey = grey * 255.0
        return _grey_to_rgb(np.nan_to_num(grey))
    return img.convert("RGB")


def _grey_to_rgb(grey: np.ndarray) -> Image.Image:
    """A float [H, W] array on the 0..255 scale as an RGB image (rounded, clipped)."""
    levels = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
    return Image.fromarray(levels).convert("RGB")


def to_tensor(img: Image.Image, size: int) -> torch.Tensor:
    """RGB image -> [3, size, size] float32 in [-1, 1].

    Same as pSp's ``Resize((size, size))`` + ``ToTensor`` + ``Normalize(0.5, 0.5)``: PIL bilinear
    resize (antialiased when shrinking; the aspect ratio is not kept), then ``x / 127.5 - 1``.
    """
    if img.mode != "RGB":
        raise ValueError(f"to_tensor expects an RGB image, got mode {img.mode}; load it with load_rgb")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    pixels = torch.from_numpy(np.array(img, dtype=np.uint8, copy=True))  # [H, W, 3]
    return pixels.permute(2, 0, 1).float().div(255.0).sub(0.5).div(0.5)


def to_image(tensor: torch.Tensor) -> Image.Image:
    """[3, H, W] tensor in [-1, 1] -> 8-bit RGB image (clipped, rounded): the inverse of to_tensor."""
    if tensor.ndim != 3 or tensor.shape[0] != 3:
        raise ValueError(f"to_image expects a [3, H, W] tensor, got shape {list(tensor.shape)}")
    levels = tensor.detach().float().cpu().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)
    return Image.fromarray(levels.permute(1, 2, 0).numpy())

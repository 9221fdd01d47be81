"""Build a `Generator` from a rosinality-format file or state dict, inferring its configuration.

rosinality files are ``{"g_ema": state_dict, "latent_avg"?: [style_dim], "args"?: Namespace,
"g"?, "d"?, ...}``; a bare ``g_ema`` state dict is accepted too. The architecture is read off the
tensor shapes: size from the number of ToRGB layers, style_dim and n_mlp from the mapping network,
channel_multiplier (and a channel cap, for small models) from the conv widths.
"""
import os
import re
import zipfile
from typing import Any, Dict, Mapping, Optional, Tuple

import torch

from .generator import Generator, channel_table
from .errors import CheckpointError
from .io import PathLike, safe_load


def infer_generator_config(state_dict: Mapping[str, torch.Tensor],
                           source: str = "state dict") -> Dict[str, Any]:
    """Generator keyword arguments that reproduce ``state_dict``'s shapes.

    Returns ``{"size", "style_dim", "n_mlp", "channel_multiplier", "channel_max"}``
    (``channel_max`` None unless the widths are capped below rosinality's table).
    Raises ValueError naming ``source`` when this is not a StyleGAN2 generator state dict.
    """
    for key in ("input.input", "conv1.conv.weight", "to_rgb1.conv.weight"):
        if key not in state_dict:
            sample = ", ".join(list(state_dict)[:5])
            raise CheckpointError(f"{source}: not a StyleGAN2 generator state dict: no '{key}' "
                             f"(first keys: {sample or 'none'})")
    n_mlp = max(_indices(state_dict, r"style\.(\d+)\.weight"), default=0)  # style.0 is PixelNorm
    n_levels = max(_indices(state_dict, r"to_rgbs\.(\d+)\.conv\.weight"), default=-1) + 1
    style_dim = state_dict["conv1.conv.modulation.weight"].shape[1]
    widths = {4: state_dict["conv1.conv.weight"].shape[1]}
    for level in range(n_levels):
        key = f"convs.{2 * level}.conv.weight"
        if key not in state_dict:
            raise CheckpointError(f"{source}: not a StyleGAN2 generator state dict: "
                             f"to_rgbs.{level} is present but {key} is missing")
        widths[2 ** (level + 3)] = state_dict[key].shape[1]
    size = 2 ** (n_levels + 2)

    largest = max(widths.values())
    channel_max = largest if largest < 512 else None
    multiplier = 2
    for res, width in widths.items():
        # The first level under the cap (from the top) pins the multiplier: width = 2**(14-log) * cm.
        if res >= 64 and (channel_max is None or width < channel_max):
            multiplier = width / 2 ** (14 - res.bit_length() + 1)
    multiplier = int(multiplier) if float(multiplier).is_integer() else multiplier
    config = dict(size=size, style_dim=style_dim, n_mlp=n_mlp,
                  channel_multiplier=multiplier, channel_max=channel_max)
    if channel_table(size, multiplier, channel_max) != widths:
        raise CheckpointError(f"{source}: channel widths {widths} match no rosinality channel table "
                         f"(closest guess: {_describe(config)})")
    return config


def _indices(state_dict: Mapping[str, torch.Tensor], pattern: str) -> set:
    """The integers captured by ``pattern`` across the keys."""
    return {int(m.group(1)) for m in map(re.compile(pattern).fullmatch, state_dict) if m}


def _describe(config: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in config.items() if k != "channel_max" or v is not None)


def build_generator(state_dict: Mapping[str, torch.Tensor], size: Optional[int] = None,
                    channel_multiplier: Optional[float] = None, channel_max: Optional[int] = None,
                    impl: Optional[str] = None, source: str = "state dict",
                    conv_clamp: Optional[float] = None) -> Generator:
    """A `Generator` holding ``state_dict`` (loaded with ``strict=True``).

    ``size``, ``channel_multiplier`` and ``channel_max`` default to what the shapes say; given
    values are checked, and a mismatch raises ValueError naming the first disagreeing key, the
    expected and found shapes, and the configuration the weights appear to have. ``conv_clamp``:
    see `Generator` (files converted from NVIDIA pickles record it).
    """
    found = infer_generator_config(state_dict, source)
    config = dict(found)
    for name, value in (("size", size), ("channel_multiplier", channel_multiplier),
                        ("channel_max", channel_max)):
        if value is not None:
            config[name] = value
    generator = Generator(**config, impl=impl, conv_clamp=conv_clamp)
    expected = generator.state_dict()
    for key, tensor in expected.items():
        if key not in state_dict:
            raise CheckpointError(f"{source}: missing key '{key}' needed by Generator({_describe(config)}); "
                             f"the weights look like Generator({_describe(found)})")
        if tuple(state_dict[key].shape) != tuple(tensor.shape):
            raise CheckpointError(f"{source}: '{key}' has shape {list(state_dict[key].shape)} but "
                             f"Generator({_describe(config)}) expects {list(tensor.shape)}; the "
                             f"weights look like Generator({_describe(found)})")
    unexpected = sorted(set(state_dict) - set(expected))
    if unexpected:
        raise CheckpointError(f"{source}: {len(unexpected)} keys that Generator({_describe(config)}) "
                         f"does not have, e.g. {unexpected[:3]}; the weights look like "
                         f"Generator({_describe(found)})")
    generator.load_state_dict(state_dict, strict=True)
    return generator


def load_generator(path: PathLike, size: Optional[int] = None,
                   channel_multiplier: Optional[float] = None, channel_max: Optional[int] = None,
                   map_location: Any = "cpu",
                   impl: Optional[str] = None) -> Tuple[Generator, Optional[torch.Tensor]]:
    """Load a rosinality-format generator file (``g_ema`` + optional ``latent_avg``) or a bare
    generator state dict, safely (`safe_load`); or an NVIDIA StyleGAN2-ADA ``.pkl`` (snapshot dict
    with ``G_ema`` or a bare generator), read by a restricted unpickler that runs nothing from it.

    Returns ``(generator in eval mode on map_location, latent_avg [style_dim] or None)``; for an
    NVIDIA pickle latent_avg is the mapping network's tracked ``w_avg``.
    """
    source = os.fspath(path)
    if os.path.isfile(source) and _is_nvidia(source):
        generator, w_avg, _ = load_nvidia_generator(source)
        return generator.to(map_location).eval(), w_avg.to(map_location)
    checkpoint = safe_load(path, map_location=map_location)
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"{source}: expected a dict (a rosinality checkpoint or a state dict), "
                         f"got {type(checkpoint).__name__}")
    state_dict = checkpoint.get("g_ema", checkpoint)
    latent_avg = checkpoint.get("latent_avg") if "g_ema" in checkpoint else None
    if not isinstance(state_dict, Mapping) or "input.input" not in state_dict:
        keys = ", ".join(map(str, list(checkpoint)[:8]))
        raise CheckpointError(f"{source}: no StyleGAN2 generator found: expected a 'g_ema' entry or a "
                         f"generator state dict (top-level keys: {keys})")
    conv_clamp = checkpoint.get("conv_clamp") if "g_ema" in checkpoint else None
    if conv_clamp is not None and not isinstance(conv_clamp, (int, float)):
        raise ValueError(f"{source}: 'conv_clamp' must be a number or None, got {conv_clamp!r}")
    generator = build_generator(state_dict, size=size, channel_multiplier=channel_multiplier,
                                channel_max=channel_max, impl=impl, source=source,
                                conv_clamp=conv_clamp)
    return generator.to(map_location).eval(), latent_avg


def _is_nvidia(source: str) -> bool:
    """A ``.pkl`` that is not torch's zip format, or any file naming NVIDIA's persistence module
    (checked on the bytes; nothing is unpickled)."""
    from .nvidia import is_nvidia_pickle
    return (source.endswith(".pkl") and not zipfile.is_zipfile(source)) or is_nvidia_pickle(source)


def load_nvidia_generator(path: PathLike):
    """``(Generator, w_avg [w_dim], nvidia_config)`` from an NVIDIA network pickle (see
    `stylegan2.nvidia`); nothing in the file is executed."""
    from .nvidia import load_nvidia_pickle, nvidia_to_rosinality
    from .nvidia.mapping import find_generator
    source = os.fspath(path)
    record = find_generator(load_nvidia_pickle(source), source)
    config, state_dict, w_avg, nv_config = nvidia_to_rosinality(record, source)
    generator = Generator(**config)
    generator.load_state_dict(state_dict, strict=True)
    return generator.eval(), w_avg, nv_config

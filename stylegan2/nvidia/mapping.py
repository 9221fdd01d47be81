"""NVIDIA StyleGAN2-ADA generator records -> a rosinality-format ``g_ema`` state dict.

Facts of NVIDIA's ``training/networks.py`` (stylegan2-ada-pytorch; stylegan3's
``networks_stylegan2.py`` is the same) that the mapping relies on, each used where written:
- FullyConnectedLayer stores ``weight`` drawn N(0, 1/lr**2) and applies ``weight_gain =
  lr_multiplier / sqrt(in_features)``, ``bias_gain = lr_multiplier`` at run time: the same
  convention as rosinality's EqualLinear, so we convert through the effective weights.
- The mapping normalises z by its 2nd moment (eps 1e-8) = rosinality's PixelNorm; its layers are
  ``fc0..fc{num_layers-1}`` (lrelu, lr_multiplier 0.01); ``w_avg`` is a tracked buffer [w_dim];
  w is broadcast to all ``num_ws`` rows and truncation (cutoff None by default) lerps every row.
- SynthesisLayer: ``affine`` (bias init 1) gives the styles; the conv weight [O, I, 3, 3] has
  NO weight gain (demodulation cancels any scale; rosinality's 1/sqrt(I*9) cancels the same way,
  up to the 1e-8 eps); noise ``noise_const`` [R, R] times scalar ``noise_strength`` is added after
  demodulation; then ``bias_act(lrelu, gain sqrt(2), clamp conv_clamp)``.
- Up-sampling conv0 runs ``conv_transpose2d(x, w.transpose(0, 1), stride=2)`` without flipping
  (flip_weight=False for up=2 becomes "no flip" in the transposed call), then the [1,3,3,1] filter
  with pads (1, 1) and gain 4: rosinality's orientation exactly, weights copied as they are.
- ToRGBLayer: 1x1, no demodulation, styles = affine(w) * 1/sqrt(in_channels), bias [3],
  ``bias_act(linear, clamp conv_clamp)`` before the up-sampled image is added ('skip').
- Block ``bR`` uses ws rows [w_idx, w_idx + num_conv + num_torgb) and advances w_idx by num_conv:
  b4 (const [C, 4, 4], conv1, torgb) rows 0-1, bR (conv0, conv1, torgb) rows 2j+1..2j+3;
  ``num_ws = 2 * log2(res) - 2`` = rosinality's n_latent.
- channels ``min(channel_base // res, channel_max)``; fp16 layers (num_fp16_res) are stored in fp32.
"""
import math
from typing import Any, Dict, Tuple

import torch

from ..errors import CheckpointError
from ..generator import Generator
from ..loader import infer_generator_config
from .unpickler import PersistentRecord


class NvidiaImportError(CheckpointError):
    """A well-formed NVIDIA pickle of a variant this importer does not support."""


SUPPORTED = ("supported: unconditional (c_dim=0) StyleGAN2 / StyleGAN2-ADA generators with the "
             "'skip' architecture, 3 image channels and z_dim = w_dim")


def _refuse(source: str, found: str):
    raise NvidiaImportError(f"{source}: {found}; {SUPPORTED}")


def find_generator(obj: Any, source: str) -> PersistentRecord:
    """The ``G_ema`` record of a snapshot dict, or the pickled generator record itself."""
    if isinstance(obj, dict):
        if "G_ema" not in obj:
            raise ValueError(f"{source}: an NVIDIA snapshot without 'G_ema' (keys: {sorted(map(str, obj))})")
        obj = obj["G_ema"]
    if not isinstance(obj, PersistentRecord) or obj.class_name != "Generator":
        name = obj.class_name if isinstance(obj, PersistentRecord) else type(obj).__name__
        raise ValueError(f"{source}: expected an NVIDIA Generator (or a snapshot dict with "
                         f"'G_ema'), found {name}")
    return obj


def _effective_fc(rec: PersistentRecord) -> Tuple[torch.Tensor, torch.Tensor]:
    """(weight * weight_gain, bias * bias_gain) of a FullyConnectedLayer: what it really applies."""
    weight = rec.params["weight"].detach().float()
    lr = rec.attrs.get("lr_multiplier", 1.0)
    weight_gain = rec.attrs.get("weight_gain", lr / math.sqrt(weight.shape[1]))
    bias_gain = rec.attrs.get("bias_gain", lr)
    return weight * weight_gain, rec.params["bias"].detach().float() * bias_gain


def _put_fc(sd: Dict[str, torch.Tensor], prefix: str, rec: PersistentRecord, lr_mul: float) -> None:
    weight, bias = _effective_fc(rec)
    sd[prefix + "weight"] = weight / (lr_mul / math.sqrt(weight.shape[1]))
    sd[prefix + "bias"] = bias / lr_mul


def _put_layer(sd, prefix: str, rec: PersistentRecord, noise_key: str) -> None:
    if rec.attrs.get("activation", "lrelu") != "lrelu":
        raise NvidiaImportError(f"activation {rec.attrs['activation']!r} in a synthesis layer (lrelu only)")
    sd[prefix + "conv.weight"] = rec.params["weight"].detach().float()[None]
    _put_fc(sd, prefix + "conv.modulation.", rec.modules["affine"], 1.0)
    if "noise_const" in rec.buffers:
        sd[prefix + "noise.weight"] = rec.params["noise_strength"].detach().float().reshape(1)
        sd[noise_key] = rec.buffers["noise_const"].detach().float()[None, None]
    else:  # use_noise=False: no noise at all
        res = rec.attrs["resolution"]
        sd[prefix + "noise.weight"] = torch.zeros(1)
        sd[noise_key] = torch.zeros(1, 1, res, res)
    sd[prefix + "activate.bias"] = rec.params["bias"].detach().float()


def _put_torgb(sd, prefix: str, rec: PersistentRecord) -> None:
    sd[prefix + "conv.weight"] = rec.params["weight"].detach().float()[None]
    _put_fc(sd, prefix + "conv.modulation.", rec.modules["affine"], 1.0)
    sd[prefix + "bias"] = rec.params["bias"].detach().float().reshape(1, -1, 1, 1)


def nvidia_to_rosinality(G: PersistentRecord, source: str = "pickle"):
    """Map an NVIDIA Generator record to ``(Generator kwargs, g_ema state dict, w_avg [w_dim],
    nvidia_config dict)``. Raises `NvidiaImportError` for unsupported variants."""
    c_dim = G.attrs.get("c_dim", G.init_kwargs.get("c_dim", 0))
    if c_dim:
        _refuse(source, f"a conditional generator (c_dim={c_dim})")
    mapping, synthesis = G.modules.get("mapping"), G.modules.get("synthesis")
    if synthesis is None or mapping is None:
        raise ValueError(f"{source}: the Generator has no mapping/synthesis submodules")
    if "input" in synthesis.modules or "b4" not in synthesis.modules:
        _refuse(source, "a StyleGAN3 (alias-free, -t/-r) synthesis network "
                        f"(layers {list(synthesis.modules)[:3]}...)")
    if G.attrs.get("img_channels", 3) != 3:
        _refuse(source, f"img_channels={G.attrs['img_channels']}")
    z_dim, w_dim = G.attrs.get("z_dim"), G.attrs.get("w_dim")
    if z_dim != w_dim:
        _refuse(source, f"z_dim={z_dim} != w_dim={w_dim}")

    sd: Dict[str, torch.Tensor] = {}
    fcs = sorted((k for k in mapping.modules if k.startswith("fc")), key=lambda k: int(k[2:]))
    lr_mlp = 0.01
    for i, name in enumerate(fcs):
        if mapping.modules[name].attrs.get("activation", "lrelu") != "lrelu":
            raise NvidiaImportError(f"{source}: mapping.{name} is not lrelu")
        _put_fc(sd, f"style.{i + 1}.", mapping.modules[name], lr_mlp)

    resolutions = sorted(int(k[1:]) for k in synthesis.modules if k.startswith("b"))
    clamps = set()
    for index, res in enumerate(resolutions):
        block = synthesis.modules[f"b{res}"]
        arch = block.attrs.get("architecture", "skip")
        if arch != "skip":
            _refuse(source, f"synthesis architecture {arch!r} (b{res})")
        if block.buffers.get("resample_filter") is not None:
            expected = torch.tensor([1., 3., 3., 1.])
            expected = torch.outer(expected, expected) / 64
            if not torch.allclose(block.buffers["resample_filter"].float(), expected):
                _refuse(source, f"b{res}.resample_filter is not [1,3,3,1]")
        layers = [block.modules[n] for n in ("conv0", "conv1", "torgb") if n in block.modules]
        clamps |= {layer.attrs.get("conv_clamp") for layer in layers}
        if res == 4:
            sd["input.input"] = block.params["const"].detach().float()[None]
            _put_layer(sd, "conv1.", block.modules["conv1"], "noises.noise_0")
            _put_torgb(sd, "to_rgb1.", block.modules["torgb"])
            continue
        j = index - 1
        _put_layer(sd, f"convs.{2 * j}.", block.modules["conv0"], f"noises.noise_{2 * j + 1}")
        _put_layer(sd, f"convs.{2 * j + 1}.", block.modules["conv1"], f"noises.noise_{2 * j + 2}")
        _put_torgb(sd, f"to_rgbs.{j}.", block.modules["torgb"])
    if len(clamps) != 1:
        raise NvidiaImportError(f"{source}: layers use different conv_clamp values {sorted(map(str, clamps))}")
    conv_clamp = clamps.pop()
    try:
        config = infer_generator_config(sd, source)
    except ValueError as err:
        raise NvidiaImportError(f"{source}: channel widths (channel_base/channel_max) have no "
                                f"rosinality equivalent: {err}") from None
    # Blur/upsample kernels are fixed by the [1,3,3,1] filter checked above.
    reference = Generator(**config, conv_clamp=conv_clamp).state_dict()
    for key, value in reference.items():
        if key.endswith("kernel"):
            sd[key] = value
    config["conv_clamp"] = conv_clamp
    w_avg = mapping.buffers["w_avg"].detach().float().clone()
    nv_config = {"z_dim": z_dim, "w_dim": w_dim, "c_dim": c_dim,
                 "img_resolution": G.attrs.get("img_resolution"),
                 "num_ws": G.attrs.get("num_ws"), "mapping_layers": len(fcs),
                 "conv_clamp": conv_clamp, "init_kwargs": _plain(G.init_kwargs)}
    return config, sd, w_avg, nv_config


def _plain(value):
    """Containers of str/int/float/bool/None only (for the converted file's record)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)

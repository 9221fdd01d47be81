"""Explicit key remaps between the released research weights and our module names.

Official layouts (TreB1eN's ArcFace code, copied into pSp):

    input_layer.{0,1,2}                  conv3x3 (no bias), BN2d, PReLU        -> backbone.stem.{conv,bn,act}
    body.{i}.res_layer.{0,1,2,3,4}       BN, conv3x3, PReLU, conv3x3, BN       -> backbone.stages.{s}.{j}.{bn1,conv1,act1,conv2,bn2}
    body.{i}.res_layer.5.{fc1,fc2}       SE 1x1 convs (no bias)                -> backbone.stages.{s}.{j}.attn.{fc1,fc2}
    body.{i}.shortcut_layer.{0,1}        conv1x1 (no bias), BN                 -> backbone.stages.{s}.{j}.shortcut.{conv,bn}
    styles.{j}.convs.{2k}                conv3x3 stride 2 (odd k: LeakyReLU)   -> styles.{j}.convs.{k}
    styles.{j}.linear                    EqualLinear                           -> styles.{j}.linear
    latlayer1, latlayer2                 conv1x1 with bias                     -> lateral1, lateral2
    output_layer.{0,3,4}                 BN2d, Linear, BN1d (ArcFace only)     -> head.{feature_bn,fc,embedding_bn}

`body` is one flat Sequential; unit i is unit j of stage s in stage order. In a pSp file the encoder
keys carry an `encoder.` prefix (stripped by the caller).

Compatibility traps:
- `model_ir_se50.pth` predates BatchNorm's `num_batches_tracked` buffer; PyTorch fills it on a
  strict load only through the file's metadata, which a remapped dict no longer has, so a missing
  counter is filled with 0 here (it does not affect eval-mode outputs).
- pSp builds `latlayer2` (and `latlayer1`) even when no style reads it (n_styles <= 7); our encoder
  omits unused laterals, so those official keys are dropped on import.
"""
from typing import Union

import torch
from torch import nn

from psp.errors import CheckpointError
from psp.models.arcface import ArcFace
from psp.models.nets.blocks import IRBlock
from psp.models.nets.layers import BlurPool2d, SqueezeExcite
from psp.models.nets.pyramid import GradualStyleEncoder
from stylegan2.io import safe_load
from psp.models.nets.resnet import ConvStem, ResNet

_SUFFIXES = {
    "conv": ("weight",),
    "conv_bias": ("weight", "bias"),
    "linear": ("weight", "bias"),
    "prelu": ("weight",),
    "bn": ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"),
}
_LATERALS = (("latlayer1", "lateral1"), ("latlayer2", "lateral2"))


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise ValueError(f"no official layout for this model: {what}")


def _backbone_modules(backbone: ResNet, prefix: str) -> list[tuple[str, str, str]]:
    """(official module, our module, kind) for the input layer and the IR body."""
    _require(isinstance(backbone.stem, ConvStem), "the stem must be 'conv'")
    _require(isinstance(backbone.stem.act, nn.PReLU), "the activation must be 'prelu'")
    modules = [
        ("input_layer.0", f"{prefix}stem.conv", "conv"),
        ("input_layer.1", f"{prefix}stem.bn", "bn"),
        ("input_layer.2", f"{prefix}stem.act", "prelu"),
    ]
    i = 0
    for s, stage in enumerate(backbone.stages):
        for j, unit in enumerate(stage):
            _require(isinstance(unit, IRBlock), "blocks must be 'ir' or 'ir_se'")
            _require(unit.aa is None and not isinstance(unit.shortcut.pool, BlurPool2d), "anti_alias must be off")
            _require(unit.attn is None or isinstance(unit.attn, SqueezeExcite), "attention must be 'none' or 'se'")
            official, ours = f"body.{i}", f"{prefix}stages.{s}.{j}"
            modules += [
                (f"{official}.res_layer.0", f"{ours}.bn1", "bn"),
                (f"{official}.res_layer.1", f"{ours}.conv1", "conv"),
                (f"{official}.res_layer.2", f"{ours}.act1", "prelu"),
                (f"{official}.res_layer.3", f"{ours}.conv2", "conv"),
                (f"{official}.res_layer.4", f"{ours}.bn2", "bn"),
            ]
            if unit.attn is not None:
                modules += [
                    (f"{official}.res_layer.5.fc1", f"{ours}.attn.fc1", "conv"),
                    (f"{official}.res_layer.5.fc2", f"{ours}.attn.fc2", "conv"),
                ]
            if unit.shortcut.conv is not None:
                modules += [
                    (f"{official}.shortcut_layer.0", f"{ours}.shortcut.conv", "conv"),
                    (f"{official}.shortcut_layer.1", f"{ours}.shortcut.bn", "bn"),
                ]
            i += 1
    return modules


def _encoder_modules(encoder: GradualStyleEncoder) -> list[tuple[str, str, str]]:
    modules = _backbone_modules(encoder.backbone, "backbone.")
    for j, style in enumerate(encoder.styles):
        # pSp's convs Sequential interleaves LeakyReLU modules: conv k sits at index 2k.
        modules += [(f"styles.{j}.convs.{2 * k}", f"styles.{j}.convs.{k}", "conv_bias")
                    for k in range(len(style.convs))]
        modules.append((f"styles.{j}.linear", f"styles.{j}.linear", "linear"))
    for official, ours in _LATERALS:
        if getattr(encoder, ours) is not None:
            modules.append((official, ours, "conv_bias"))
    return modules


def _arcface_modules(net: ArcFace) -> list[tuple[str, str, str]]:
    return _backbone_modules(net.backbone, "backbone.") + [
        ("output_layer.0", "head.feature_bn", "bn"),
        ("output_layer.3", "head.fc", "linear"),
        ("output_layer.4", "head.embedding_bn", "bn"),
    ]


def official_key_map(model: Union[ResNet, GradualStyleEncoder, ArcFace]) -> dict[str, str]:
    """Official parameter/buffer name -> our name, for every entry of `model.state_dict()`.

    `model` is a pSp encoder, an ArcFace recogniser, or a bare backbone (official `input_layer` and
    `body` keys only). Raises ValueError when the model's options have no official counterpart
    (other blocks, stems, activations, attention, or anti-aliasing).
    """
    if isinstance(model, GradualStyleEncoder):
        modules = _encoder_modules(model)
    elif isinstance(model, ArcFace):
        modules = _arcface_modules(model)
    elif isinstance(model, ResNet):
        modules = _backbone_modules(model, "")
    else:
        raise TypeError(f"no official layout for {type(model).__name__}")
    return {f"{official}.{suffix}": f"{ours}.{suffix}"
            for official, ours, kind in modules for suffix in _SUFFIXES[kind]}


def _droppable(key: str, model: nn.Module) -> bool:
    """Official keys we deliberately discard: laterals pSp builds but never uses (see module doc)."""
    return isinstance(model, GradualStyleEncoder) and any(
        key.startswith(official + ".") and getattr(model, ours) is None for official, ours in _LATERALS)


def from_official(state_dict: dict, model: Union[ResNet, GradualStyleEncoder, ArcFace],
                  source: str = "state dict", ignore: tuple[str, ...] = ()) -> dict:
    """An official-layout state dict renamed to ours, checked against `model` (names and shapes).

    `ignore` lists official key prefixes left out on both sides (neither read nor required), e.g.
    ("output_layer.",) to take only the body of a recogniser file. The result holds every other
    entry of `model.state_dict()`, in its order. Raises ValueError naming the first unexpected key,
    missing key, or shape mismatch.
    """
    key_map = {k: v for k, v in official_key_map(model).items() if not k.startswith(ignore)}
    expected = model.state_dict()
    out = {}
    for key, value in state_dict.items():
        if key.startswith(ignore) or (key not in key_map and _droppable(key, model)):
            continue
        if key not in key_map:
            raise CheckpointError(f"{source}: unexpected key '{key}' for the official {type(model).__name__} layout")
        ours = key_map[key]
        if tuple(value.shape) != tuple(expected[ours].shape):
            raise CheckpointError(f"{source}: key '{key}' has shape {list(value.shape)}, "
                             f"expected {list(expected[ours].shape)}")
        out[ours] = value
    for key, ours in key_map.items():
        if ours in out:
            continue
        if key.endswith(".num_batches_tracked"):
            out[ours] = torch.zeros((), dtype=torch.long)  # pre-0.4.1 files have no counter
            continue
        raise CheckpointError(f"{source}: missing key '{key}' for the official {type(model).__name__} layout")
    return {ours: out[ours] for ours in expected if ours in out}


def to_official(state_dict: dict, model: Union[ResNet, GradualStyleEncoder, ArcFace], prefix: str = "") -> dict:
    """Our state dict renamed to the official layout, each key prefixed by `prefix` (pSp files
    use "encoder."). Raises ValueError naming the first key of ours without an official name, or
    the first missing one."""
    to_ours = official_key_map(model)
    lookup = {ours: official for official, ours in to_ours.items()}
    for key in state_dict:
        if key not in lookup:
            raise ValueError(f"key '{key}' has no official name in the {type(model).__name__} layout")
    out = {}
    for official, ours in to_ours.items():
        if ours not in state_dict:
            raise ValueError(f"missing key '{ours}' (official '{official}')")
        out[prefix + official] = state_dict[ours]
    return out


def load_arcface(path: str, map_location="cpu") -> ArcFace:
    """The released IR-SE-50 recogniser (`model_ir_se50.pth`, TreB1eN/pSp layout) in eval mode,
    with gradients disabled (it is only ever a frozen loss network)."""
    state = safe_load(path, map_location=map_location)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected an ArcFace state dict, got {type(state).__name__}")
    net = ArcFace()
    net.load_state_dict(from_official(state, net, source=str(path)), strict=True)
    return net.eval().requires_grad_(False)

"""Which family a released research file holds, read from its ``opts`` (never from its key names).

pSp (eladrich/pixel2style2pixel), e4e (omertov/encoder4editing) and ReStyle
(yuval-alaluf/restyle-encoder) all save the same container:

    {"state_dict": {"encoder.*": ..., "decoder.*": ...},   # the whole net's state dict
     "opts": vars(training options),                       # a dict (older pSp files: a Namespace)
     "latent_avg": [n_styles, 512] or [512],               # saved when start_from_latent_avg (ReStyle: always)
     ...}                                                  # e4e with save_training_data also keeps global_step,
                                                           # optimizer, best_val_loss, discriminator_state_dict,
                                                           # discriminator_optimizer_state_dict (training state;
                                                           # not read here, so not needed and never an error)

Facts each family's loader relies on:

- The family is ``opts["encoder_type"]``: GradualStyleEncoder (pSp; old pSp files omit the key),
  Encoder4Editing (e4e), BackboneEncoder (ReStyle over pSp, its models/psp.py) and
  ProgressiveBackboneEncoder (ReStyle over e4e, its models/e4e.py). e4e's encoder keys are exactly
  a pSp encoder's (``input_layer``, ``body``, ``styles.j``, ``latlayer1``, ``latlayer2``), so key
  names cannot tell the two apart. The ResNet34 variants (ResNet*Encoder, for non-face domains)
  and pSp's W encoders are not supported.
- Generator side: pSp and ReStyle read ``opts["output_size"]`` (pSp's default for old files: 1024);
  e4e reads ``opts["stylegan_size"]`` (its setup_model overrides it from dataset_type: ffhq 1024,
  cars 512, else 256). Missing, the decoder's own shapes decide. The decoder is always
  Generator(size, 512, 8, channel_multiplier=2) in rosinality's names.
- Encoder input channels: ``opts["input_nc"]`` for pSp and ReStyle (6 for ReStyle: image + current
  reconstruction); e4e's Encoder4Editing always builds 3 (it does not read input_nc).
- Rows: n_styles = 2 log2(size) - 2. pSp/e4e rows j < 3 read C3 (16 x 16), j < 7 P2 (32 x 32), the rest
  P1 (64 x 64); every ReStyle row reads C3 (all its style blocks are GradualStyleBlock(512, 512, 16)).
- e4e: w0 = styles[0](C3) copied to every row; rows 1..stage add styles[j] on their level. The model
  is built at ProgressiveStage.Inference (18), i.e. every row, which is how the released file runs.
- ``latent_avg``: pSp and e4e add ``latent_avg.repeat(B, 1, 1)`` to the encoder output when
  ``opts["start_from_latent_avg"]``. ReStyle adds it on the first pass unconditionally (the
  residual branch needs ``latent is not None`` and 6 input channels), so a ReStyle file without
  latent_avg cannot run.
- ReStyle iterations (utils/inference_utils.run_on_batch): pass 1 reads [x, avg_image] with
  avg_image = the decode of ``latent_avg[None]`` (input_is_latent, randomize_noise=False) through
  the face pool (AdaptiveAvgPool2d to 256); pass t > 1 reads [x, face_pool(y_{t-1})] and adds the
  previous codes (the generator returns the codes it was given). Every decode uses the stored
  noise (randomize_noise=False). The inference default is 5 passes (n_iters_per_batch in
  options/test_options.py, which overrides the training value stored in the file's opts).
- Training init (model.encoder.init): ReStyle copies all of model_ir_se50.pth's input layer, its
  conv drawn from torch.randn with the RGB filters in input channels 0..2; pSp drops the input
  layer for non-RGB inputs (label maps).
- The original loads ReStyle encoders with strict=False; here every key must match (a missing key
  is an error, not a silently random layer).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Optional

from psp.errors import CheckpointError, CheckpointFormatError

ENCODER_TYPES = {
    "GradualStyleEncoder": "psp",
    "Encoder4Editing": "e4e",
    "BackboneEncoder": "restyle_psp",
    "ProgressiveBackboneEncoder": "restyle_e4e",
}


@dataclass(frozen=True)
class ReleasedSpec:
    """What a released file's opts say: family, generator side (None: from the decoder), encoder
    input channels, and whether w_avg is added to the encoder output."""

    family: str
    output_size: Optional[int]
    input_nc: int
    start_from_latent_avg: bool


def released_opts(ckpt: dict, source: str) -> dict:
    """The file's ``opts`` as a dict (older pSp files store an argparse.Namespace)."""
    opts = ckpt["opts"]
    opts = vars(opts) if isinstance(opts, argparse.Namespace) else opts
    if not isinstance(opts, dict) or not isinstance(ckpt["state_dict"], dict):
        raise CheckpointError(f"{source}: 'opts' must be a dict and 'state_dict' a dict of tensors "
                              f"(found {type(opts).__name__} and {type(ckpt['state_dict']).__name__})")
    return opts


def released_spec(opts: dict, has_latent_avg: bool, source: str) -> ReleasedSpec:
    """The family and shape facts of a released file from its ``opts`` (see the module doc)."""
    encoder_type = opts.get("encoder_type", "GradualStyleEncoder")
    family = ENCODER_TYPES.get(encoder_type)
    if family is None:
        raise CheckpointFormatError(f"{source}: opts['encoder_type']={encoder_type!r} is not supported "
                                    f"(supported: {', '.join(ENCODER_TYPES)})")
    if opts.get("learn_in_w", False):
        raise CheckpointFormatError(f"{source}: opts['learn_in_w']=True is not supported (W+ encoders only)")
    if family == "psp" and int(opts.get("input_nc", 3)) == 6 and "n_iters_per_batch" in opts:
        raise CheckpointFormatError(f"{source}: a ReStyle file with the pSp pyramid (encoder_type "
                                    "'GradualStyleEncoder', input_nc 6) is not supported; use BackboneEncoder")
    if family == "e4e":
        size = opts.get("stylegan_size")
        input_nc = 3
    else:
        size = opts.get("output_size", 1024 if family == "psp" else None)
        input_nc = int(opts.get("input_nc", 3))
    if family in ("restyle_psp", "restyle_e4e"):
        if input_nc != 6:
            raise CheckpointFormatError(f"{source}: a ReStyle encoder reads 6 channels but opts['input_nc'] "
                                        f"is {input_nc}")
        if not has_latent_avg:
            raise CheckpointFormatError(f"{source}: a ReStyle file needs 'latent_avg' (its first pass starts "
                                        "from it) and this one has none")
        start = True
    else:
        # pSp saves latent_avg only when it trained with start_from_latent_avg, so its presence is
        # the fallback when an old file's opts lack the flag.
        start = bool(opts.get("start_from_latent_avg", has_latent_avg))
    return ReleasedSpec(family, None if size is None else int(size), input_nc, start)

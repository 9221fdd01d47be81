"""The inference form of a PSP model: fast, frozen, and impossible to save or train.

Inversion, rendering, evaluation and the benchmarks all encode and decode through this one form.
Its encoder is rewritten for speed (``psp.models.nets.fuse``: BatchNorm folded into the
convolutions, the style blocks of each pyramid level merged, channels-last weights), and its
generator is the CPU inference rewrite of the specification (``stylegan2.inference``: a frozen
copy, same state dict). The encoder rewrite changes its parameter names: a state dict of it would load into nothing, so it offers no ``save`` and
refuses to be pickled. Save the :class:`~psp.models.model.PSP` model instead.
"""
from __future__ import annotations

import copy
import os
from typing import Any, Union

import torch

from psp.models.families import FamilyEncoding
from psp.models.frozen import freeze
from psp.models.generated import resize_generated
from psp.models.nets.fuse import optimize_for_inference
from stylegan2.inference import optimize_generator_for_inference

PathLike = Union[str, "os.PathLike[str]"]


class InferenceModel(FamilyEncoding):
    """Encoder (rewritten) + generator + average latent, frozen, for inference only, of any family
    (``encode(x, iterations=None)``, ``encode_iterations``: :class:`psp.models.families.FamilyEncoding`).

    Attributes:
        config: the ``model`` config section (ModelConfig) of the source model.
        encoder: the fused encoder, x [B, input_nc, S, S] -> offsets [B, n_styles, style_dim]
            (channels-last input is fastest: the layout of its weights).
        generator: the stylegan2.Generator (frozen, eval mode).
        w_avg: [n_styles, style_dim], added by :meth:`encode` when ``start_from_latent_avg``.
        input_size, n_styles, start_from_latent_avg: as on the PSP model.
    """

    def __init__(self, config: Any, encoder: torch.nn.Module, generator: torch.nn.Module, w_avg: torch.Tensor,
                 input_size: int, start_from_latent_avg: bool):
        self.config = config
        self.encoder = freeze(encoder)
        self.generator = freeze(generator)
        self.w_avg = w_avg.detach()
        self.input_size = input_size
        self.n_styles = w_avg.shape[0]
        self.start_from_latent_avg = start_from_latent_avg

    @classmethod
    def from_model(cls, model, channels_last: bool = True, copy_encoder: bool = True) -> "InferenceModel":
        """The inference form of a PSP ``model``. With ``copy_encoder=False`` the model's own encoder
        is rewritten (no second copy in memory), and ``model`` must not be used afterwards."""
        encoder = copy.deepcopy(model.encoder) if copy_encoder else model.encoder
        optimize_for_inference(encoder, channels_last)
        generator = optimize_generator_for_inference(model.generator)  # a rewritten copy
        return cls(model.config, encoder, generator, model.w_avg, model.input_size,
                   model.start_from_latent_avg)

    @classmethod
    def from_checkpoint(cls, path: PathLike, device: Union[str, torch.device] = "cpu") -> "InferenceModel":
        """``PSP.from_checkpoint(path)`` in its inference form on ``device``, without a second encoder copy."""
        from psp.models.model import PSP

        return cls.from_model(PSP.from_checkpoint(path, device=device), copy_encoder=False)

    @property
    def device(self) -> torch.device:
        return self.w_avg.device

    def to(self, device: Union[str, torch.device]) -> "InferenceModel":
        """Move everything to ``device``; returns self."""
        self.encoder.to(device)
        self.generator.to(device)
        self.w_avg = self.w_avg.to(device)
        return self

    def decode(self, codes: torch.Tensor, resize: bool = True) -> torch.Tensor:
        """W+ codes [B, n_styles, style_dim] -> images [B, 3, S, S] (resize=False: the generator's size).

        Deterministic: the generator's stored noise maps (randomize_noise=False).
        """
        images, _ = self.generator([codes], input_is_latent=True, randomize_noise=False)
        return resize_generated(images, self.input_size) if resize else images

    def __reduce__(self):
        raise TypeError("an InferenceModel cannot be saved (its encoder is rewritten for speed and loads into "
                        "nothing); save the PSP model with PSP.save() instead")

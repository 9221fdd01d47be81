"""The encoder families: which network each builds, and how each turns an image into W+ codes.

    family        encoder (psp.models.nets)      input          codes
    psp           GradualStyleEncoder            x              E(x) + w_avg  (w_avg when start_from_latent_avg)
    e4e           Encoder4Editing                x              E(x) + w_avg  (E: w0 + per-row deltas)
    restyle_psp   BackboneEncoder                [x, y_t]       c_{t+1} = E([x, y_t]) + c_t
    restyle_e4e   ProgressiveBackboneEncoder     [x, y_t]       c_{t+1} = E([x, y_t]) + c_t

ReStyle (both families) starts from c_0 = w_avg and y_0 = the average image, decode(w_avg) pooled
to the encoder input side; after each pass y_t = decode(c_t) pooled the same way (the adaptive
average pool of ``decode(resize=True)``, pSp's ``face_pool``), with the generator's stored noise.
``[x, y]`` is the channel concatenation (6 channels for RGB). The original adds ``latent_avg`` on the
first pass whatever ``start_from_latent_avg`` says, so the ReStyle families always use w_avg.
Its inference default is 5 passes (``n_iters_per_batch`` in its test options); ``model.iterations``.
"""
from __future__ import annotations

from typing import Optional

import torch

from psp.models.nets.e4e import Encoder4Editing
from psp.models.nets.pyramid import GradualStyleEncoder
from psp.models.nets.restyle import BackboneEncoder, ProgressiveBackboneEncoder

ENCODER_CLASSES = {
    "psp": GradualStyleEncoder,
    "e4e": Encoder4Editing,
    "restyle_psp": BackboneEncoder,
    "restyle_e4e": ProgressiveBackboneEncoder,
}
FAMILIES = tuple(ENCODER_CLASSES)
ITERATIVE_FAMILIES = ("restyle_psp", "restyle_e4e")
RESTYLE_INFERENCE_ITERATIONS = 5  # restyle-encoder options/test_options.py: n_iters_per_batch


def is_iterative(family: str) -> bool:
    """Whether `family` refines its codes over several encoder passes (ReStyle)."""
    return family in ITERATIVE_FAMILIES


def encoder_input_channels(family: str, image_channels: int = 3) -> int:
    """Channels the family's encoder reads: the image, plus the current reconstruction for ReStyle."""
    return 2 * image_channels if is_iterative(family) else image_channels


class FamilyEncoding:
    """`encode`, `encode_iterations`, `encode_step` and `average_image` for a model of any family.

    Mixed into the trainable `PSP` and its frozen `InferenceModel`; both provide `config`
    (ModelConfig: `family`, `iterations`), `encoder`, `w_avg` [n_styles, style_dim],
    `start_from_latent_avg` and `decode(codes, resize=True)`.
    """

    @property
    def family(self) -> str:
        return self.config.family

    @property
    def is_iterative(self) -> bool:
        return is_iterative(self.config.family)

    @property
    def default_iterations(self) -> int:
        """Encoder passes `encode` runs by default: `model.iterations` for ReStyle, else 1."""
        return self.config.iterations if self.is_iterative else 1

    def resolve_iterations(self, iterations: Optional[int]) -> int:
        """The passes `encode` runs for `iterations` (None: the default); ValueError when this family
        cannot run them."""
        if iterations is None:
            return self.default_iterations
        if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 1:
            raise ValueError(f"iterations must be a positive int, got {iterations!r}")
        if iterations != 1 and not self.is_iterative:
            raise ValueError(f"iterations={iterations} needs a ReStyle model; this {self.family} model "
                             "encodes in one pass (drop it or use 1)")
        return iterations

    def average_image(self) -> torch.Tensor:
        """ReStyle's starting reconstruction: decode(w_avg) pooled to the input side, [1, 3, S, S]."""
        return self.decode(self.w_avg[None], resize=True)

    def encode_step(self, x: torch.Tensor, images: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """One ReStyle pass: E([x, images]) + codes.

        x, images [B, 3, S, S] (images: the current reconstruction, or the average image);
        codes [B or 1, n_styles, style_dim] the current codes -> the next codes [B, n_styles, style_dim].
        """
        images = images.to(x.dtype).expand(x.shape[0], -1, -1, -1)
        stacked = torch.cat([x, images], dim=1)
        if x.is_contiguous(memory_format=torch.channels_last):
            stacked = stacked.contiguous(memory_format=torch.channels_last)
        return self.encoder(stacked) + codes

    def encode_iterations(self, x: torch.Tensor, iterations: Optional[int] = None) -> list[torch.Tensor]:
        """The codes after each pass, [c_1, ..., c_k], each [B, n_styles, style_dim] (one entry for the
        single-pass families). `iterations` = k (default: `default_iterations`)."""
        k = self.resolve_iterations(iterations)
        if not self.is_iterative:
            codes = self.encoder(x)
            return [codes + self.w_avg if self.start_from_latent_avg else codes]
        images, codes, out = self.average_image(), self.w_avg[None], []
        for t in range(k):
            codes = self.encode_step(x, images, codes)
            out.append(codes)
            if t + 1 < k:
                images = self.decode(codes, resize=True)
        return out

    def encode(self, x: torch.Tensor, iterations: Optional[int] = None) -> torch.Tensor:
        """x [B, 3, S, S] in [-1, 1] -> the final W+ codes [B, n_styles, style_dim]: pSp and e4e add w_avg
        (when start_from_latent_avg); ReStyle runs `iterations` passes (default `default_iterations`)."""
        return self.encode_iterations(x, iterations)[-1]

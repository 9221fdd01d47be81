"""The StyleGAN2 generator (config-f), checkpoint-compatible with rosinality/stylegan2-pytorch."""
import math
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from .layers import ConstantInput, EqualLinear, PixelNorm, StyledConv, ToRGB


def channel_table(size: int, channel_multiplier: float = 2,
                  channel_max: Optional[int] = None) -> Dict[int, int]:
    """Feature channels per resolution ``{4: c, 8: c, ..., size: c}``.

    rosinality's table: 512 up to 32 px, then ``256*cm, 128*cm, 64*cm, 32*cm, 16*cm`` for
    64..1024 px (halving on, for larger sizes). ``channel_max`` caps every entry (small test and demo
    models); None keeps the table as is.
    """
    table = {}
    for log_res in range(2, int(math.log2(size)) + 1):
        channels = 512 if log_res <= 5 else int(2 ** (14 - log_res) * channel_multiplier)
        table[2 ** log_res] = channels if channel_max is None else min(channels, channel_max)
    return table


def noise_side(index: int) -> int:
    """Side of noise buffer ``noises.noise_{index}``: 4 for 0, then 8, 8, 16, 16, ..."""
    return 2 ** ((index + 5) // 2)


class Generator(nn.Module):
    """StyleGAN2 generator: mapping network (``style``) and synthesis network.

    Args:
        size: output side, a power of two >= 4.
        style_dim: width of z, w and the mapping network.
        n_mlp: number of mapping layers (EqualLinear, lr_mul ``lr_mlp``, fused leaky ReLU).
        channel_multiplier: ``cm`` of `channel_table` (2 for config-f).
        blur_kernel: FIR taps for the up-sampling blur and the ToRGB skip up-sampling.
        lr_mlp: learning-rate multiplier of the mapping network.
        channel_max: cap on every channel count (small test/demo models); None = rosinality's table.
        fused_modconv: see `ModulatedConv2d`; None picks the form per layer and call (settable
            later through the `fused_modconv` property).
        conv_clamp: clamp every synthesis conv's and ToRGB's output to ``[-conv_clamp,
            conv_clamp]`` (NVIDIA StyleGAN2-ADA sets 256); None (rosinality) = off.
        impl: ``stylegan2.ops`` implementation ("auto" | "cuda" | "ref"; None = the ops default).

    Attributes: ``size``, ``style_dim``, ``log_size``, ``channels``, ``num_layers`` (noise inputs,
    ``2 * log_size - 3``), ``n_latent`` (W+ rows, ``2 * log_size - 2``).

    This class and `stylegan2.layers` are the specification (one code path through
    `stylegan2.ops`); `stylegan2.optimize_generator_for_inference` makes the faster CPU form of a
    frozen generator with the same call and state dict.
    """

    def __init__(self, size: int, style_dim: int = 512, n_mlp: int = 8,
                 channel_multiplier: float = 2, blur_kernel: Sequence[float] = (1, 3, 3, 1),
                 lr_mlp: float = 0.01, channel_max: Optional[int] = None,
                 fused_modconv: Optional[bool] = None, impl: Optional[str] = None,
                 conv_clamp: Optional[float] = None):
        super().__init__()
        if not isinstance(size, int) or size < 4 or size & (size - 1):
            raise ValueError(f"Generator: size must be a power of two >= 4, got {size!r}")
        self.size = size
        self.style_dim = style_dim
        self.log_size = int(math.log2(size))
        self.num_layers = (self.log_size - 2) * 2 + 1
        self.n_latent = self.log_size * 2 - 2
        self.channels = channel_table(size, channel_multiplier, channel_max)

        self.style = nn.Sequential(
            PixelNorm(),
            *[EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation="fused_lrelu", impl=impl)
              for _ in range(n_mlp)])

        conv_args = dict(blur_kernel=blur_kernel, fused_modconv=fused_modconv, impl=impl,
                         conv_clamp=conv_clamp)
        self.input = ConstantInput(self.channels[4])
        self.conv1 = StyledConv(self.channels[4], self.channels[4], 3, style_dim, **conv_args)
        self.to_rgb1 = ToRGB(self.channels[4], style_dim, upsample=False, **conv_args)

        self.noises = nn.Module()
        for index in range(self.num_layers):
            side = noise_side(index)
            self.noises.register_buffer(f"noise_{index}", torch.randn(1, 1, side, side))

        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        in_channel = self.channels[4]
        for log_res in range(3, self.log_size + 1):
            out_channel = self.channels[2 ** log_res]
            self.convs.append(StyledConv(in_channel, out_channel, 3, style_dim, upsample=True,
                                         **conv_args))
            self.convs.append(StyledConv(out_channel, out_channel, 3, style_dim, **conv_args))
            self.to_rgbs.append(ToRGB(out_channel, style_dim, **conv_args))
            in_channel = out_channel

    @property
    def fused_modconv(self) -> Optional[bool]:
        """The modulated-conv form of every layer (None = per batch, see `ModulatedConv2d`)."""
        return self.conv1.conv.fused_modconv

    @fused_modconv.setter
    def fused_modconv(self, value: Optional[bool]) -> None:
        if value not in (None, True, False):
            raise ValueError(f"Generator.fused_modconv must be None, True or False, got {value!r}")
        for module in self.modules():
            if hasattr(module, "fused_modconv") and module is not self:
                module.fused_modconv = value

    def _factory(self) -> dict:
        """Device and dtype of the model's parameters, for tensors made here."""
        return dict(device=self.input.input.device, dtype=self.input.input.dtype)

    def make_noise(self) -> List[torch.Tensor]:
        """Fresh noise maps ``[1, 1, s, s]`` for the `num_layers` noise inputs."""
        return [torch.randn(1, 1, noise_side(i), noise_side(i), **self._factory())
                for i in range(self.num_layers)]

    def get_latent(self, z: torch.Tensor) -> torch.Tensor:
        """Mapping network: ``z [B, style_dim] -> w [B, style_dim]``."""
        return self.style(z)

    def mean_latent(self, n_latent: int) -> torch.Tensor:
        """Average w of ``n_latent`` random z: ``[1, style_dim]`` (the truncation centre)."""
        z = torch.randn(n_latent, self.style_dim, **self._factory())
        return self.style(z).mean(0, keepdim=True)

    def forward(self, styles: Sequence[torch.Tensor], return_latents: bool = False,
                inject_index: Optional[int] = None, truncation: float = 1,
                truncation_latent: Optional[torch.Tensor] = None, input_is_latent: bool = False,
                noise: Optional[Sequence[Optional[torch.Tensor]]] = None,
                randomize_noise: bool = True):
        """Synthesise images (rosinality semantics).

        Args:
            styles: a list of one or two tensors: z ``[B, style_dim]``, or with
                ``input_is_latent`` w ``[B, style_dim]`` or W+ ``[B, n_latent, style_dim]``.
                Two give style mixing: rows ``[0, inject_index)`` from the first, the rest from
                the second (``inject_index`` drawn uniformly from ``[1, n_latent - 1]`` when None).
            truncation, truncation_latent: ``w <- t_latent + truncation * (w - t_latent)`` when
                ``truncation < 1`` (``truncation_latent`` ``[1 or B, style_dim]``, see
                `mean_latent`).
            noise: ``num_layers`` maps ``[B or 1, 1, s, s]`` (None entries draw random noise);
                None uses the stored ``noises.noise_K`` buffers, or random noise everywhere
                when ``randomize_noise``.
            return_latents: also return the W+ codes used.

        Returns ``(image [B, 3, size, size], latent [B, n_latent, style_dim] or None)``.
        W+ rows: conv1 uses row 0, to_rgb1 row 1; level j (j = 0 at 8 px) uses rows ``2j + 1`` and
        ``2j + 2`` in its two convs and row ``2j + 3`` in its ToRGB (shared with the next level's
        first conv).
        """
        latent = self._latent(styles, inject_index, truncation, truncation_latent, input_is_latent)
        noise = self._noise_list(noise, randomize_noise)

        out = self._constant_input(latent.shape[0])
        out = self.conv1(out, latent[:, 0], noise=noise[0])
        skip = self.to_rgb1(out, latent[:, 1])
        for level, to_rgb in enumerate(self.to_rgbs):
            row = 2 * level + 1
            out = self.convs[2 * level](out, latent[:, row], noise=noise[row])
            out = self.convs[2 * level + 1](out, latent[:, row + 1], noise=noise[row + 1])
            skip = to_rgb(out, latent[:, row + 2], skip)
        image = skip.contiguous()  # NCHW, also when the layers ran channels-last
        return image, (latent if return_latents else None)

    def _constant_input(self, batch: int) -> torch.Tensor:
        """The learned constant ``[batch, channels[4], 4, 4]`` the synthesis starts from; every layer
        keeps the memory format it has (the inference rewrite makes it channels-last)."""
        return self.input(batch)

    def _latent(self, styles, inject_index, truncation, truncation_latent,
                input_is_latent) -> torch.Tensor:
        """Map, truncate and mix the inputs into W+ ``[B, n_latent, style_dim]``."""
        if isinstance(styles, torch.Tensor):
            raise ValueError("Generator: styles must be a list of one or two tensors, got a tensor "
                             f"{tuple(styles.shape)} (wrap it: [styles])")
        if not 1 <= len(styles) <= 2:
            raise ValueError(f"Generator: styles must be a list of one or two tensors, got {len(styles)}")
        for s in styles:
            shape_ok = s.ndim == 2 or (s.ndim == 3 and input_is_latent and s.shape[1] == self.n_latent)
            if not shape_ok or s.shape[-1] != self.style_dim:
                raise ValueError(
                    f"Generator: each style must be [B, {self.style_dim}]"
                    + (f" or W+ [B, {self.n_latent}, {self.style_dim}]" if input_is_latent else " (z)")
                    + f", got {tuple(s.shape)}")
        if not input_is_latent:
            styles = [self.style(s) for s in styles]
        if truncation < 1:
            if truncation_latent is None:
                raise ValueError("Generator: truncation < 1 needs truncation_latent (see mean_latent)")
            styles = [truncation_latent + truncation * (s - truncation_latent) for s in styles]

        if len(styles) == 2 and inject_index is None:
            inject_index = int(torch.randint(1, self.n_latent, ()))
        elif len(styles) == 2 and not 0 <= inject_index <= self.n_latent:
            raise ValueError(f"Generator: inject_index must be in [0, {self.n_latent}], got {inject_index}")
        rows = [s if s.ndim == 3 else s.unsqueeze(1).repeat(1, self.n_latent, 1) for s in styles]
        if len(rows) == 1:
            return rows[0]
        return torch.cat([rows[0][:, :inject_index], rows[1][:, inject_index:]], dim=1)

    def _noise_list(self, noise, randomize_noise) -> List[Optional[torch.Tensor]]:
        if noise is None:
            if randomize_noise:
                return [None] * self.num_layers
            return [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]
        if len(noise) != self.num_layers:
            raise ValueError(f"Generator: noise must hold {self.num_layers} maps (or None), "
                             f"got {len(noise)}")
        return list(noise)

"""e4e's latent discriminator: an MLP that tells codes of W (the mapping network's outputs) from the
encoder's codes, one W+ row at a time.

    D(w) = Linear(h_{L-1}),  h_0 = w,  h_i = LeakyReLU_0.2(Linear(h_{i-1}))      w [B, D] -> [B, 1]

with ``L`` = ``n_layers`` linear layers: ``L - 1`` of width D (the style dimension) and a last one
to one logit, PyTorch's default ``nn.Linear`` initialisation (the original, ``LatentCodesDiscriminator(512, 4)``,
uses plain linear layers, not StyleGAN's equalised ones).
"""
from __future__ import annotations

import torch
from torch import nn


class LatentDiscriminator(nn.Module):
    """w [B, style_dim] -> realness logits [B, 1]; ``n_layers`` >= 1 linear layers."""

    def __init__(self, style_dim: int = 512, n_layers: int = 4) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"LatentDiscriminator needs n_layers >= 1, got {n_layers}")
        layers: list[nn.Module] = []
        for _ in range(n_layers - 1):
            layers += [nn.Linear(style_dim, style_dim), nn.LeakyReLU(0.2)]
        layers.append(nn.Linear(style_dim, 1))
        self.mlp = nn.Sequential(*layers)
        self.style_dim = style_dim

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if w.dim() != 2 or w.shape[1] != self.style_dim:
            raise ValueError(f"LatentDiscriminator expects codes [B, {self.style_dim}], got {list(w.shape)}")
        return self.mlp(w)

"""GANSpace: principal components of W sampled through the mapping network (Härkönen et al. 2020)."""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def ganspace(generator: nn.Module, n_samples: int, k: int, seed: int = 0, chunk: int = 4096) -> dict:
    """PCA of ``n_samples`` mapped w: ``{"comp" [k, D] unit rows, "mean" [D], "std" [k],
    "explained_variance_ratio" [k]}`` (e4e's key names), components by decreasing variance.

    z is drawn on the CPU from ``torch.Generator().manual_seed(seed)``, so the result is the same
    on any device.
    """
    rng = torch.Generator().manual_seed(seed)
    device = next(generator.parameters()).device
    z = torch.randn(n_samples, generator.style_dim, generator=rng)
    w = torch.cat([generator.get_latent(z[i:i + chunk].to(device)).double().cpu()
                   for i in range(0, n_samples, chunk)])
    mean = w.mean(0)
    _, s, vh = torch.linalg.svd(w - mean, full_matrices=False)
    var = s ** 2 / (n_samples - 1)
    sign = torch.sign(vh.gather(1, vh.abs().argmax(1, keepdim=True)))
    return {"comp": (vh[:k] * sign[:k]).float(), "mean": mean.float(), "std": var[:k].sqrt().float(),
            "explained_variance_ratio": (var[:k] / var.sum()).float()}

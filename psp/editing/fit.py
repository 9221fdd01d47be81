"""Fit a linear direction to your own labels (InterFaceGAN), with scikit-learn."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from psp.editing.errors import EditingError


@dataclass
class Fit:
    """``direction`` ``[D]`` unit vector; ``score``: held-out accuracy (binary) or R² (continuous)."""

    direction: torch.Tensor
    score: float
    metric: str


def fit_direction(latents: torch.Tensor, labels: torch.Tensor,
                  orthogonal_to: Sequence[torch.Tensor] = (), holdout: float = 0.2, seed: int = 0) -> Fit:
    """A unit direction along which ``labels`` increase.

    latents ``[N, D]`` (w) or ``[N, n, D]`` (W+, averaged over rows); labels ``[N]``: two distinct
    values -> linear SVM, otherwise ridge regression (alpha by cross-validation).
    ``orthogonal_to``: directions ``[D]`` to project out (conditional editing: "older but not more
    glasses"). Returns the direction in w units (unit norm) and the score on the held-out part.
    """
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import train_test_split
    from sklearn.svm import LinearSVC

    x = (latents.mean(1) if latents.ndim == 3 else latents).double().cpu().numpy()
    y = labels.double().cpu().numpy().ravel()
    if len(x) != len(y) or len(y) < 5:
        raise EditingError(f"fit needs at least 5 latents with one label each, got {len(x)} latents and "
                           f"{len(y)} labels")
    binary = len(np.unique(y)) == 2
    split = train_test_split(x, y, test_size=holdout, random_state=seed, stratify=y if binary else None)
    x_train, x_test, y_train, y_test = split
    # Centre and scale by the training set: the fit is then well conditioned for any W scale.
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-8
    # RidgeCV picks the regularisation by cross-validation on the training part: with few samples
    # per dimension a fixed alpha overfits.
    model = LinearSVC(C=1.0, max_iter=20000) if binary else RidgeCV(alphas=np.logspace(-3, 4, 15))
    model.fit((x_train - mu) / sd, y_train)
    score = float(model.score((x_test - mu) / sd, y_test))
    normal = torch.from_numpy(np.asarray(model.coef_).ravel() / sd)
    if binary and model.classes_[0] > model.classes_[1]:
        normal = -normal
    if orthogonal_to:
        # An orthonormal basis of the others' span (QR), so several non-orthogonal ones are all
        # projected out exactly.
        basis, _ = torch.linalg.qr(torch.stack([o.double().flatten() for o in orthogonal_to], dim=1))
        normal = normal - basis @ (basis.T @ normal)
    return Fit((normal / normal.norm()).float(), score, "accuracy" if binary else "r2")

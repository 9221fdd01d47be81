"""Optimisers for encoder training: ``ranger`` (pSp's default) and ``adam``."""
from __future__ import annotations

from typing import Iterable

import torch

from psp.config import OptimConfig


class Ranger(torch.optim.RAdam):
    """RAdam + Lookahead + gradient centralisation, with the defaults of pSp's ``training/ranger.py``.

    pSp ships Ranger 20.4.11 (lessw2020) and calls it with only ``lr``, so its defaults are the
    recipe: betas (0.95, 0.999), eps 6.1e-5, RAdam rectification threshold 5 (as torch's RAdam),
    Lookahead ``alpha`` 0.5 every ``k`` = 6 steps, and gradient centralisation of every tensor
    with more than one dimension. Weight decay is decoupled (``p -= lr * wd * p``), as there.

    Each step: (1) centralise gradients, (2) one RAdam step on the fast weights, (3) every ``k``-th
    step of a parameter, pull the slow weights towards the fast ones by ``alpha`` and copy them back.
    The slow weights live in ``self.state[p]["slow_buffer"]``, so ``state_dict()`` carries them and
    a resumed run continues the same trajectory.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.95, 0.999),
                 eps: float = 6.1e-5, weight_decay: float = 0.0, alpha: float = 0.5, k: int = 6,
                 centralize_gradients: bool = True) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"Ranger: alpha must be in [0, 1], got {alpha}")
        if k < 1:
            raise ValueError(f"Ranger: k must be >= 1, got {k}")
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         decoupled_weight_decay=True)
        extra = {"alpha": alpha, "k": k, "centralize_gradients": centralize_gradients}
        self.defaults.update(extra)
        for group in self.param_groups:
            for key, value in extra.items():
                group.setdefault(key, value)

    @torch.no_grad()
    def step(self, closure=None):
        # Lightning computes the loss and the backward pass inside the closure, so it must run
        # before the gradients are centralised.
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        fresh = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if group["centralize_gradients"] and p.grad.dim() > 1:
                    p.grad.sub_(p.grad.mean(dim=tuple(range(1, p.grad.dim())), keepdim=True))
                # The slow weights start at the weights before the first update; they are stored
                # after RAdam's step because RAdam initialises a parameter's state only when empty.
                if "slow_buffer" not in self.state[p]:
                    fresh[p] = p.detach().clone()
        super().step()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if p in fresh:
                    state["slow_buffer"] = fresh[p]
                if int(state["step"]) % group["k"] == 0:
                    slow = state["slow_buffer"]
                    slow.add_(p - slow, alpha=group["alpha"])
                    p.copy_(slow)
        return loss


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimiser named by ``optim.name`` over ``params`` (pSp: ranger, lr 1e-4)."""
    if cfg.name == "ranger":
        return Ranger(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

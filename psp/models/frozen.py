"""Frozen networks: fixed functions with no gradients, always in eval mode.

The generator, ArcFace and LPIPS are never trained here. Freezing is one call (:func:`freeze`);
:class:`FrozenModule` also locks the mode, since Lightning calls ``.train()`` on the whole model
after every validation and would switch BatchNorm statistics and Dropout back on.
"""
from __future__ import annotations

from typing import TypeVar

from torch import nn

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def freeze(module: ModuleT) -> ModuleT:
    """``module`` with ``requires_grad=False`` on every parameter, in eval mode; returns it."""
    module.requires_grad_(False)
    return module.eval()


class FrozenModule(nn.Module):
    """A network used only as a fixed function; ``train()`` keeps it in eval mode."""

    def freeze(self) -> "FrozenModule":
        return freeze(self)

    def train(self, mode: bool = True) -> "FrozenModule":
        return super().train(False)

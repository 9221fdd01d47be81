"""A generator's identity: sha256 over its state dict, so files made for one generator are
recognised (and refused) on another, whatever file it was loaded from."""
from __future__ import annotations

import hashlib

import torch
from torch import nn


def generator_sha256(generator: nn.Module) -> str:
    """Hex sha256 of every state-dict tensor, in sorted key order, with its name, dtype and shape.

    Raw bytes are hashed (no conversion), so a 1024 px generator takes well under a second.
    """
    digest = hashlib.sha256()
    state = generator.state_dict()
    for key in sorted(state):
        tensor = state[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{tensor.dtype}|{list(tensor.shape)}\n".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()

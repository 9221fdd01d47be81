"""Inference-only rewrite: fold BatchNorm layers into the convolutions that feed them.

In eval mode BN is y = (x - mean) / sqrt(var + eps) * gamma + beta, a per-channel affine map, so
conv -> BN equals one conv with weight W * scale and bias (b - mean) * scale + beta, where
scale = gamma / sqrt(var + eps). Only (conv, BN) pairs that a module lists in `conv_bn_pairs` are
folded. BN *before* a zero-padded conv (the IR unit's first BN) is left alone: folding it would
change the border pixels, where the padding is zero after the BN, not before it.
"""
import torch
from torch import nn


@torch.no_grad()
def fold_bn_into_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Make `conv` compute bn(conv(x)) (eval-mode statistics); `bn` is then redundant."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
    conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias)


def fuse_bn_for_inference(model: nn.Module) -> nn.Module:
    """Fold every listed (conv, BN) pair of `model` in place and replace the BN by Identity.

    For inference only: the result has different parameter names (no BN entries, conv biases) and
    its BN statistics can no longer be trained. Puts the model in eval mode; returns it.
    """
    model.eval()
    for module in list(model.modules()):
        for conv_name, bn_name in getattr(module, "conv_bn_pairs", ()):
            conv, bn = getattr(module, conv_name), getattr(module, bn_name)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                fold_bn_into_conv(conv, bn)
                setattr(module, bn_name, nn.Identity())
    return model

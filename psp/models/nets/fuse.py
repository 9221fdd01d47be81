"""Inference-only rewrites of the encoder: exact in exact arithmetic, different parameter names.

- `fuse_bn_for_inference`: fold BatchNorm into the convolution that feeds it. In eval mode BN is
  y = (x - mean) / sqrt(var + eps) * gamma + beta, a per-channel affine map, so conv -> BN is one
  conv with weight W * scale and bias (b - mean) * scale + beta, scale = gamma / sqrt(var + eps).
  Only the (conv, BN) pairs a module lists in `conv_bn_pairs` are folded. A BN *before* a
  zero-padded conv (the IR unit's first BN) stays: folding it would change the border pixels,
  where the padding is zero after the BN, not before it.
- `merge_style_blocks`: run the style blocks of each pyramid level as one network.
- `optimize_for_inference`: both, plus channels-last weights.
"""
import torch
import torch.nn.functional as F
from torch import nn

from psp.models.nets.pyramid import GradualStyleEncoder, StyleBlock


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


class MergedStyleLevel(nn.Module):
    """The G style blocks that read one pyramid level, run as one network: [B, C, s, s] -> [B, G, D].

    The first convs of all blocks become one conv with G*D outputs (the input is read once, and
    one large GEMM beats G small ones); the later convs become grouped convs (groups=G); the G
    EqualLinears become one batched matmul. Same arithmetic as the separate blocks up to float
    summation order.
    """

    def __init__(self, blocks: list[StyleBlock]):
        super().__init__()
        n_convs = {len(block.convs) for block in blocks}
        assert len(n_convs) == 1, "blocks of one pyramid level have the same depth"
        self.groups, self.style_dim, self.n_convs = len(blocks), blocks[0].style_dim, n_convs.pop()
        for k in range(self.n_convs):
            self.register_buffer(f"weight{k}", torch.cat([b.convs[k].weight.detach() for b in blocks]))
            self.register_buffer(f"bias{k}", torch.cat([b.convs[k].bias.detach() for b in blocks]))
        # EqualLinear's run-time scaling, applied once.
        self.register_buffer("linear_weight", torch.stack([b.linear.weight.detach() * b.linear.scale for b in blocks]))
        self.register_buffer("linear_bias", torch.stack([b.linear.bias.detach() * b.linear.lr_mul for b in blocks]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for k in range(self.n_convs):
            groups = 1 if k == 0 else self.groups
            weight, bias = getattr(self, f"weight{k}"), getattr(self, f"bias{k}")
            x = F.leaky_relu(F.conv2d(x, weight, bias, 2, 1, groups=groups), 0.01)
        x = x.reshape(-1, self.groups, self.style_dim)
        return torch.einsum("bgi,goi->bgo", x, self.linear_weight) + self.linear_bias


@torch.no_grad()
def merge_style_blocks(encoder: GradualStyleEncoder) -> GradualStyleEncoder:
    """Replace the encoder's per-row style blocks by one `MergedStyleLevel` per pyramid level, in
    place (inference only: `encoder.styles` is removed). Returns the encoder in eval mode."""
    levels: dict[int, list[StyleBlock]] = {}
    for j, block in enumerate(encoder.styles):
        levels.setdefault(encoder.style_level(j), []).append(block)
    encoder.merged_styles = nn.ModuleList(MergedStyleLevel(levels[level]) for level in sorted(levels))
    encoder.styles = None
    return encoder.eval()


def optimize_for_inference(encoder: GradualStyleEncoder, channels_last: bool = True) -> GradualStyleEncoder:
    """All inference rewrites, in place: BN folding, merged style blocks and (by default) NHWC
    weights, which oneDNN on CPU and cuDNN with bf16 run fastest. Returns the encoder in eval mode.
    The result cannot be trained or saved in our checkpoint format (its parameter names differ).
    """
    merge_style_blocks(fuse_bn_for_inference(encoder))
    return encoder.to(memory_format=torch.channels_last) if channels_last else encoder

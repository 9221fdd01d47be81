"""ArcFace IR-SE-50 face recogniser (the identity-loss network of pSp), built from our ResNet.

x [B, 3, 112, 112] in [-1, 1] -> IR-SE-50 body -> [B, 512, 7, 7] -> embedding head -> [B, 512],
L2-normalised. `load_arcface` reads the released `model_ir_se50.pth` (TreB1eN layout).
"""
import torch
from torch import nn

from psp.models.nets.resnet import ResNet

EMBEDDING_DIM = 512


class EmbeddingHead(nn.Module):
    """BN2d(C) -> Dropout -> flatten -> Linear(C*s*s, dim) -> BN1d(dim): [B, C, s, s] -> [B, dim].

    Flattening is channel-major ([B, C*s*s] in C, H, W order), as the released Linear weight expects.
    """

    def __init__(self, channels: int = 512, spatial: int = 7, embedding_dim: int = EMBEDDING_DIM,
                 drop_ratio: float = 0.6):
        super().__init__()
        self.feature_bn = nn.BatchNorm2d(channels)
        self.dropout = nn.Dropout(drop_ratio)
        self.fc = nn.Linear(channels * spatial * spatial, embedding_dim)
        self.embedding_bn = nn.BatchNorm1d(embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.feature_bn(x))
        return self.embedding_bn(self.fc(x.flatten(1)))


class ArcFace(nn.Module):
    """IR-SE-50 recogniser: x [B, 3, input_size, input_size] -> unit-norm embedding [B, 512].

    The normalisation divides by the L2 norm without an epsilon, exactly as the original (an
    all-zero embedding would give NaN, which the BN1d head makes practically impossible).
    """

    def __init__(self, input_size: int = 112, drop_ratio: float = 0.6):
        super().__init__()
        if input_size % 16:
            raise ValueError(f"ArcFace input_size must be a multiple of 16, got {input_size}")
        self.input_size = input_size
        self.backbone = ResNet(block="ir_se", depth=50, stem="conv", act="prelu")
        last = self.backbone.feature_info[-1]
        self.head = EmbeddingHead(last["num_chs"], input_size // last["reduction"], EMBEDDING_DIM, drop_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-2:] != (self.input_size, self.input_size):
            side = self.input_size
            raise ValueError(f"ArcFace expects [B, 3, {side}, {side}] inputs, got {list(x.shape)}")
        embedding = self.head(self.backbone(x)[-1])
        return embedding / embedding.norm(p=2, dim=1, keepdim=True)

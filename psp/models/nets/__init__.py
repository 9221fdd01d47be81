"""The encoder-side networks as plain nn.Modules (no Lightning).

layers (SE, ECA, BlurPool, SpaceToDepth, factories) -> blocks (IR, basic, bottleneck) -> resnet
(configurable backbone with feature_info) -> pyramid (W+ head; e4e and restyle: the other families'
heads on it) and arcface (recogniser);
official maps the released weights' names to ours; fuse folds BN for inference.
"""

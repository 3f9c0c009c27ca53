"""ResNet-18 backbone (He et al., 2016) with an ImageNet or a small-image stem."""

from __future__ import annotations

from typing import Literal

from .blocks import ResNetTrunk, basic_resnet_stages, conv_stem, init_weights

StemKind = Literal["imagenet", "small"]

RESNET_WIDTHS: tuple[int, ...] = (64, 128, 256, 512)


def resnet18(stem: StemKind = "imagenet") -> ResNetTrunk:
    """Build a ResNet-18 feature extractor (basic blocks [2, 2, 2, 2], 512-d feature).

    Args:
        stem: ``"imagenet"`` = 7x7 stride-2 conv + BN + ReLU + 3x3 stride-2
            max-pool (224-px images); ``"small"`` = 3x3 stride-1 conv + BN +
            ReLU + 3x3 stride-2 max-pool (R-DFCIL's stem for 64-px
            Tiny-ImageNet).

    Returns:
        A module mapping ``(N, 3, H, W)`` images to ``(N, 512)`` pooled
        features, with ``feature_dim == 512``. Convolutions use Kaiming-normal
        (fan_out, relu) init; projection shortcuts are 1x1 conv + BN.
    """
    if stem == "imagenet":
        stem_module = conv_stem(64, kernel_size=7, stride=2, max_pool=True)
    elif stem == "small":
        stem_module = conv_stem(64, kernel_size=3, stride=1, max_pool=True)
    else:
        raise ValueError(f"unknown ResNet-18 stem {stem!r}; expected 'imagenet' or 'small'")
    stages = basic_resnet_stages(64, RESNET_WIDTHS, (2, 2, 2, 2), shortcut="projection")
    model = ResNetTrunk(stem_module, stages, feature_dim=RESNET_WIDTHS[-1])
    init_weights(model)
    return model

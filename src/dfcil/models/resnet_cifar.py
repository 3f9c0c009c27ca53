"""CIFAR-sized ResNets: ResNet-32 (iCaRL / PODNet variant) and ResNet-34 with a CIFAR stem."""

from __future__ import annotations

from typing import Literal

from .blocks import ResNetTrunk, basic_resnet_stages, conv_stem, init_weights, zero_init_last_bn
from .resnet import RESNET_WIDTHS

ResNet32Variant = Literal["rdfcil", "abd"]

def resnet32(variant: ResNet32Variant = "rdfcil") -> ResNetTrunk:
    """Build the CIFAR ResNet-32 feature extractor (64-d feature, 463,504 parameters).

    Stem: 3x3 conv 3->16 (no bias) + BN + ReLU; three stages of five basic
    blocks at 16, 32 and 64 channels, the first block of stages 2 and 3 with
    stride 2; parameter-free option-A shortcuts (subsample + zero channel
    padding); global average pooling.

    Args:
        variant: ``"rdfcil"`` is the network of R-DFCIL's code (arXiv:2207.09213; the
            iCaRL / PODNet CifarResNet of its cl-lite library with ``last_relu=False``):
            every block is conv-BN-ReLU-conv-BN plus the shortcut with **no** ReLU after the
            addition, and none between blocks, so a forward applies 16 ReLUs (stem + one
            inside each of the 15 blocks) and the pooled feature may be negative; the
            second BN gamma of every block starts at zero. ``"abd"`` (ABD's code,
            arXiv:2106.09701) keeps a ReLU after every addition (31 ReLUs) and the
            default BN init (gamma 1, beta 0). The revision of each variant's computation is
            :meth:`dfcil.config.ModelConfig.network_revision`.

    Returns:
        A module mapping ``(N, 3, 32, 32)`` images to ``(N, 64)`` features,
        with ``feature_dim == 64``; convolutions use Kaiming-normal (fan_out,
        relu) init.
    """
    if variant not in ("rdfcil", "abd"):
        raise ValueError(f"unknown ResNet-32 variant {variant!r}; expected 'rdfcil' or 'abd'")
    is_rdfcil = variant == "rdfcil"
    widths = (16, 32, 64)
    stages = basic_resnet_stages(
        widths[0], widths, (5, 5, 5), shortcut="option_a", relu_after_add=not is_rdfcil
    )
    model = ResNetTrunk(conv_stem(widths[0]), stages, feature_dim=widths[-1])
    init_weights(model)
    if is_rdfcil:
        zero_init_last_bn(model)
    return model


def resnet34_cifar() -> ResNetTrunk:
    """Build a standard ResNet-34 (basic blocks [3, 4, 6, 3]) with a CIFAR stem.

    The stem is a 3x3 stride-1 conv 3->64 + BN + ReLU without max-pool;
    stages have widths 64, 128, 256, 512 and 1x1-conv + BN projection
    shortcuts.  Returns a module with ``feature_dim == 512`` mapping
    ``(N, 3, 32, 32)`` images to ``(N, 512)`` features.
    """
    stages = basic_resnet_stages(64, RESNET_WIDTHS, (3, 4, 6, 3), shortcut="projection")
    model = ResNetTrunk(conv_stem(64), stages, feature_dim=RESNET_WIDTHS[-1])
    init_weights(model)
    return model

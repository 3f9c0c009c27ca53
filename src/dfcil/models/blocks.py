"""Residual building blocks shared by every ResNet backbone in :mod:`dfcil.models`.

One :class:`BasicBlock` (two 3x3 convolutions) serves both the CIFAR ResNet-32,
which uses the parameter-free "option A" shortcut of He et al. (2016, Sec. 4.2),
and ResNet-18/34, which use a 1x1 convolution + BN projection ("option B") when
the shape changes.  :func:`make_stage` stacks blocks into one resolution stage.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ShortcutKind = Literal["option_a", "projection"]


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """Return a bias-free 3x3 convolution with padding 1."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


def conv_stem(
    out_channels: int,
    kernel_size: int = 3,
    stride: int = 1,
    max_pool: bool = False,
    in_channels: int = 3,
) -> nn.Sequential:
    """Return a stem: bias-free ``kernel_size`` conv + BN + ReLU, optionally a 3x3/2 max-pool."""
    layers: list[nn.Module] = [
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size=kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            bias=False,
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]
    if max_pool:
        layers.append(nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    return nn.Sequential(*layers)


class OptionAShortcut(nn.Module):
    """Parameter-free shortcut: spatial subsampling plus zero channel padding.

    The input is subsampled as ``x[:, :, ::stride, ::stride]`` and the missing
    ``out_channels - in_channels`` channels are appended as zeros (the input
    channels come first), as in the iCaRL / PODNet CIFAR ResNet-32.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(
                f"option-A shortcut cannot reduce channels ({in_channels} -> {out_channels})"
            )
        self.extra_channels = out_channels - in_channels
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        """Subsample spatially and zero-pad the channel dimension."""
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra_channels:
            # F.pad's last pair of numbers addresses dim 1 (channels) of an NCHW tensor.
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))
        return x


def projection_shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """Return the 1x1-convolution + BN projection shortcut ("option B")."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN layers with a residual connection.

    ``out = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``; the final ReLU
    is skipped when ``final_relu`` is False.  The shortcut is the identity when
    the shape is unchanged, otherwise ``shortcut`` selects option A (zero
    padding, no parameters) or a projection.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        shortcut: ShortcutKind = "projection",
        final_relu: bool = True,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.final_relu = final_relu
        self.shortcut: nn.Module
        if stride == 1 and in_channels == out_channels:
            self.shortcut = nn.Identity()
        elif shortcut == "option_a":
            self.shortcut = OptionAShortcut(in_channels, out_channels, stride)
        elif shortcut == "projection":
            self.shortcut = projection_shortcut(in_channels, out_channels, stride)
        else:
            raise ValueError(f"unknown shortcut kind {shortcut!r}; expected 'option_a' or 'projection'")

    def forward(self, x: Tensor) -> Tensor:
        """Apply the residual block."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)
        return F.relu(out) if self.final_relu else out


def make_stage(
    in_channels: int,
    out_channels: int,
    num_blocks: int,
    stride: int,
    shortcut: ShortcutKind = "projection",
    relu_after_add: bool = True,
) -> nn.Sequential:
    """Stack ``num_blocks`` basic blocks; only the first one may change stride/width.

    ``relu_after_add=False`` removes the ReLU after the residual addition of every block.
    """
    if num_blocks < 1:
        raise ValueError(f"a stage needs at least one block, got {num_blocks}")
    blocks = []
    for index in range(num_blocks):
        first = index == 0
        blocks.append(
            BasicBlock(
                in_channels if first else out_channels,
                out_channels,
                stride=stride if first else 1,
                shortcut=shortcut,
                final_relu=relu_after_add,
            )
        )
    return nn.Sequential(*blocks)


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal (fan_out, relu) init of every conv; BN gamma 1 and beta 0."""
    for sub in module.modules():
        if isinstance(sub, nn.Conv2d):
            nn.init.kaiming_normal_(sub.weight, mode="fan_out", nonlinearity="relu")
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.BatchNorm2d):
            nn.init.ones_(sub.weight)
            nn.init.zeros_(sub.bias)


def zero_init_last_bn(module: nn.Module) -> None:
    """Set the gamma of the second BN of every :class:`BasicBlock` to zero.

    Each residual branch then starts as zero, so every block is initially its
    shortcut (Goyal et al., 2017).
    """
    for sub in module.modules():
        if isinstance(sub, BasicBlock):
            nn.init.zeros_(sub.bn2.weight)


class ResNetTrunk(nn.Module):
    """Stem, a sequence of stages and global average pooling to a flat feature.

    ``forward`` returns the pooled penultimate feature of shape
    ``(N, feature_dim)``.
    """

    def __init__(self, stem: nn.Module, stages: nn.Sequential, feature_dim: int) -> None:
        super().__init__()
        self.stem = stem
        self.stages = stages
        self.feature_dim: int = feature_dim

    def forward(self, x: Tensor) -> Tensor:
        """Return the globally average-pooled feature ``(N, feature_dim)``."""
        x = self.stages(self.stem(x))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def basic_resnet_stages(
    in_channels: int,
    widths: tuple[int, ...],
    depths: tuple[int, ...],
    shortcut: ShortcutKind = "projection",
    relu_after_add: bool = True,
) -> nn.Sequential:
    """Build the stages of a basic-block ResNet; every stage after the first has stride 2.

    ``relu_after_add=False`` drops the ReLU after every residual addition (each block is then
    conv-BN-ReLU-conv-BN + shortcut, with nothing after the sum).
    """
    if len(widths) != len(depths) or not widths:
        raise ValueError(f"widths {widths} and depths {depths} must be non-empty and of equal length")
    stages = []
    channels = in_channels
    for index, (width, depth) in enumerate(zip(widths, depths)):
        stages.append(
            make_stage(
                channels,
                width,
                depth,
                stride=1 if index == 0 else 2,
                shortcut=shortcut,
                relu_after_add=relu_after_add,
            )
        )
        channels = width
    return nn.Sequential(*stages)

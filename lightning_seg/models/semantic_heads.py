"""Semantic heads on FPN levels: Panoptic FPN's (summed upsampling branches) and UPSNet's
(a shared, optionally deformable, subnet whose outputs are concatenated at 1/4 scale).

Both take the pyramid levels float ``[B, C, h_l, w_l]`` at strides ``s_0 <= s_1 <= ...`` (powers
of two, the finest first) and return class logits at the finest level's size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import DeformConv2d

from lightning_seg.models.layers import ConvNormAct, Norm, make_norm


def _check_strides(strides: Sequence[int], who: str) -> list[int]:
    strides = [int(s) for s in strides]
    if any(b < a for a, b in zip(strides, strides[1:])) or any(s & (s - 1) for s in strides):
        raise ValueError(f"{who} needs non-decreasing power-of-two level strides, got {strides}")
    return strides


def _level_size(finest: tuple[int, int], ratio: int) -> tuple[int, int]:
    # ceil(ceil(H / a) / b) == ceil(H / (a * b)): sizes follow from the finest level's alone
    return math.ceil(finest[0] / ratio), math.ceil(finest[1] / ratio)


def fpn_scale_heads(in_channels: int, strides: Sequence[int], channels: int, norm: Norm,
                    coarsest_extra_channels: int = 0) -> nn.ModuleList:
    """Panoptic FPN's per-level branches: ``max(1, log2(s / s_0))`` 3x3 conv-norm-ReLU blocks at
    stride ``s`` (the upsampling between them is in :func:`sum_scale_heads`).

    ``coarsest_extra_channels`` widens the input of the coarsest level's first block (SOLOv2's
    mask features read P5 with two coordinate channels)."""
    strides = _check_strides(strides, "the semantic FPN head")
    last = len(strides) - 1
    return nn.ModuleList(
        nn.ModuleList(ConvNormAct((in_channels + (coarsest_extra_channels if i == last else 0)) if k == 0 else channels,
                                  channels, 3, norm=norm)
                      for k in range(max(1, int(math.log2(stride // strides[0])))))
        for i, stride in enumerate(strides)
    )


def sum_scale_heads(levels: Sequence[Tensor], strides: Sequence[int], scale_heads: nn.ModuleList) -> Tensor:
    """Run each level's branch, 2x bilinear upsampling after every block while above the finest
    stride, and sum the branches: float ``[B, C, h_0, w_0]`` from levels ``[B, C_in, h_l, w_l]``."""
    finest = (int(levels[0].shape[-2]), int(levels[0].shape[-1]))
    total = None
    for x, stride, convs in zip(levels, strides, scale_heads):
        ratio = int(stride) // int(strides[0])
        for conv in convs:
            x = conv(x)
            if ratio > 1:
                ratio //= 2
                x = F.interpolate(x, size=_level_size(finest, ratio), mode="bilinear", align_corners=False)
        total = x if total is None else total + x
    return total


class SemanticFPNHead(nn.Module):
    """Panoptic FPN's semantic branch (Kirillov et al., 2019).

    Level ``l`` at stride ``s`` goes through ``max(1, log2(s / s_0))`` blocks of 3x3
    conv-norm-ReLU, each followed by 2x bilinear upsampling while above the finest stride; the
    branches are summed and classified by a 1x1 conv. The per-pixel
    :class:`~lightning_seg.models.per_pixel.SemanticFPN` is the same branch on its own FPN.

    Args:
        in_channels: channels of the levels.
        strides: strides of the levels, finest first.
        num_classes: output channels (Panoptic FPN: stuff classes + one "things" class).
        channels: width of the branches (128 in the paper).
        norm: normalisation in the branches (GroupNorm in the paper).
        dropout: dropout before the classifier.
    """

    def __init__(self, in_channels: int, strides: Sequence[int], num_classes: int, channels: int = 128,
                 norm: Norm = "GN", dropout: float = 0.0) -> None:
        super().__init__()
        self.strides = _check_strides(strides, "SemanticFPNHead")
        self.scale_heads = fpn_scale_heads(in_channels, self.strides, channels, norm)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Conv2d(channels, num_classes, 1))

    def forward(self, levels: Sequence[Tensor]) -> Tensor:
        """Logits float ``[B, num_classes, h_0, w_0]`` from ``len(strides)`` levels."""
        return self.classifier(sum_scale_heads(levels, self.strides, self.scale_heads))


class DeformConvNormAct(nn.Module):
    """3x3 deformable conv (offsets from a zero-initialised 3x3 conv) -> norm -> ReLU.

    Input float ``[B, in_channels, H, W]``, output ``[B, out_channels, H, W]``.
    """

    def __init__(self, in_channels: int, out_channels: int, norm: Norm = "GN") -> None:
        super().__init__()
        self.offset = nn.Conv2d(in_channels, 2 * 9, 3, padding=1)
        # zero offsets: starts as a plain 3x3 conv, as the deformable-conv papers initialise
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)
        self.conv = DeformConv2d(in_channels, out_channels, 3, padding=1, bias=norm == "none")
        self.norm = make_norm(norm, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.norm(self.conv(x, self.offset(x))), inplace=True)


class UPSNetSemanticHead(nn.Module):
    """UPSNet's semantic head (Xiong et al., 2019).

    One subnet of ``num_convs`` 3x3 conv-norm-ReLU blocks (deformable with ``deformable=True``),
    shared by every level; each level's output is upsampled to the finest size, the levels are
    concatenated and classified by a 1x1 conv over all classes (stuff and things: the panoptic
    head reads the thing classes' logits too).

    Args:
        in_channels: channels of the levels.
        strides: strides of the levels, finest first.
        num_classes: all ``K`` classes.
        channels: width of the subnet (128).
        num_convs: blocks in the subnet (2).
        norm: normalisation (GroupNorm).
        deformable: deformable 3x3 convs (``torchvision.ops.DeformConv2d``).
    """

    def __init__(self, in_channels: int, strides: Sequence[int], num_classes: int, channels: int = 128,
                 num_convs: int = 2, norm: Norm = "GN", deformable: bool = True) -> None:
        super().__init__()
        self.strides = _check_strides(strides, "UPSNetSemanticHead")
        block = DeformConvNormAct if deformable else (lambda i, o, norm: ConvNormAct(i, o, 3, norm=norm))
        self.subnet = nn.Sequential(*(block(in_channels if k == 0 else channels, channels, norm=norm)
                                      for k in range(num_convs)))
        self.classifier = nn.Conv2d(channels * len(self.strides), num_classes, 1)

    def forward(self, levels: Sequence[Tensor]) -> Tensor:
        """Logits float ``[B, num_classes, h_0, w_0]`` from ``len(strides)`` levels."""
        size = (int(levels[0].shape[-2]), int(levels[0].shape[-1]))
        outs = []
        for x in levels:
            y = self.subnet(x)
            outs.append(y if tuple(y.shape[-2:]) == size else
                        F.interpolate(y, size=size, mode="bilinear", align_corners=False))
        return self.classifier(torch.cat(outs, 1))

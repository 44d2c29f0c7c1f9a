"""Heads shared by the per-pixel decoders (FCN head, ASPP) and their resize helper.

The module layouts of :class:`FCNHead` and :class:`ASPP` mirror torchvision's segmentation
heads parameter for parameter, so torchvision state dicts map onto them by renaming prefixes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_seg.models.layers import ConvNormAct, Norm, make_norm


def resize_to(x: Tensor, size: Sequence[int], align_corners: bool = False) -> Tensor:
    """Bilinearly resize float ``[B, C, h, w]`` to ``[B, C, *size]`` (no-op when already there).

    ``align_corners=True`` maps corner pixel centres onto each other (smp's and older
    DeepLab code's upsampling) instead of the pixel-area convention.
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)


class FCNHead(nn.Sequential):
    """The FCN classifier: ``3x3 conv (C -> C/4) -> BN -> ReLU -> Dropout -> 1x1 conv (-> K)``.

    Maps float ``[B, in_channels, h, w]`` to class logits ``[B, num_classes, h, w]``. Same
    layout as torchvision's ``FCNHead`` (used for FCN and as DeepLab's auxiliary head).
    """

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.1,
                 hidden_channels: int | None = None) -> None:
        hidden = hidden_channels or in_channels // 4
        super().__init__(
            nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Conv2d(hidden, num_classes, 1),
        )


class ASPPPooling(nn.Sequential):
    """Image-level branch of ASPP: global average pool -> 1x1 conv -> norm -> ReLU -> broadcast.

    Float ``[B, C_in, h, w]`` -> ``[B, C_out, h, w]`` (constant over space).
    """

    def __init__(self, in_channels: int, out_channels: int, norm: Norm = "BN") -> None:
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, out_channels, 1, bias=norm == "none"),
            make_norm(norm, out_channels),
            nn.ReLU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C_in, h, w]`` -> ``[B, C_out, h, w]``, the pooled response broadcast over space."""
        size = x.shape[-2:]
        for module in self:
            x = module(x)
        return x.expand(-1, -1, *size)


class ASPP(nn.Module):
    """Atrous Spatial Pyramid Pooling (DeepLabV3): parallel 1x1, atrous 3x3 and image pooling.

    Float ``[B, in_channels, h, w]`` -> ``[B, out_channels, h, w]``: the branches are
    concatenated and projected by a 1x1 conv, norm, ReLU and dropout.

    Args:
        in_channels: input channels.
        atrous_rates: dilation of each 3x3 branch (e.g. ``(12, 24, 36)`` at output stride 8,
            ``(6, 12, 18)`` at 16).
        out_channels: channels of every branch and of the output.
        dropout: dropout after the projection.
        separable: depthwise-separable 3x3 branches (DeepLabV3+).
        norm: normalisation layer type.
    """

    def __init__(self, in_channels: int, atrous_rates: Sequence[int], out_channels: int = 256,
                 dropout: float = 0.5, separable: bool = False, norm: Norm = "BN") -> None:
        super().__init__()
        if len(atrous_rates) == 0 or any(int(r) < 1 for r in atrous_rates):
            raise ValueError(f"atrous_rates must be positive integers, got {list(atrous_rates)}")
        branches: list[nn.Module] = [
            nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=norm == "none"),
                          make_norm(norm, out_channels), nn.ReLU())
        ]
        for rate in atrous_rates:
            branch = ConvNormAct(in_channels, out_channels, 3, dilation=int(rate), norm=norm, separable=separable)
            branch[2] = nn.ReLU()  # not in-place: keeps the layout torchvision-identical
            branches.append(branch)
        branches.append(ASPPPooling(in_channels, out_channels, norm))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(
            nn.Conv2d(len(branches) * out_channels, out_channels, 1, bias=norm == "none"),
            make_norm(norm, out_channels),
            nn.ReLU(),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        """``[B, in_channels, h, w]`` -> ``[B, out_channels, h, w]``."""
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))

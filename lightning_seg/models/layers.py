"""The convolution block and the normalisation helper every model family builds on.

:class:`ConvNormAct` is ``conv -> norm -> ReLU`` in an ``nn.Sequential`` (state-dict keys
``0.*`` conv, ``1.*`` norm), so torchvision / detectron2 / HF layouts map onto it by renaming.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

Norm = Literal["BN", "GN", "none"]
"""Normalisation after a conv: BatchNorm, GroupNorm (32 groups or fewer) or none."""

ConvInit = Literal["default", "c2_xavier"]
"""Conv weight initialisation: PyTorch's default, or Caffe2's XavierFill as detectron2 uses."""


def make_norm(norm: Norm, channels: int, num_groups: int = 32) -> nn.Module:
    """A normalisation layer for ``channels`` channels of ``[B, C, H, W]`` maps.

    ``"GN"`` uses ``num_groups`` groups, or the largest divisor of ``channels`` below that: the
    papers use 32 groups at width 256, and narrow test models still need a valid group count.

    Args:
        norm: ``"BN"`` (``BatchNorm2d``), ``"GN"`` (``GroupNorm``) or ``"none"`` (identity).
        channels: number of channels ``C``.
        num_groups: largest GroupNorm group count.
    """
    if norm == "BN":
        return nn.BatchNorm2d(channels)
    if norm == "GN":
        groups = max(g for g in range(1, min(num_groups, channels) + 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"norm must be 'BN', 'GN' or 'none', got {norm!r}")


def c2_xavier_fill(module: nn.Module) -> None:
    """Caffe2's "XavierFill" (uniform kaiming with ``a=1``) and zero bias, as detectron2 uses."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)


class ConvNormAct(nn.Sequential):
    """``conv -> norm -> ReLU`` on float ``[B, in_channels, H, W]``.

    Output ``[B, out_channels, ceil(H / stride), ceil(W / stride)]`` (same padding for odd
    kernels). The conv has a bias only without normalisation.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: odd kernel size.
        stride: conv stride.
        dilation: atrous rate.
        norm: see :data:`Norm`.
        activation: append an in-place ReLU.
        separable: depthwise ``kernel_size`` conv followed by a pointwise 1x1 conv (Xception /
            DeepLabV3+ style), ~``kernel_size**2`` times fewer multiply-adds.
        init: see :data:`ConvInit` (applied to every conv of the block).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        norm: Norm = "BN",
        activation: bool = True,
        separable: bool = False,
        init: ConvInit = "default",
    ) -> None:
        padding = dilation * (kernel_size - 1) // 2
        bias = norm == "none"
        if separable and kernel_size > 1:
            conv: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, in_channels, kernel_size, stride=stride, padding=padding,
                          dilation=dilation, groups=in_channels, bias=False),
                nn.Conv2d(in_channels, out_channels, 1, bias=bias),
            )
        else:
            conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                             dilation=dilation, bias=bias)
        if init == "c2_xavier":
            for m in conv.modules():
                if isinstance(m, nn.Conv2d):
                    c2_xavier_fill(m)
        elif init != "default":
            raise ValueError(f"init must be 'default' or 'c2_xavier', got {init!r}")
        layers: list[nn.Module] = [conv, make_norm(norm, out_channels)]
        if activation:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)

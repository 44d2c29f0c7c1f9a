"""DeepLabV3 (Chen et al., 2017): dilated backbone + ASPP head."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from lightning_seg.models.per_pixel.base import PixelSegmentationModel
from lightning_seg.models.layers import Norm, make_norm
from lightning_seg.models.per_pixel.blocks import ASPP


def default_atrous_rates(output_stride: int) -> tuple[int, int, int]:
    """The paper's ASPP rates: ``(6, 12, 18)`` at output stride 16, doubled at 8."""
    if output_stride == 8:
        return (12, 24, 36)
    if output_stride == 16:
        return (6, 12, 18)
    # At stride 32 the map is small; rates of 3/6/9 keep the taps inside it.
    return (3, 6, 9)


class DeepLabV3(PixelSegmentationModel):
    """DeepLabV3: ASPP -> 3x3 conv -> norm -> ReLU -> 1x1 classifier on the last stage.

    With a torchvision ResNet-50 backbone, ``output_stride=8``, the default rates and
    ``aux_head=True`` the layout is torchvision's ``deeplabv3_resnet50`` and its weights load
    through :func:`~lightning_seg.models.per_pixel.torchvision_weights.load_torchvision_weights`.

    Input images float ``[B, 3, H, W]`` in ``[0, 1]``; output logits ``[B, K, H, W]``, or
    ``{"out", "aux"}`` with ``aux_head=True`` (see :mod:`lightning_seg.models.per_pixel.base`).

    Args:
        num_classes: number of classes ``K``.
        output_stride: 8 or 16 (dilated last stages), or 32.
        aspp_rates: atrous rates of the three 3x3 branches (default: by output stride, see
            :func:`default_atrous_rates`).
        aspp_channels: channels of every ASPP branch and of the head.
        aspp_dropout: dropout after the ASPP projection.
        aspp_separable: depthwise-separable atrous convs.
        norm: normalisation in the head.
        aux_head, **backbone_args: see
            :class:`~lightning_seg.models.per_pixel.base.PixelSegmentationModel`.
    """

    def __init__(
        self,
        num_classes: int,
        output_stride: int = 8,
        aspp_rates: Sequence[int] | None = None,
        aspp_channels: int = 256,
        aspp_dropout: float = 0.5,
        aspp_separable: bool = False,
        norm: Norm = "BN",
        aux_head: bool = False,
        **backbone_args: Any,
    ) -> None:
        super().__init__(num_classes, output_stride=output_stride, aux_head=aux_head, **backbone_args)
        rates = tuple(aspp_rates) if aspp_rates is not None else default_atrous_rates(output_stride)
        self.head = nn.Sequential(
            ASPP(self.backbone.channels[-1], rates, aspp_channels, aspp_dropout, aspp_separable, norm),
            nn.Conv2d(aspp_channels, aspp_channels, 3, padding=1, bias=norm == "none"),
            make_norm(norm, aspp_channels),
            nn.ReLU(),
            nn.Conv2d(aspp_channels, num_classes, 1),
        )

    def decode(self, features: list[Tensor], image_size: tuple[int, int]) -> Tensor:
        """Class logits ``[B, K, h, w]`` at the backbone's output stride."""
        return self.head(features[-1])

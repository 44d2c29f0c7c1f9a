"""DeepLabV3+ (Chen et al., 2018): ASPP encoder plus a low-level-feature decoder."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_seg.models.semantic.base import PixelSegmentationModel
from lightning_seg.models.semantic.blocks import ASPP, ConvNormAct, Norm, resize_to
from lightning_seg.models.semantic.deeplabv3 import default_atrous_rates


class DeepLabV3Plus(PixelSegmentationModel):
    """DeepLabV3+: ASPP on the last stage, upsampled to the first (stride-4) stage and fused.

    Decoder: the stride-4 feature is reduced to ``low_level_channels`` by a 1x1 conv,
    concatenated with the upsampled ASPP output, refined by ``decoder_convs`` 3x3 convs and
    classified by a 1x1 conv; the logits are upsampled to the input size.

    Input images float ``[B, 3, H, W]`` in ``[0, 1]``; output logits ``[B, K, H, W]``, or
    ``{"out", "aux"}`` with ``aux_head=True`` (see :mod:`lightning_seg.models.semantic.base`).

    Args:
        num_classes: number of classes ``K``.
        output_stride: 16 (paper default for training) or 8.
        aspp_rates: atrous rates (default: by output stride).
        aspp_channels: channels of ASPP and of the decoder.
        aspp_dropout: dropout after the ASPP projection.
        aspp_separable: depthwise-separable ASPP convs (the paper's Xception variant).
        low_level_channels: channels the stride-4 feature is reduced to (48 in the paper).
        decoder_convs: number of 3x3 refinement convs (2 in the paper).
        decoder_separable: depthwise-separable refinement convs.
        dropout: dropout before the classifier.
        norm: normalisation in the head.
        backbone, backbone_source, pretrained, out_indices, frozen_stages, freeze_bn, aux_head,
        backbone_kwargs: see :class:`~lightning_seg.models.semantic.base.PixelSegmentationModel`.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50",
        backbone_source: Literal["timm", "torchvision"] = "timm",
        pretrained: bool | str = False,
        output_stride: int = 16,
        aspp_rates: Sequence[int] | None = None,
        aspp_channels: int = 256,
        aspp_dropout: float = 0.5,
        aspp_separable: bool = False,
        low_level_channels: int = 48,
        decoder_convs: int = 2,
        decoder_separable: bool = False,
        dropout: float = 0.1,
        norm: Norm = "BN",
        aux_head: bool = False,
        out_indices: Sequence[int] | None = None,
        frozen_stages: int = -1,
        freeze_bn: bool = False,
        backbone_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(num_classes, backbone, backbone_source, pretrained, output_stride, out_indices,
                         frozen_stages, freeze_bn, aux_head, 0.1, backbone_kwargs)
        if decoder_convs < 1:
            raise ValueError(f"decoder_convs must be >= 1, got {decoder_convs}")
        channels = self.backbone.channels
        rates = tuple(aspp_rates) if aspp_rates is not None else default_atrous_rates(output_stride)
        self.aspp = ASPP(channels[-1], rates, aspp_channels, aspp_dropout, aspp_separable, norm)
        self.low_level = ConvNormAct(channels[0], low_level_channels, 1, norm=norm)
        convs = [ConvNormAct(aspp_channels + low_level_channels, aspp_channels, 3, norm=norm,
                             separable=decoder_separable)]
        convs += [ConvNormAct(aspp_channels, aspp_channels, 3, norm=norm, separable=decoder_separable)
                  for _ in range(decoder_convs - 1)]
        self.decoder = nn.Sequential(*convs)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Conv2d(aspp_channels, num_classes, 1))

    def decode(self, features: list[Tensor], image_size: tuple[int, int]) -> Tensor:
        """Class logits ``[B, K, h, w]`` at the stride of the first backbone feature (4)."""
        low = self.low_level(features[0])
        high = resize_to(self.aspp(features[-1]), low.shape[-2:])
        return self.classifier(self.decoder(torch.cat([high, low], dim=1)))

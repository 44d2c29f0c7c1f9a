"""DeepLabV3+ (Chen et al., 2018): ASPP encoder plus a low-level-feature decoder."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_seg.models.per_pixel.base import PixelSegmentationModel
from lightning_seg.models.layers import ConvNormAct, Norm
from lightning_seg.models.per_pixel.blocks import ASPP, resize_to
from lightning_seg.models.per_pixel.deeplabv3 import default_atrous_rates


class DeepLabV3Plus(PixelSegmentationModel):
    """DeepLabV3+: ASPP on the last stage, upsampled to the first (stride-4) stage and fused.

    Decoder: the ASPP output (followed by one more 3x3 conv with ``post_aspp_conv``) is
    upsampled to the stride-4 feature and concatenated with it, reduced to
    ``low_level_channels`` by a 1x1 conv; the result is refined by ``decoder_convs`` 3x3 convs
    and classified by a 1x1 conv, and the logits are upsampled to the input size.

    With ``backbone_source="torchvision"``, ``output_stride=16``, ``aspp_rates=(12, 24, 36)``,
    ``aspp_separable=True``, ``post_aspp_conv=True``, ``decoder_convs=1``,
    ``decoder_separable=True``, ``dropout=0.0``, ``align_corners=True`` and
    ``uniform_dilation=True`` the network is segmentation_models_pytorch's ``DeepLabV3Plus`` on
    the same ResNet, module for module: smp's weights give the same logits (ours takes
    ``[0, 1]`` images, smp ImageNet-normalised ones whose sides are multiples of 16).

    Input images float ``[B, 3, H, W]`` in ``[0, 1]``; output logits ``[B, K, H, W]``, or
    ``{"out", "aux"}`` with ``aux_head=True`` (see :mod:`lightning_seg.models.per_pixel.base`).

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
        post_aspp_conv: a 3x3 conv-norm-ReLU on the ASPP output before it is upsampled,
            depthwise-separable when ``decoder_separable`` (smp's ``DeepLabV3PlusDecoder``
            appends a separable one to its ASPP).
        align_corners: bilinear upsampling (ASPP output to the stride-4 feature, logits to the
            input size) with ``align_corners=True``, as smp's ``nn.Upsample`` layers do.
        uniform_dilation: give every 3x3 conv of a dilated backbone stage the stage's rate,
            the first block's included, as smp's ``make_dilated`` does; torchvision and timm
            keep that first block at the preceding stage's rate. Needs a ResNet-style backbone
            (stages ``layer1`` .. ``layer4``); no effect at ``output_stride=32``.
        aux_head, **backbone_args: see
            :class:`~lightning_seg.models.per_pixel.base.PixelSegmentationModel`.
    """

    def __init__(
        self,
        num_classes: int,
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
        post_aspp_conv: bool = False,
        align_corners: bool = False,
        uniform_dilation: bool = False,
        **backbone_args: Any,
    ) -> None:
        super().__init__(num_classes, output_stride=output_stride, aux_head=aux_head, **backbone_args)
        if decoder_convs < 1:
            raise ValueError(f"decoder_convs must be >= 1, got {decoder_convs}")
        if uniform_dilation:
            _dilate_stages_uniformly(self.backbone.model, self.backbone_name)
        self.align_corners = align_corners
        channels = self.backbone.channels
        rates = tuple(aspp_rates) if aspp_rates is not None else default_atrous_rates(output_stride)
        self.aspp = ASPP(channels[-1], rates, aspp_channels, aspp_dropout, aspp_separable, norm)
        self.post_aspp: nn.Module | None = None
        if post_aspp_conv:
            self.post_aspp = ConvNormAct(aspp_channels, aspp_channels, 3, norm=norm, separable=decoder_separable)
        self.low_level = ConvNormAct(channels[0], low_level_channels, 1, norm=norm)
        convs = [ConvNormAct(aspp_channels + low_level_channels, aspp_channels, 3, norm=norm,
                             separable=decoder_separable)]
        convs += [ConvNormAct(aspp_channels, aspp_channels, 3, norm=norm, separable=decoder_separable)
                  for _ in range(decoder_convs - 1)]
        self.decoder = nn.Sequential(*convs)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Conv2d(aspp_channels, num_classes, 1))

    def decode(self, features: list[Tensor], image_size: tuple[int, int]) -> Tensor:
        """Class logits ``[B, K, h, w]`` at the stride of the first backbone feature (4), or at
        the input size ``image_size`` with ``align_corners``."""
        low = self.low_level(features[0])
        high = self.aspp(features[-1])
        if self.post_aspp is not None:
            high = self.post_aspp(high)
        high = resize_to(high, low.shape[-2:], self.align_corners)
        logits = self.classifier(self.decoder(torch.cat([high, low], dim=1)))
        if self.align_corners:
            # The base class resizes with align_corners=False; arriving at the input size
            # makes that a no-op.
            logits = resize_to(logits, image_size, align_corners=True)
        return logits


def _dilate_stages_uniformly(model: nn.Module, name: str) -> None:
    """Give every conv larger than 1x1 in each dilated ResNet stage of ``model`` the stage's rate.

    A stage's rate is the largest dilation among its convs; the padding grows with it so
    feature sizes stay. Only hyper-parameters change, so state dicts load either way.
    """
    stages = [module for child, module in model.named_children() if child.startswith("layer")]
    if not stages:
        raise ValueError(f"uniform_dilation needs a ResNet-style backbone with stages layer1..layer4, "
                         f"{name!r} has none")
    for stage in stages:
        convs = [m for m in stage.modules() if isinstance(m, nn.Conv2d) and max(m.kernel_size) > 1]
        rate = max((max(m.dilation) for m in convs), default=1)
        if rate == 1:
            continue
        for conv in convs:
            conv.dilation = (rate, rate)
            conv.padding = tuple(k // 2 * rate for k in conv.kernel_size)

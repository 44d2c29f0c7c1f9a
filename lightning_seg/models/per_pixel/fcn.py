"""FCN (Long et al., 2015) with an optional FCN-16s/8s skip fusion and auxiliary head."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from lightning_seg.models.per_pixel.base import PixelSegmentationModel
from lightning_seg.models.per_pixel.blocks import FCNHead, resize_to


class FCN(PixelSegmentationModel):
    """Fully convolutional network: an :class:`FCNHead` on the last backbone stage.

    With the defaults (torchvision ResNet-50 source, ``output_stride=8``, ``aux_head=True``)
    the layout is torchvision's ``fcn_resnet50`` and its weights load through
    :func:`~lightning_seg.models.per_pixel.torchvision_weights.load_torchvision_weights`.

    ``skip_stages`` adds FCN-16s / FCN-8s style skip fusion: a 1x1 class-score conv on stage 3
    (and stage 2), added to the upsampled coarser scores. The skip convs start at zero, so
    training starts from the single-stage prediction, as in the paper.

    Input images float ``[B, 3, H, W]`` in ``[0, 1]``; output logits ``[B, K, H, W]``, or
    ``{"out", "aux"}`` with ``aux_head=True`` (see :mod:`lightning_seg.models.per_pixel.base`).

    Args:
        num_classes: number of classes ``K``.
        output_stride, aux_head, **backbone_args: see
            :class:`~lightning_seg.models.per_pixel.base.PixelSegmentationModel`.
        skip_stages: 0 = FCN-32s (or dilated FCN), 1 = FCN-16s, 2 = FCN-8s.
        dropout: dropout inside the head.
    """

    def __init__(
        self,
        num_classes: int,
        output_stride: int = 8,
        skip_stages: int = 0,
        aux_head: bool = False,
        dropout: float = 0.1,
        **backbone_args: Any,
    ) -> None:
        super().__init__(num_classes, output_stride=output_stride, aux_head=aux_head, **backbone_args)
        channels = self.backbone.channels
        if not 0 <= skip_stages < len(channels):
            raise ValueError(f"skip_stages must be in [0, {len(channels) - 1}] for backbone {self.backbone_name!r}, "
                             f"got {skip_stages}")
        self.head = FCNHead(channels[-1], num_classes, dropout=dropout)
        self.skip_scores = nn.ModuleList(nn.Conv2d(channels[-2 - i], num_classes, 1) for i in range(skip_stages))
        for conv in self.skip_scores:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def decode(self, features: list[Tensor], image_size: tuple[int, int]) -> Tensor:
        """Class logits ``[B, K, h, w]`` at the stride of the finest fused stage."""
        logits = self.head(features[-1])
        for i, score in enumerate(self.skip_scores):
            skip = features[-2 - i]
            logits = resize_to(logits, skip.shape[-2:]) + score(skip)
        return logits

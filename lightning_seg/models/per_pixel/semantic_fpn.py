"""Semantic FPN: the semantic branch of Panoptic FPN (Kirillov et al., 2019) on an FPN."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from lightning_seg.models.per_pixel.base import PixelSegmentationModel
from lightning_seg.models.layers import Norm
from lightning_seg.models.necks import FPN
from lightning_seg.models.semantic_heads import fpn_scale_heads, sum_scale_heads


class SemanticFPN(PixelSegmentationModel):
    """Panoptic FPN's semantic branch on an FPN over the backbone's stride 4..32 features.

    Each pyramid level at stride ``s`` goes through ``max(1, log2(s / 4))`` blocks of
    3x3 conv-norm-ReLU (+ 2x bilinear upsampling while above stride 4); the levels are summed
    at stride 4 and classified by a 1x1 conv (the branch of
    :class:`~lightning_seg.models.semantic_heads.SemanticFPNHead`, shared with Panoptic FPN).

    Input images float ``[B, 3, H, W]`` in ``[0, 1]``; output logits ``[B, K, H, W]``, or
    ``{"out", "aux"}`` with ``aux_head=True`` (see :mod:`lightning_seg.models.per_pixel.base`).

    Args:
        num_classes: number of classes ``K``.
        fpn_channels: channels of the pyramid levels.
        head_channels: channels of the semantic branch.
        norm: normalisation in the semantic branch (GroupNorm in the paper).
        fpn_norm: normalisation in the FPN.
        dropout: dropout before the classifier.
        output_stride, aux_head, **backbone_args: see
            :class:`~lightning_seg.models.per_pixel.base.PixelSegmentationModel`.
    """

    def __init__(
        self,
        num_classes: int,
        fpn_channels: int = 256,
        head_channels: int = 128,
        norm: Norm = "GN",
        fpn_norm: Norm = "none",
        dropout: float = 0.0,
        aux_head: bool = False,
        output_stride: int = 32,
        **backbone_args: Any,
    ) -> None:
        super().__init__(num_classes, output_stride=output_stride, aux_head=aux_head, **backbone_args)
        strides = self.backbone.strides
        if any(b < a for a, b in zip(strides, strides[1:])) or any(s & (s - 1) for s in strides):
            raise ValueError(f"SemanticFPN needs non-decreasing power-of-two feature strides, got {strides} "
                             f"from backbone {self.backbone_name!r}")
        self.common_stride = strides[0]
        self.fpn = FPN(self.backbone.channels, fpn_channels, fpn_norm)
        self.scale_heads = fpn_scale_heads(fpn_channels, strides, head_channels, norm)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Conv2d(head_channels, num_classes, 1))

    def decode(self, features: list[Tensor], image_size: tuple[int, int]) -> Tensor:
        """Class logits ``[B, K, h, w]`` at the finest feature's stride (4)."""
        return self.classifier(sum_scale_heads(self.fpn(features), self.backbone.strides, self.scale_heads))

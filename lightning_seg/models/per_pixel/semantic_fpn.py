"""Semantic FPN: the semantic branch of Panoptic FPN (Kirillov et al., 2019) on an FPN."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from lightning_seg.models.per_pixel.base import PixelSegmentationModel
from lightning_seg.models.layers import Norm
from lightning_seg.models.necks import FPN
from lightning_seg.models.semantic_heads import SemanticFPNHead


class SemanticFPN(PixelSegmentationModel):
    """Panoptic FPN's semantic branch on an FPN over the backbone's stride 4..32 features.

    Each pyramid level at stride ``s`` goes through ``max(1, log2(s / 4))`` blocks of
    3x3 conv-norm-ReLU (+ 2x bilinear upsampling while above stride 4); the levels are summed
    at stride 4 and classified by a 1x1 conv (:class:`~lightning_seg.models.semantic_heads.SemanticFPNHead`,
    shared with Panoptic FPN).

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
        self.head = SemanticFPNHead(fpn_channels, strides, num_classes, head_channels, norm, dropout)
        self._register_load_state_dict_pre_hook(_rename_flat_head_keys)

    def decode(self, features: list[Tensor], image_size: tuple[int, int]) -> Tensor:
        """Class logits ``[B, K, h, w]`` at the finest feature's stride (4)."""
        return self.head(self.fpn(features))


def _rename_flat_head_keys(state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """Checkpoints from before the shared head kept ``scale_heads.*``/``classifier.*`` at the top."""
    for key in [k for k in state_dict if k.startswith(prefix + "scale_heads.") or k.startswith(prefix + "classifier.")]:
        state_dict[prefix + "head." + key[len(prefix):]] = state_dict.pop(key)

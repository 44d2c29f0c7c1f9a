"""Shared skeleton of the per-pixel segmentation models: backbone, optional auxiliary head, output.

Every model maps images float ``[B, 3, H, W]`` in ``[0, 1]`` to class logits float
``[B, K, H, W]`` at the input resolution. With ``aux_head=True`` it returns instead a dict
``{"out": [B, K, H, W], "aux": [B, K, H, W]}`` in both train and eval mode (the return type
depends only on the constructor), where ``"aux"`` comes from an :class:`FCNHead` on the
backbone's second-to-last returned feature ("stage 3"), as in PSPNet / torchvision DeepLab.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from torch import Tensor, nn

from lightning_seg.models.backbone import build_backbone
from lightning_seg.models.per_pixel.blocks import FCNHead, resize_to


class PixelSegmentationModel(nn.Module):
    """Base of the per-pixel models; subclasses build ``self.decode(features) -> logits``.

    The backbone arguments are documented here once; subclasses take them as ``**backbone_args``.

    Args:
        num_classes: number of classes ``K`` (void excluded).
        backbone: backbone model name (timm, or torchvision ResNet with ``backbone_source``).
        backbone_source: ``"timm"`` or ``"torchvision"``.
        pretrained: ``False``, ``True`` (hub weights) or a local weights file path.
        output_stride: 8 / 16 dilate the last backbone stages; 32 = plain.
        out_indices: backbone features to use (default: see :class:`Backbone`).
        frozen_stages: backbone stages to freeze (``-1`` = none).
        freeze_bn: freeze the backbone's BatchNorm layers.
        aux_head: add the auxiliary FCN head on stage 3 (see the module docstring).
        aux_dropout: dropout inside the auxiliary head.
        backbone_kwargs: extra ``timm.create_model`` arguments (e.g. ``img_size``,
            ``drop_path_rate``).
        min_stride: passed to :class:`Backbone` (2 adds the stride-2 stem feature).
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50",
        backbone_source: Literal["timm", "torchvision"] = "timm",
        pretrained: bool | str = False,
        output_stride: int = 32,
        out_indices: Sequence[int] | None = None,
        frozen_stages: int = -1,
        freeze_bn: bool = False,
        aux_head: bool = False,
        aux_dropout: float = 0.1,
        backbone_kwargs: dict[str, Any] | None = None,
        min_stride: int = 4,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.backbone_name, self.backbone_source = backbone, backbone_source
        self.backbone = self.build_backbone(
            backbone, backbone_source, pretrained, output_stride, out_indices, frozen_stages, freeze_bn,
            min_stride, dict(backbone_kwargs or {}),
        )
        self.aux_head: nn.Module | None = None
        if aux_head:
            if len(self.backbone.channels) < 2:
                raise ValueError(f"aux_head needs at least two backbone features, {backbone!r} returns "
                                 f"{len(self.backbone.channels)}")
            self.aux_head = FCNHead(self.backbone.channels[-2], num_classes, dropout=aux_dropout)

    def build_backbone(self, name, source, pretrained, output_stride, out_indices, frozen_stages, freeze_bn,
                       min_stride, backbone_kwargs) -> nn.Module:
        """Build the feature extractor (subclasses may return any module with the same contract)."""
        return build_backbone(name, source, pretrained, out_indices, frozen_stages, freeze_bn, backbone_kwargs,
                              output_stride, min_stride)

    def decode(self, features: list[Tensor], image_size: tuple[int, int]) -> Tensor:
        """Class logits ``[B, K, h, w]`` at some stride from the backbone features.

        ``image_size`` is the input's ``(H, W)``, for decoders that upsample in steps.
        """
        raise NotImplementedError

    def forward(self, images: Tensor) -> Tensor | dict[str, Tensor]:
        """Images float ``[B, 3, H, W]`` in ``[0, 1]`` -> logits float ``[B, K, H, W]``.

        Returns ``{"out": logits, "aux": aux_logits}`` (both ``[B, K, H, W]``) when the model
        was built with ``aux_head=True``.
        """
        size = images.shape[-2:]
        features = self.backbone(images)
        out = resize_to(self.decode(features, (int(size[0]), int(size[1]))), size)
        if self.aux_head is None:
            return out
        return {"out": out, "aux": resize_to(self.aux_head(features[-2]), size)}

"""MaskFormer and Mask2Former: backbone → pixel decoder → transformer decoder."""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor, nn

from lightning_seg.models.backbone import Backbone, build_backbone
from lightning_seg.models.mask_classification.fpn_pixel_decoder import FPNPixelDecoder
from lightning_seg.models.mask_classification.masked_attention_decoder import MaskedAttentionDecoder
from lightning_seg.models.mask_classification.msdeform_pixel_decoder import MSDeformAttnPixelDecoder
from lightning_seg.models.mask_classification.standard_decoder import StandardTransformerDecoder

_NORM_TYPES = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm,
    nn.InstanceNorm2d, nn.LocalResponseNorm,
)
# Parameters that are embeddings rather than weights, whatever module holds them
# (timm ViT/Swin position tables, the pixel decoder's level embedding).
_EMBEDDING_PARAM_NAMES = ("pos_embed", "cls_token", "relative_position_bias_table", "absolute_pos_embed", "level_embed")


class MaskClassificationModel(nn.Module):
    """Shared wiring and utilities of the mask-classification models.

    Subclasses set ``backbone``, ``pixel_decoder`` and ``transformer_decoder`` and implement
    :meth:`forward`. Output contract of :meth:`forward` for images float ``[B, 3, H, W]`` in
    ``[0, 1]``: ``pred_logits`` float ``[B, Q, K+1]`` (last = no-object), ``pred_masks`` float
    ``[B, Q, ceil(H/4), ceil(W/4)]`` mask logits (at the finest backbone stride, 4 for CNN and
    hierarchical backbones), ``aux_outputs`` list of dicts with the same two keys.
    """

    backbone: Backbone
    pixel_decoder: nn.Module
    transformer_decoder: nn.Module
    num_classes: int

    def reset_classifier(self, num_classes: int) -> None:
        """Re-initialise the class head for ``num_classes`` classes (+1 no-object), for fine-tuning.

        Everything else (backbone, decoders, mask head) keeps its weights.
        """
        if num_classes < 1:
            raise ValueError(f"reset_classifier: num_classes must be >= 1, got {num_classes}")
        self.transformer_decoder.reset_classifier(num_classes)
        self.num_classes = num_classes

    def classifier_parameter_names(self) -> list[str]:
        """Names of the class head's parameters (the ones whose shape depends on ``num_classes``)."""
        return [n for n, _ in self.named_parameters() if n.startswith("transformer_decoder.class_embed.")]

    def no_weight_decay_parameter_names(self) -> set[str]:
        """Names of normalisation-layer and embedding parameters (Mask2Former trains them without
        weight decay): weights/biases of norm layers, ``nn.Embedding`` tables (queries, levels),
        and backbone position tables."""
        names: set[str] = set()
        for module_name, module in self.named_modules():
            prefix = f"{module_name}." if module_name else ""
            if isinstance(module, _NORM_TYPES) or isinstance(module, nn.Embedding):
                names.update(prefix + n for n, _ in module.named_parameters(recurse=False))
        for name, _ in self.named_parameters():
            if name.rsplit(".", 1)[-1] in _EMBEDDING_PARAM_NAMES:
                names.add(name)
        return names


class Mask2Former(MaskClassificationModel):
    """Mask2Former (Cheng et al., 2022): masked-attention mask transformer.

    Backbone → pixel decoder (multi-scale deformable attention by default, or FPN) →
    masked-attention decoder. ``aux_outputs`` holds ``num_decoder_layers`` predictions: the one
    from the initial queries before the first layer and those after every layer but the last.

    Args:
        num_classes: ``K`` (the class head has ``K + 1`` outputs, last = no-object).
        pixel_decoder: ``"msdeform"`` (paper) or ``"fpn"``.
        conv_dim: pixel decoder width.
        mask_dim: per-pixel embedding channels.
        enc_layers: deformable encoder layers (msdeform only).
        enc_nheads: deformable attention heads.
        enc_dim_feedforward: encoder feed-forward width.
        enc_n_points: sampling points per head and level.
        num_queries: object queries ``Q``.
        hidden_dim: decoder width.
        nheads: decoder attention heads.
        dim_feedforward: decoder feed-forward width.
        num_decoder_layers: decoder layers (9 = 3 rounds over 3 scales).
        pre_norm: pre-norm decoder layers.
        enforce_input_project: 1×1 projection of the decoder inputs even when widths match.
        num_feature_levels: scales the decoder (and deformable encoder) use.
        dropout: transformer dropout.
        **backbone_args: ``backbone``, ``backbone_source``, ``pretrained``, ``out_indices``,
            ``frozen_stages``, ``freeze_bn``, ``backbone_kwargs``: see
            :func:`~lightning_seg.models.backbone.build_backbone` (default features: strides 4..32).
    """

    def __init__(
        self,
        num_classes: int,
        pixel_decoder: Literal["msdeform", "fpn"] = "msdeform",
        conv_dim: int = 256,
        mask_dim: int = 256,
        enc_layers: int = 6,
        enc_nheads: int = 8,
        enc_dim_feedforward: int = 1024,
        enc_n_points: int = 4,
        num_queries: int = 100,
        hidden_dim: int = 256,
        nheads: int = 8,
        dim_feedforward: int = 2048,
        num_decoder_layers: int = 9,
        pre_norm: bool = False,
        enforce_input_project: bool = False,
        num_feature_levels: int = 3,
        dropout: float = 0.0,
        **backbone_args: Any,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"Mask2Former: num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.backbone = build_backbone(**backbone_args)
        if pixel_decoder == "msdeform":
            self.pixel_decoder: nn.Module = MSDeformAttnPixelDecoder(
                self.backbone.channels,
                self.backbone.strides,
                conv_dim=conv_dim,
                mask_dim=mask_dim,
                enc_layers=enc_layers,
                enc_nheads=enc_nheads,
                enc_dim_feedforward=enc_dim_feedforward,
                enc_n_points=enc_n_points,
                num_feature_levels=num_feature_levels,
                dropout=dropout,
            )
        elif pixel_decoder == "fpn":
            self.pixel_decoder = FPNPixelDecoder(
                self.backbone.channels, conv_dim=conv_dim, mask_dim=mask_dim, num_feature_levels=num_feature_levels
            )
        else:
            raise ValueError(f"Mask2Former: pixel_decoder must be 'msdeform' or 'fpn', got {pixel_decoder!r}")
        self.transformer_decoder = MaskedAttentionDecoder(
            in_channels=conv_dim,
            num_classes=num_classes,
            hidden_dim=hidden_dim,
            num_queries=num_queries,
            nheads=nheads,
            dim_feedforward=dim_feedforward,
            num_layers=num_decoder_layers,
            pre_norm=pre_norm,
            mask_dim=mask_dim,
            enforce_input_project=enforce_input_project,
            num_feature_levels=num_feature_levels,
            dropout=dropout,
        )

    def forward(self, images: Tensor) -> dict[str, Any]:
        """Predict classes and masks.

        Args:
            images: float ``[B, 3, H, W]`` in ``[0, 1]`` (padded batch; normalised inside).

        Returns:
            ``pred_logits`` float ``[B, Q, K+1]``, ``pred_masks`` float
            ``[B, Q, ceil(H/4), ceil(W/4)]`` logits, ``aux_outputs``: ``num_decoder_layers``
            dicts of the same keys (initial-query prediction first).
        """
        features = self.backbone(images)
        mask_features, multi_scale = self.pixel_decoder(features)
        return self.transformer_decoder(multi_scale, mask_features)


class MaskFormer(MaskClassificationModel):
    """MaskFormer (Cheng et al., 2021): per-segment mask classification with a DETR decoder.

    Backbone → FPN pixel decoder (per-pixel embedding at stride 4) and a standard transformer
    decoder attending to the coarsest backbone feature. ``aux_outputs`` holds the predictions
    of the first ``num_decoder_layers - 1`` layers.

    Args:
        num_classes: ``K`` (the class head has ``K + 1`` outputs, last = no-object).
        conv_dim: FPN width.
        mask_dim: per-pixel embedding channels.
        num_queries: object queries ``Q``.
        hidden_dim: transformer width.
        nheads: attention heads.
        dim_feedforward: feed-forward width.
        num_decoder_layers: decoder layers.
        enc_layers: transformer encoder layers over the coarsest feature (0 in the paper's R50).
        pre_norm: pre-norm layers.
        enforce_input_project: 1×1 projection even when widths match.
        dropout: transformer dropout.
        **backbone_args: ``backbone``, ``backbone_source``, ``pretrained``, ``out_indices``,
            ``frozen_stages``, ``freeze_bn``, ``backbone_kwargs``: see
            :func:`~lightning_seg.models.backbone.build_backbone` (default features: strides 4..32).
    """

    def __init__(
        self,
        num_classes: int,
        conv_dim: int = 256,
        mask_dim: int = 256,
        num_queries: int = 100,
        hidden_dim: int = 256,
        nheads: int = 8,
        dim_feedforward: int = 2048,
        num_decoder_layers: int = 6,
        enc_layers: int = 0,
        pre_norm: bool = False,
        enforce_input_project: bool = False,
        dropout: float = 0.1,
        **backbone_args: Any,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"MaskFormer: num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.backbone = build_backbone(**backbone_args)
        self.pixel_decoder = FPNPixelDecoder(
            self.backbone.channels, conv_dim=conv_dim, mask_dim=mask_dim, num_feature_levels=1
        )
        self.transformer_decoder = StandardTransformerDecoder(
            in_channels=self.backbone.channels[-1],
            num_classes=num_classes,
            hidden_dim=hidden_dim,
            num_queries=num_queries,
            nheads=nheads,
            dim_feedforward=dim_feedforward,
            num_layers=num_decoder_layers,
            enc_layers=enc_layers,
            pre_norm=pre_norm,
            mask_dim=mask_dim,
            enforce_input_project=enforce_input_project,
            dropout=dropout,
        )

    def forward(self, images: Tensor) -> dict[str, Any]:
        """Predict classes and masks.

        Args:
            images: float ``[B, 3, H, W]`` in ``[0, 1]`` (padded batch; normalised inside).

        Returns:
            ``pred_logits`` float ``[B, Q, K+1]``, ``pred_masks`` float
            ``[B, Q, ceil(H/4), ceil(W/4)]`` logits, ``aux_outputs``: ``num_decoder_layers - 1``
            dicts of the same keys.
        """
        features = self.backbone(images)
        mask_features, _ = self.pixel_decoder(features)
        return self.transformer_decoder(features[-1], mask_features)

"""Mask-classification models (MaskFormer, Mask2Former, MaX-DeepLab) and their building blocks."""

from lightning_seg.models.mask_classification.deformable_attention import (
    MultiScaleDeformableAttention,
    multi_scale_deformable_attention,
)
from lightning_seg.models.mask_classification.dual_path import DualPathBlock
from lightning_seg.models.mask_classification.fpn_pixel_decoder import FPNPixelDecoder
from lightning_seg.models.mask_classification.hf_weights import (
    convert_hf_mask2former_state_dict,
    convert_hf_maskformer_state_dict,
    load_hf_mask2former_weights,
)
from lightning_seg.models.mask_classification.masked_attention_decoder import (
    MaskedAttentionDecoder,
    attention_mask_from_logits,
)
from lightning_seg.models.mask_classification.model import Mask2Former, MaskClassificationModel, MaskFormer
from lightning_seg.models.mask_classification.max_deeplab import MaXDeepLab
from lightning_seg.models.mask_classification.msdeform_pixel_decoder import MSDeformAttnPixelDecoder
from lightning_seg.models.mask_classification.position_encoding import SinePositionEncoding
from lightning_seg.models.mask_classification.standard_decoder import StandardTransformerDecoder

__all__ = [
    "DualPathBlock",
    "MaXDeepLab",
    "FPNPixelDecoder",
    "MSDeformAttnPixelDecoder",
    "Mask2Former",
    "MaskClassificationModel",
    "MaskFormer",
    "MaskedAttentionDecoder",
    "MultiScaleDeformableAttention",
    "SinePositionEncoding",
    "StandardTransformerDecoder",
    "attention_mask_from_logits",
    "convert_hf_mask2former_state_dict",
    "convert_hf_maskformer_state_dict",
    "load_hf_mask2former_weights",
    "multi_scale_deformable_attention",
]

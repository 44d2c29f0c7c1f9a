"""DETR (set prediction of boxes and, with its mask head, of panoptic masks)."""

from lightning_seg.models.detr.detr import DETR, AttentionMap, MaskHead
from lightning_seg.models.detr.hf_weights import (
    convert_hf_detr_state_dict,
    load_hf_detr_weights,
)

__all__ = ["AttentionMap", "DETR", "MaskHead", "convert_hf_detr_state_dict", "load_hf_detr_weights"]

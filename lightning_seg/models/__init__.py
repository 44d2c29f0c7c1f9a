"""lightning_seg.models: nn.Modules only (backbones, the FPN, per-pixel, mask-classification and R-CNN models: Mask R-CNN, Panoptic FPN, UPSNet; single-stage instance models: SOLO, SOLOv2, YOLACT; DETR; MaX-DeepLab).

Tasks build their model by name with :func:`create_model`; each registered name declares its
family (see :mod:`lightning_seg.models.registry`).
"""

from __future__ import annotations

from lightning_seg.models.backbone import Backbone
from lightning_seg.models.dense_instance import SOLO, YOLACT, SOLOv2
from lightning_seg.models.detr import DETR
from lightning_seg.models.mask_classification import Mask2Former, MaskFormer, MaXDeepLab
from lightning_seg.models.necks import FPN
from lightning_seg.models.per_pixel import (
    FCN,
    DeepLabV3,
    DeepLabV3Plus,
    SemanticFPN,
    UNet,
    convert_torchvision_state_dict,
    load_torchvision_weights,
)
from lightning_seg.models.rcnn import MaskRCNN, PanopticFPN, UPSNet
from lightning_seg.models.registry import (
    MODEL_REGISTRY,
    ModelEntry,
    create_model,
    list_models,
    model_entry,
    register_model,
)

register_model("fcn", FCN, "per_pixel")
register_model("unet", UNet, "per_pixel")
register_model("deeplabv3", DeepLabV3, "per_pixel")
register_model("deeplabv3plus", DeepLabV3Plus, "per_pixel")
register_model("semantic_fpn", SemanticFPN, "per_pixel")
register_model("maskformer", MaskFormer, "mask_classification")
register_model("mask2former", Mask2Former, "mask_classification")
register_model("mask_rcnn", MaskRCNN, "rcnn")
register_model("panoptic_fpn", PanopticFPN, "rcnn")
register_model("upsnet", UPSNet, "rcnn")
register_model("solo", SOLO, "dense_instance")
register_model("solov2", SOLOv2, "dense_instance")
register_model("yolact", YOLACT, "dense_instance")
register_model("detr", DETR, "detr")
register_model("max_deeplab", MaXDeepLab, "max_deeplab")

__all__ = [
    "FCN",
    "MODEL_REGISTRY",
    "Mask2Former",
    "MaskRCNN",
    "MaskFormer",
    "MaXDeepLab",
    "Backbone",
    "DETR",
    "SOLO",
    "SOLOv2",
    "YOLACT",
    "DeepLabV3",
    "DeepLabV3Plus",
    "FPN",
    "ModelEntry",
    "SemanticFPN",
    "UNet",
    "convert_torchvision_state_dict",
    "create_model",
    "list_models",
    "load_torchvision_weights",
    "model_entry",
    "register_model",
]

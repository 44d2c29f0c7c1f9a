"""lightning_seg.models: nn.Modules only (backbones, per-pixel and mask-classification decoders).

Models are built directly from their classes (what LightningCLI's ``class_path`` does) or by
name with :func:`create_model`, timm style.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from lightning_seg.models.backbone import Backbone
from lightning_seg.models.mask_classification import Mask2Former, MaskFormer
from lightning_seg.models.semantic import (
    FCN,
    DeepLabV3,
    DeepLabV3Plus,
    SemanticFPN,
    UNet,
    convert_torchvision_state_dict,
    load_torchvision_weights,
)

# Architecture name -> class. Other model families register here with one line each.
MODEL_REGISTRY: dict[str, type[nn.Module]] = {
    "fcn": FCN,
    "unet": UNet,
    "deeplabv3": DeepLabV3,
    "deeplabv3plus": DeepLabV3Plus,
    "semantic_fpn": SemanticFPN,
    "maskformer": MaskFormer,
    "mask2former": Mask2Former,
}


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, sorted."""
    return sorted(MODEL_REGISTRY)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the architecture ``name`` (see :func:`list_models`) with its constructor ``kwargs``.

    Example: ``create_model("deeplabv3plus", num_classes=150, backbone="resnet50")``.
    """
    key = name.lower().replace("-", "_")
    if key not in MODEL_REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {list_models()}")
    return MODEL_REGISTRY[key](**kwargs)


__all__ = [
    "FCN",
    "MODEL_REGISTRY",
    "Mask2Former",
    "MaskFormer",
    "Backbone",
    "DeepLabV3",
    "DeepLabV3Plus",
    "SemanticFPN",
    "UNet",
    "convert_torchvision_state_dict",
    "create_model",
    "list_models",
    "load_torchvision_weights",
]

"""Per-pixel classification models (one class score per pixel): FCN, U-Net, DeepLabV3, DeepLabV3+, Semantic FPN."""

from lightning_seg.models.per_pixel.base import PixelSegmentationModel
from lightning_seg.models.per_pixel.blocks import ASPP, FCNHead
from lightning_seg.models.per_pixel.deeplabv3 import DeepLabV3
from lightning_seg.models.per_pixel.deeplabv3plus import DeepLabV3Plus
from lightning_seg.models.per_pixel.fcn import FCN
from lightning_seg.models.per_pixel.semantic_fpn import SemanticFPN
from lightning_seg.models.per_pixel.torchvision_weights import convert_torchvision_state_dict, load_torchvision_weights
from lightning_seg.models.per_pixel.unet import PlainUNetEncoder, UNet

__all__ = [
    "ASPP",
    "DeepLabV3",
    "DeepLabV3Plus",
    "FCN",
    "FCNHead",
    "PixelSegmentationModel",
    "PlainUNetEncoder",
    "SemanticFPN",
    "UNet",
    "convert_torchvision_state_dict",
    "load_torchvision_weights",
]

"""Per-pixel semantic segmentation models: FCN, U-Net, DeepLabV3, DeepLabV3+, Semantic FPN."""

from lightning_seg.models.semantic.base import PixelSegmentationModel
from lightning_seg.models.semantic.blocks import ASPP, ConvNormAct, FCNHead
from lightning_seg.models.semantic.deeplabv3 import DeepLabV3
from lightning_seg.models.semantic.deeplabv3plus import DeepLabV3Plus
from lightning_seg.models.semantic.fcn import FCN
from lightning_seg.models.semantic.semantic_fpn import FPN, SemanticFPN
from lightning_seg.models.semantic.torchvision_weights import convert_torchvision_state_dict, load_torchvision_weights
from lightning_seg.models.semantic.unet import PlainUNetEncoder, UNet

__all__ = [
    "ASPP",
    "ConvNormAct",
    "DeepLabV3",
    "DeepLabV3Plus",
    "FCN",
    "FCNHead",
    "FPN",
    "PixelSegmentationModel",
    "PlainUNetEncoder",
    "SemanticFPN",
    "UNet",
    "convert_torchvision_state_dict",
    "load_torchvision_weights",
]

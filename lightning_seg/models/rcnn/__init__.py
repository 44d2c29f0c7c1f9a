"""R-CNN family: Mask R-CNN (RPN, RoIAlign box and mask heads) on a ResNet + FPN."""

from lightning_seg.models.rcnn.anchors import AnchorGrid
from lightning_seg.models.rcnn.heads import BoxHead, BoxPredictor, MaskHead
from lightning_seg.models.rcnn.mask_rcnn import MaskRCNN
from lightning_seg.models.rcnn.roi_heads import Detections, RoIHeads
from lightning_seg.models.rcnn.rpn import BoxTargets, RegionProposalNetwork, RPNHead
from lightning_seg.models.rcnn.settings import (
    RoIHeadsSettings,
    RPNSettings,
    torchvision_settings,
)
from lightning_seg.models.rcnn.targets import box_targets_from_batch
from lightning_seg.models.rcnn.torchvision_weights import (
    convert_torchvision_mask_rcnn,
    load_torchvision_weights,
    mask_rcnn_from_torchvision,
)

__all__ = [
    "AnchorGrid",
    "BoxHead",
    "BoxPredictor",
    "BoxTargets",
    "Detections",
    "MaskHead",
    "MaskRCNN",
    "RPNHead",
    "RPNSettings",
    "RegionProposalNetwork",
    "RoIHeads",
    "RoIHeadsSettings",
    "box_targets_from_batch",
    "convert_torchvision_mask_rcnn",
    "load_torchvision_weights",
    "mask_rcnn_from_torchvision",
    "torchvision_settings",
]

"""R-CNN family on a ResNet + FPN: Mask R-CNN (RPN, RoIAlign box and mask heads), Panoptic FPN
(+ a semantic FPN head, heuristic fusion) and UPSNet (+ a deformable semantic head and a
parameter-free panoptic head)."""

from lightning_seg.models.rcnn.anchors import AnchorGrid
from lightning_seg.models.rcnn.heads import BoxHead, BoxPredictor, MaskHead
from lightning_seg.models.rcnn.mask_rcnn import MaskRCNN
from lightning_seg.models.rcnn.panoptic_fpn import (
    PanopticFPN,
    PanopticOutputs,
    PanopticRCNN,
    PanopticTargets,
)
from lightning_seg.models.rcnn.roi_heads import Detections, RoIHeads
from lightning_seg.models.rcnn.rpn import BoxTargets, RegionProposalNetwork, RPNHead
from lightning_seg.models.rcnn.settings import (
    PanopticSettings,
    RoIHeadsSettings,
    RPNSettings,
    torchvision_settings,
)
from lightning_seg.models.rcnn.targets import (
    box_targets_from_batch,
    segment_maps,
    semantic_targets,
)
from lightning_seg.models.rcnn.torchvision_weights import (
    convert_torchvision_mask_rcnn,
    load_torchvision_weights,
    mask_rcnn_from_torchvision,
)
from lightning_seg.models.rcnn.upsnet import UPSNet

__all__ = [
    "AnchorGrid",
    "BoxHead",
    "BoxPredictor",
    "BoxTargets",
    "Detections",
    "MaskHead",
    "MaskRCNN",
    "PanopticFPN",
    "PanopticOutputs",
    "PanopticRCNN",
    "PanopticSettings",
    "PanopticTargets",
    "RPNHead",
    "RPNSettings",
    "RegionProposalNetwork",
    "RoIHeads",
    "RoIHeadsSettings",
    "UPSNet",
    "box_targets_from_batch",
    "convert_torchvision_mask_rcnn",
    "load_torchvision_weights",
    "mask_rcnn_from_torchvision",
    "segment_maps",
    "semantic_targets",
    "torchvision_settings",
]

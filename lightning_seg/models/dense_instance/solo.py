"""SOLO (Wang et al., ECCV 2020), decoupled SOLO and SOLOv2 (Wang et al., NeurIPS 2020) on a
ResNet + FPN.

Instances are located by grid cells: each level ``l`` of P2-P6 (resampled to strides 8, 8, 16,
32, 32) is resized to an ``S_l x S_l`` grid whose cells classify the instance centred in them
(a category branch) and predict its mask: SOLO has one mask channel per cell, decoupled SOLO an
x- and a y-mask per column and row, SOLOv2 a dynamic 1x1 kernel applied to mask features shared
by all levels. The layer layout follows mmdetection's ``SOLOHead`` / ``DecoupledSOLOHead`` /
``SOLOV2Head``; the target rules, losses and inference are in :mod:`lightning_seg.ops` and
:mod:`lightning_seg.losses`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_seg.models.backbone import build_backbone
from lightning_seg.models.dense_instance.settings import SOLOSettings
from lightning_seg.models.layers import ConvNormAct
from lightning_seg.models.necks import FPN
from lightning_seg.models.rcnn.settings import settings_from
from lightning_seg.models.semantic_heads import fpn_scale_heads, sum_scale_heads
from lightning_seg.ops.dynamic_masks import linear_combination_masks
from lightning_seg.ops.image_groups import group_by_image
from lightning_seg.ops.mask_inference import binary_masks_at_size
from lightning_seg.ops.matrix_nms import matrix_nms
from lightning_seg.ops.solo_inference import maskness, solo_candidates
from lightning_seg.structures import InstancePrediction

LEVEL_STRIDES = (8, 8, 16, 32, 32)
"""Strides of SOLO's five levels after P2 is halved and P6 resized to P5."""


def coordinate_channels(x: Tensor) -> Tensor:
    """CoordConv channels of a map float ``[B, C, h, w]``: float ``[B, 2, h, w]``, x then y, each
    ``linspace(-1, 1)`` across the map."""
    b, _, h, w = x.shape
    ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype)
    xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx, yy])[None].expand(b, -1, -1, -1)


def solo_levels(pyramid: list[Tensor]) -> list[Tensor]:
    """P2-P6 float ``[B, C, h_l, w_l]`` (strides 4-64) -> SOLO's five levels at strides 8, 8, 16,
    32, 32: P2 bilinearly resized to P3's size, P6 to P5's, the rest as is."""
    out = list(pyramid)
    out[0] = F.interpolate(pyramid[0], size=pyramid[1].shape[-2:], mode="bilinear", align_corners=False)
    out[-1] = F.interpolate(pyramid[-1], size=pyramid[-2].shape[-2:], mode="bilinear", align_corners=False)
    return out


def _branch(in_channels: int, channels: int, depth: int, norm: Any) -> nn.Sequential:
    return nn.Sequential(*(ConvNormAct(in_channels if k == 0 else channels, channels, 3, norm=norm)
                           for k in range(depth)))


def _init_normal(module: nn.Module, bias_prob: float | None = None) -> None:
    # mmdetection's heads: convs drawn from N(0, 0.01); classifiers start at probability 0.01
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=0.01)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0.0 if bias_prob is None else -math.log((1 - bias_prob) / bias_prob))


@dataclass
class GridOutputs:
    """Raw outputs of SOLO, decoupled SOLO and SOLOv2.

    Attributes:
        category_logits: per level float ``[B, K, S_l, S_l]``.
        mask_logits: SOLO: per level float ``[B, S_l**2, h_l, w_l]`` (one channel per cell,
            row-major; ``h_l`` = stride-4 / 4 / 8 / 16 / 16 maps); decoupled SOLO: per level
            ``[B, 2 S_l, h_l, w_l]`` (the ``S_l`` x-masks of the columns, then the y-masks of
            the rows); SOLOv2: per level the dynamic kernels ``[B, E, S_l, S_l]``.
        mask_features: SOLOv2's mask features float ``[B, E, h/4, w/4]``; None for SOLO.
            (Decoupled SOLO's x- and y-probabilities are multiplied at the level's resolution
            in training and inference; mmdetection's inference upsamples each before the product.)
        kind: ``"solo"``, ``"decoupled"`` or ``"solov2"``.
        padded_size: ``(Hp, Wp)`` of the input (the masks are aligned with it when it is a
            multiple of 32, as the configs pad).
    """

    category_logits: list[Tensor]
    mask_logits: list[Tensor]
    mask_features: Tensor | None
    kind: Literal["solo", "decoupled", "solov2"]
    padded_size: tuple[int, int]

    @property
    def strides(self) -> tuple[int, ...]:
        """Stride of each level (a candidate's mask must have more pixels than it)."""
        return LEVEL_STRIDES[: len(self.category_logits)]

    def mask_size(self, level: int) -> tuple[int, int]:
        """``(h, w)`` of the masks of ``level``."""
        m = self.mask_features if self.mask_features is not None else self.mask_logits[level]
        return int(m.shape[-2]), int(m.shape[-1])

    def mask_probs(self, level: int, image_index: Tensor, cell: Tensor) -> Tensor:
        """Mask probabilities float ``[N, h, w]`` of cells (int64 ``[N]`` row-major ``i * S + j``)
        of ``level`` in images int64 ``[N]``."""
        m = self.mask_logits[level]
        if self.kind == "solo":
            return m[image_index, cell].sigmoid()
        if self.kind == "decoupled":
            s = self.category_logits[level].shape[-1]
            i, j = torch.div(cell, s, rounding_mode="floor"), cell % s
            return m[image_index, j].sigmoid() * m[image_index, s + i].sigmoid()
        kernels = m.flatten(2)[image_index, :, cell]  # [N, E]
        return linear_combination_masks(self.mask_features, kernels, image_index).sigmoid()

    def zero_mask_term(self) -> Tensor:
        """0 with a gradient path through every mask output (keeps DDP's reducer whole when a
        batch has no positive cell)."""
        total = sum(m.sum() for m in self.mask_logits)
        if self.mask_features is not None:
            total = total + self.mask_features.sum()
        return total * 0.0


class GridInstanceModel(nn.Module):
    """The shared part of SOLO and SOLOv2: backbone, FPN P2-P6 (P6 by max-pooling), the five
    grid levels and the category branch; subclasses add the mask branch.

    Args:
        num_classes: ``K`` thing classes.
        backbone, backbone_source, pretrained, frozen_stages, freeze_bn, backbone_kwargs: the
            ResNet (mmdetection's recipe: frozen stem + res2, BN frozen).
        fpn_channels: FPN width (256).
        solo: :class:`~lightning_seg.models.dense_instance.settings.SOLOSettings` (or a mapping).
    """

    predicts_boxes = False
    kind: Literal["solo", "decoupled", "solov2"] = "solo"
    default_head_channels = 256
    default_head_convs = 7

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50",
        backbone_source: Literal["timm", "torchvision"] = "torchvision",
        pretrained: bool | str = False,
        frozen_stages: int = 1,
        freeze_bn: bool = True,
        backbone_kwargs: dict[str, Any] | None = None,
        fpn_channels: int = 256,
        solo: SOLOSettings | dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.settings = s = settings_from(solo, SOLOSettings, "solo")
        if len(s.grid_numbers) != len(LEVEL_STRIDES) or len(s.scale_ranges) != len(LEVEL_STRIDES):
            raise ValueError(f"solo.grid_numbers and solo.scale_ranges need {len(LEVEL_STRIDES)} levels (P2-P6), "
                             f"got {len(s.grid_numbers)} and {len(s.scale_ranges)}")
        self.head_channels = s.head_channels or self.default_head_channels
        self.head_convs = s.head_convs or self.default_head_convs
        self.backbone = build_backbone(backbone, backbone_source, pretrained, None, frozen_stages, freeze_bn,
                                       backbone_kwargs)
        if self.backbone.feature_names[-4:] != ["res2", "res3", "res4", "res5"]:
            raise ValueError(f"SOLO needs backbone features res2..res5, {backbone!r} gives {self.backbone.feature_names}")
        self.fpn = FPN(self.backbone.channels[-4:], fpn_channels, extra_levels="maxpool",
                       in_strides=self.backbone.strides[-4:], init="c2_xavier")
        self.fpn_channels = fpn_channels
        self.category_convs = _branch(fpn_channels, self.head_channels, self.head_convs, s.head_norm)
        self.category = nn.Conv2d(self.head_channels, num_classes, 3, padding=1)
        _init_normal(self.category_convs)
        _init_normal(self.category, bias_prob=0.01)

    def levels(self, images: Tensor) -> list[Tensor]:
        """The five SOLO levels float ``[B, C, h_l, w_l]`` (strides 8, 8, 16, 32, 32)."""
        return solo_levels(self.fpn(self.backbone(images)[-4:]))

    def category_logits(self, grid_inputs: list[Tensor]) -> list[Tensor]:
        """Category logits per level float ``[B, K, S, S]`` from the level maps resized to the grids."""
        return [self.category(self.category_convs(x)) for x in grid_inputs]

    def to_grids(self, levels: list[Tensor]) -> list[Tensor]:
        """Each level float ``[B, C, h_l, w_l]`` bilinearly resized to its grid: ``[B, C, S_l, S_l]``."""
        return [F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)
                for x, s in zip(levels, self.settings.grid_numbers)]

    @torch.no_grad()
    def postprocess(self, outputs: GridOutputs, image_sizes: Tensor,
                    output_sizes: list[tuple[int, int]]) -> list[InstancePrediction]:
        """Instances of every image at ``output_sizes`` (SOLOv2's inference, batched over images).

        Candidates: 2x2 local maxima of the category scores above ``score_threshold``; their
        masks at 1/4 of the input, dropped when the binary mask has no more pixels than the
        level's stride, scores times maskness; matrix NMS of the best ``pre_nms_topk`` per image
        (class-aware), kept above ``update_threshold``, at most ``max_detections``; masks
        resized to the output size and thresholded.

        Args:
            outputs: from :meth:`forward`.
            image_sizes: int64 ``[B, 2]`` ``(H, W)`` of each image inside the padded input.
            output_sizes: ``(H0, W0)`` of each output.

        Returns:
            ``B`` :class:`~lightning_seg.structures.InstancePrediction` (bool masks ``[M, H0, W0]``,
            int64 labels, float32 scores), by decreasing score.
        """
        s = self.settings
        b = outputs.category_logits[0].shape[0]
        cand = solo_candidates(outputs.category_logits, outputs.strides, s.score_threshold)
        size = outputs.mask_size(0)
        # float32 whatever the autocast dtype: maskness sums up to h * w probabilities
        probs = torch.zeros(cand.cell.shape[0], *size, device=cand.cell.device)
        offset = 0
        for level, logits in enumerate(outputs.category_logits):
            cells = logits.shape[-1] * logits.shape[-2]
            here = torch.nonzero((cand.cell >= offset) & (cand.cell < offset + cells)).squeeze(1)
            if here.numel():
                p = outputs.mask_probs(level, cand.image_index[here], cand.cell[here] - offset)
                if tuple(p.shape[-2:]) != size:
                    # SOLO's coarser levels predict smaller masks: bring them to stride 4 first
                    p = F.interpolate(p[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
                probs[here] = p.float()
            offset += cells
        keep, mness = maskness(probs, cand.strides, s.mask_threshold)
        keep = torch.nonzero(keep).squeeze(1)
        probs, img = probs[keep], cand.image_index[keep]
        scores, labels = cand.scores[keep] * mness[keep], cand.labels[keep]
        groups = group_by_image(img, b)
        if groups.width == 0:
            return [InstancePrediction(masks=torch.zeros(0, *o, dtype=torch.bool, device=probs.device),
                                       labels=labels[:0], scores=scores[:0]) for o in output_sizes]
        nms = matrix_nms(groups.pad(probs > s.mask_threshold, False), groups.pad(scores), groups.pad(labels, -1),
                         groups.valid(), kernel=s.nms_kernel, sigma=s.nms_sigma, pre_nms_topk=s.pre_nms_topk,
                         score_threshold=s.update_threshold, max_detections=s.max_detections)
        # the flat row behind every padded slot, to find each survivor's probabilities
        slot_rows = groups.pad(torch.arange(img.shape[0], device=img.device), -1)
        out = []
        for i in range(b):
            ok = nms.valid[i]
            rows = slot_rows[i, nms.indices[i][ok]]
            h, w = (int(v) for v in image_sizes[i])
            masks = binary_masks_at_size(probs[rows], outputs.padded_size, (h, w), output_sizes[i], s.mask_threshold)
            out.append(InstancePrediction(masks=masks, labels=nms.labels[i][ok], scores=nms.scores[i][ok]))
        return out


class SOLO(GridInstanceModel):
    """SOLO: ``S**2`` mask channels per level (or decoupled SOLO with ``solo.decoupled``).

    The mask branch reads each level with two coordinate channels (decoupled: the x-branch
    reads x, the y-branch y), ``head_convs`` (7) 3x3 conv-GN-ReLU blocks of ``head_channels``
    (256), 2x bilinear upsampling and a 1x1 conv per level to ``S**2`` (decoupled: ``S`` per
    branch) mask logits. The category branch has the same depth on the level resized to the grid.
    Arguments as :class:`GridInstanceModel`.
    """

    def __init__(self, num_classes: int, **kwargs: Any) -> None:
        super().__init__(num_classes, **kwargs)
        s = self.settings
        self.kind = "decoupled" if s.decoupled else "solo"
        c = self.head_channels
        if s.decoupled:
            self.mask_convs_x = _branch(self.fpn_channels + 1, c, self.head_convs, s.head_norm)
            self.mask_convs_y = _branch(self.fpn_channels + 1, c, self.head_convs, s.head_norm)
            self.mask_x = nn.ModuleList(nn.Conv2d(c, g, 3, padding=1) for g in s.grid_numbers)
            self.mask_y = nn.ModuleList(nn.Conv2d(c, g, 3, padding=1) for g in s.grid_numbers)
            _init_normal(nn.ModuleList([self.mask_convs_x, self.mask_convs_y]))
            _init_normal(nn.ModuleList([self.mask_x, self.mask_y]), bias_prob=0.01)
        else:
            self.mask_convs = _branch(self.fpn_channels + 2, c, self.head_convs, s.head_norm)
            self.mask = nn.ModuleList(nn.Conv2d(c, g * g, 1) for g in s.grid_numbers)
            _init_normal(self.mask_convs)
            _init_normal(self.mask, bias_prob=0.01)

    def forward(self, images: Tensor) -> GridOutputs:
        """Images float ``[B, 3, Hp, Wp]`` in ``[0, 1]`` -> :class:`GridOutputs`."""
        levels = self.levels(images)
        masks = []
        for level, x in enumerate(levels):
            coords = coordinate_channels(x)
            if self.kind == "decoupled":
                fx = self.mask_convs_x(torch.cat([x, coords[:, :1]], 1))
                fy = self.mask_convs_y(torch.cat([x, coords[:, 1:]], 1))
                fx, fy = (F.interpolate(f, scale_factor=2, mode="bilinear", align_corners=False) for f in (fx, fy))
                masks.append(torch.cat([self.mask_x[level](fx), self.mask_y[level](fy)], 1))
            else:
                f = self.mask_convs(torch.cat([x, coords], 1))
                f = F.interpolate(f, scale_factor=2, mode="bilinear", align_corners=False)
                masks.append(self.mask[level](f))
        return GridOutputs(self.category_logits(self.to_grids(levels)), masks, None, self.kind,
                           (int(images.shape[-2]), int(images.shape[-1])))


class SOLOv2(GridInstanceModel):
    """SOLOv2: dynamic 1x1 kernels per cell applied to unified mask features.

    Kernel branch: the level with two coordinate channels, resized to the grid, ``head_convs``
    (4) 3x3 conv-GN-ReLU blocks of ``head_channels`` (512), a 3x3 conv to ``kernel_channels``
    (256); the category branch reads the same resized map without the coordinates. Mask
    features: P2-P5 through Panoptic FPN's upsampling branches (``mask_feature_channels`` 128,
    coordinates added at P5), summed at 1/4 and a 1x1 conv-GN-ReLU to ``kernel_channels``.
    Arguments as :class:`GridInstanceModel`.
    """

    kind = "solov2"
    default_head_channels = 512
    default_head_convs = 4

    def __init__(self, num_classes: int, **kwargs: Any) -> None:
        super().__init__(num_classes, **kwargs)
        s = self.settings
        c = self.head_channels
        self.kernel_convs = _branch(self.fpn_channels + 2, c, self.head_convs, s.head_norm)
        self.kernel = nn.Conv2d(c, s.kernel_channels, 3, padding=1)
        self.feature_strides = [int(v) for v in self.fpn.strides[:4]]
        self.mask_feature_heads = fpn_scale_heads(self.fpn_channels, self.feature_strides, s.mask_feature_channels,
                                                  s.head_norm, coarsest_extra_channels=2)
        self.mask_feature_out = ConvNormAct(s.mask_feature_channels, s.kernel_channels, 1, norm=s.head_norm)
        _init_normal(nn.ModuleList([self.category_convs, self.kernel_convs, self.kernel, self.mask_feature_heads,
                                    self.mask_feature_out]))

    def forward(self, images: Tensor) -> GridOutputs:
        """Images float ``[B, 3, Hp, Wp]`` in ``[0, 1]`` -> :class:`GridOutputs`."""
        pyramid = self.fpn(self.backbone(images)[-4:])
        levels = solo_levels(pyramid)
        grids = self.to_grids([torch.cat([x, coordinate_channels(x)], 1) for x in levels])
        kernels = [self.kernel(self.kernel_convs(g)) for g in grids]
        p5 = pyramid[3]
        inputs = [*pyramid[:3], torch.cat([p5, coordinate_channels(p5)], 1)]
        features = self.mask_feature_out(sum_scale_heads(inputs, self.feature_strides, self.mask_feature_heads))
        return GridOutputs(self.category_logits([g[:, :-2] for g in grids]), kernels, features, self.kind,
                           (int(images.shape[-2]), int(images.shape[-1])))

"""Region proposal network: objectness and box deltas per anchor, proposals for the RoI heads.

The batch is handled as padded tensors throughout: anchors are shared by every image, ground
truth is ``[B, G, 4]`` with a validity mask, and the proposals come out as ``[B, P, 4]`` with a
validity mask (``P`` = the post-NMS count), so matching, sampling and proposal selection have no
per-image Python loop. Proposal selection is detectron2's ``find_top_rpn_proposals``: top-k
per level, decode, clip, drop empty boxes, NMS per image and level, top-k per image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import batched_nms, box_iou

from lightning_seg.models.rcnn.anchors import AnchorGrid
from lightning_seg.ops.box_matching import (
    ignore_crowd_overlaps,
    match_boxes,
    sample_balanced,
)


@dataclass
class BoxTargets:
    """Ground truth of a batch as padded tensors (things without crowd, and the crowd regions).

    Attributes:
        boxes: float ``[B, G, 4]`` xyxy in input pixels.
        labels: int64 ``[B, G]`` contiguous class ids.
        valid: bool ``[B, G]``, False for padding.
        mask_index: int64 ``[B, G]`` row of each ground truth in :attr:`masks` (-1 for padding).
        masks: bool ``[sum G_b, Hp, Wp]`` masks of every ground truth of the batch, or None.
        crowd_boxes: float ``[B, C, 4]`` boxes of crowd regions (neither positive nor negative).
        crowd_valid: bool ``[B, C]``.
    """

    boxes: Tensor
    labels: Tensor
    valid: Tensor
    mask_index: Tensor
    masks: Tensor | None
    crowd_boxes: Tensor
    crowd_valid: Tensor


class RPNHead(nn.Module):
    """Shared 3x3 conv(s) + ReLU, then per-anchor objectness and box deltas, on every level.

    State-dict keys match torchvision's ``RPNHead`` (``conv.{i}.0``, ``cls_logits``, ``bbox_pred``).

    Args:
        in_channels: FPN width.
        num_anchors: anchors per cell ``A``.
        conv_depth: number of 3x3 convs (1: detectron2 / torchvision v1; 2: torchvision v2).
    """

    def __init__(self, in_channels: int, num_anchors: int, conv_depth: int = 1) -> None:
        super().__init__()
        self.conv = nn.Sequential(*[
            nn.Sequential(nn.Conv2d(in_channels, in_channels, 3, padding=1), nn.ReLU(inplace=True))
            for _ in range(conv_depth)
        ])
        self.cls_logits = nn.Conv2d(in_channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def forward(self, features: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per level: objectness logits float ``[B, h*w*A]`` and deltas float ``[B, h*w*A, 4]``."""
        logits, deltas = [], []
        for x in features:
            t = self.conv(x)
            b, _, h, w = t.shape
            logits.append(self.cls_logits(t).permute(0, 2, 3, 1).reshape(b, -1))
            deltas.append(self.bbox_pred(t).view(b, -1, 4, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, 4))
        return logits, deltas


def clip_boxes(boxes: Tensor, image_sizes: Tensor) -> Tensor:
    """Clip xyxy boxes ``[..., 4]`` to ``[0, W] x [0, H]``.

    ``image_sizes``: ``(H, W)`` ``[..., 2]`` broadcastable to the boxes' leading dims (``[B, 1, 2]``
    for ``[B, N, 4]`` boxes, ``[N, 2]`` for one size per box).
    """
    upper = image_sizes.to(boxes.dtype)[..., [1, 0, 1, 0]]
    return torch.minimum(boxes.clamp(min=0), upper)


def top_per_image(image_index: Tensor, num_images: int, k: int) -> tuple[Tensor, Tensor]:
    """Rank of each element within its image, for elements already sorted by decreasing score.

    Args:
        image_index: int64 ``[N]`` image of each element, in score order.
        num_images: ``B``.
        k: keep the first ``k`` of every image.

    Returns:
        ``(order, rank)``: indices into the input of the kept elements grouped by image (score
        order inside each image), and their int64 rank inside their image.
    """
    order = torch.sort(image_index, stable=True).indices
    img = image_index[order]
    counts = torch.bincount(img, minlength=num_images)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(order.numel(), device=order.device) - starts[img]
    keep = rank < k
    return order[keep], rank[keep]


class RegionProposalNetwork(nn.Module):
    """RPN head, anchors, training losses and proposal selection.

    Args:
        in_channels: FPN width.
        strides: stride of each pyramid level the RPN reads (P2-P6: 4..64).
        anchor_sizes: sizes per level.
        aspect_ratios: anchor height / width ratios.
        conv_depth: 3x3 convs in the head.
        positive_iou, negative_iou: anchor labelling thresholds (0.7 / 0.3).
        batch_size_per_image, positive_fraction: anchors sampled per image (256, half positive).
        box_weights: box coder weights (1, 1, 1, 1).
        smooth_l1_beta: box loss (0: L1, detectron2; torchvision 1/9).
        nms_threshold: NMS IoU per image and level (0.7).
        pre_nms_topk_train, pre_nms_topk_test: proposals kept per level before NMS.
        post_nms_topk_train, post_nms_topk_test: proposals kept per image after NMS.
        min_box_size: proposals with a side at or below this are dropped.
        crowd_ioa_threshold: a non-positive anchor this much inside a crowd box is ignored.
        round_anchors, anchor_stride_from_sizes: torchvision's anchor conventions (see
            :class:`~lightning_seg.models.rcnn.anchors.AnchorGrid`).
    """

    def __init__(
        self,
        in_channels: int,
        strides: Sequence[int],
        anchor_sizes: Sequence[Sequence[float]] = ((32,), (64,), (128,), (256,), (512,)),
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        conv_depth: int = 1,
        positive_iou: float = 0.7,
        negative_iou: float = 0.3,
        batch_size_per_image: int = 256,
        positive_fraction: float = 0.5,
        box_weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        smooth_l1_beta: float = 0.0,
        nms_threshold: float = 0.7,
        pre_nms_topk_train: int = 2000,
        pre_nms_topk_test: int = 1000,
        post_nms_topk_train: int = 1000,
        post_nms_topk_test: int = 1000,
        min_box_size: float = 0.0,
        crowd_ioa_threshold: float = 0.5,
        round_anchors: bool = False,
        anchor_stride_from_sizes: bool = False,
    ) -> None:
        super().__init__()
        self.anchors = AnchorGrid(anchor_sizes, aspect_ratios, strides, round_cells=round_anchors,
                                  stride_from_sizes=anchor_stride_from_sizes)
        self.head = RPNHead(in_channels, self.anchors.num_anchors, conv_depth)
        self.box_coder = BoxCoder(tuple(box_weights))
        self.positive_iou, self.negative_iou = positive_iou, negative_iou
        self.batch_size_per_image, self.positive_fraction = batch_size_per_image, positive_fraction
        self.smooth_l1_beta = smooth_l1_beta
        self.nms_threshold = nms_threshold
        self.pre_nms_topk = {True: pre_nms_topk_train, False: pre_nms_topk_test}
        self.post_nms_topk = {True: post_nms_topk_train, False: post_nms_topk_test}
        self.min_box_size = min_box_size
        self.crowd_ioa_threshold = crowd_ioa_threshold

    def forward(self, features: Sequence[Tensor], image_sizes: Tensor, padded_size: tuple[int, int],
                targets: BoxTargets | None = None) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Proposals (and, with ``targets``, the RPN losses).

        Args:
            features: pyramid levels float ``[B, C, h_l, w_l]``.
            image_sizes: int64 ``[B, 2]`` ``(H, W)`` of each image before padding.
            padded_size: ``(Hp, Wp)`` of the input batch.
            targets: ground truth for the losses (training).

        Returns:
            ``(proposals, valid, losses)``: float ``[B, P, 4]`` xyxy proposals sorted by
            decreasing objectness, bool ``[B, P]``, and ``{"loss_rpn_cls", "loss_rpn_loc"}``
            (empty without targets).
        """
        logits, deltas = self.head(features)
        sizes = [tuple(f.shape[-2:]) for f in features]
        anchors = self.anchors(sizes, padded_size)
        proposals, valid = self.select_proposals(anchors, logits, deltas, image_sizes)
        losses: dict[str, Tensor] = {}
        if targets is not None:
            iou = self.anchors.iou(targets.boxes.reshape(-1, 4), sizes, padded_size)
            losses = self.losses(torch.cat(anchors), torch.cat(logits, 1), torch.cat(deltas, 1), targets, iou)
        return proposals, valid, losses

    @torch.no_grad()
    def label_anchors(self, anchors: Tensor, targets: BoxTargets, iou: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Matched ground truth int64 ``[B, A]`` and labels int8 ``[B, A]`` (1 / 0 / -1) of every anchor.

        ``iou``: float ``[B * G, A]`` IoU of the (padded, flattened) ground truth with the anchors
        when already computed (e.g. by :meth:`AnchorGrid.iou`).
        """
        b, g = targets.valid.shape
        if iou is None:
            iou = box_iou(targets.boxes.reshape(-1, 4), anchors)
        # padded ground truth is the empty box [0, 0, 0, 0]: IoU 0 with every anchor
        matches, labels = match_boxes(iou.view(b, g, -1), targets.valid, self.positive_iou, self.negative_iou,
                                      allow_low_quality=True, padding_is_empty=True)
        labels = ignore_crowd_overlaps(labels, anchors, targets.crowd_boxes, targets.crowd_valid,
                                       self.crowd_ioa_threshold)
        return matches, labels

    def losses(self, anchors: Tensor, logits: Tensor, deltas: Tensor, targets: BoxTargets,
               iou: Tensor | None = None) -> dict[str, Tensor]:
        """Objectness BCE and box regression over the sampled anchors, both normalised by the
        number of anchors sampled per batch (detectron2)."""
        matches, labels = self.label_anchors(anchors, targets, iou)
        positive, negative = sample_balanced(labels, self.batch_size_per_image, self.positive_fraction)
        b = logits.shape[0]
        normaliser = float(self.batch_size_per_image * b)
        sampled = positive | negative
        loss_cls = F.binary_cross_entropy_with_logits(logits[sampled].float(), positive[sampled].float(),
                                                      reduction="sum") / normaliser
        bi, ai = torch.nonzero(positive, as_tuple=True)
        if targets.boxes.shape[1]:
            gt = targets.boxes[bi, matches[bi, ai]]
            target_deltas = self.box_coder.encode_single(gt, anchors[ai])
            loss_loc = F.smooth_l1_loss(deltas[bi, ai].float(), target_deltas, beta=self.smooth_l1_beta,
                                        reduction="sum") / normaliser
        else:
            loss_loc = deltas.sum() * 0.0
        return {"loss_rpn_cls": loss_cls, "loss_rpn_loc": loss_loc}

    @torch.no_grad()
    def select_proposals(self, anchors: Sequence[Tensor], logits: Sequence[Tensor], deltas: Sequence[Tensor],
                         image_sizes: Tensor) -> tuple[Tensor, Tensor]:
        """Top-k per level, decode, clip, drop empty boxes, NMS per image and level, top-k per image.

        Returns:
            float ``[B, P, 4]`` proposals (score order) and bool ``[B, P]`` validity.
        """
        b = logits[0].shape[0]
        k_pre, k_post = self.pre_nms_topk[self.training], self.post_nms_topk[self.training]
        boxes, scores, levels = [], [], []
        for level, (a, lg, d) in enumerate(zip(anchors, logits, deltas)):
            k = min(k_pre, lg.shape[1])
            top, idx = lg.topk(k, dim=1)
            # decode in float32 even under autocast, as detectron2 does
            sel = self.box_coder.decode_single(
                d.gather(1, idx[..., None].expand(-1, -1, 4)).reshape(-1, 4).float(), a[idx.reshape(-1)])
            boxes.append(sel.view(b, k, 4))
            scores.append(top.float())
            levels.append(torch.full_like(idx, level))
        boxes_t = clip_boxes(torch.cat(boxes, 1), image_sizes[:, None])
        scores_t, levels_t = torch.cat(scores, 1), torch.cat(levels, 1)
        wh = boxes_t[..., 2:] - boxes_t[..., :2]
        keep = (wh > self.min_box_size).all(-1) & torch.isfinite(boxes_t).all(-1) & torch.isfinite(scores_t)
        bi, ni = torch.nonzero(keep, as_tuple=True)
        flat_boxes, flat_scores = boxes_t[bi, ni], scores_t[bi, ni]
        # float64 offsets: (image, level) groups are separated by coordinate offsets in NMS
        kept = batched_nms(flat_boxes.double(), flat_scores.double(), bi * len(anchors) + levels_t[bi, ni], self.nms_threshold)
        order, rank = top_per_image(bi[kept], b, k_post)
        kept = kept[order]
        p = min(k_post, boxes_t.shape[1])
        proposals = boxes_t.new_zeros(b, p, 4)
        valid = torch.zeros(b, p, dtype=torch.bool, device=boxes_t.device)
        proposals[bi[kept], rank] = flat_boxes[kept]
        valid[bi[kept], rank] = True
        return proposals, valid

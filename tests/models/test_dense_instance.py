"""SOLO / SOLOv2 / YOLACT: losses against per-image reference loops written here, the mask
assembly and crop ops against plain references, and batched inference against one image at a time."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_seg.losses import (
    SOLOCriterion,
    YOLACTCriterion,
    dice_loss_per_mask,
    random_subset_per_image,
)
from lightning_seg.models.dense_instance import SOLO, YOLACT, SOLOv2
from lightning_seg.ops import (
    binary_masks_at_size,
    group_by_image,
    linear_combination_masks,
    ohem_negatives,
    solo_targets,
    yolact_box_crop,
    yolact_match,
)

K = 3
SMALL_SOLO = dict(grid_numbers=(12, 10, 8, 6, 4), scale_ranges=((1, 24), (16, 40), (32, 64), (48, 128), (96, 2048)),
                  head_channels=16, head_convs=2, mask_feature_channels=8, kernel_channels=8)
SMALL_YOLACT = dict(anchor_sizes=((12,), (24,), (48,), (96,), (160,)), head_channels=16, num_prototypes=8,
                    proto_channels=16)
TINY = dict(backbone="resnet10t", backbone_source="timm", fpn_channels=16)


def ground_truth(b: int, g: int, size: int = 64, seed: int = 0, empty: tuple[int, ...] = ()):
    """Random rectangles as padded ground truth (``empty``: images without instances)."""
    gen = torch.Generator().manual_seed(seed)
    boxes = torch.zeros(b, g, 4)
    labels = torch.randint(0, K, (b, g), generator=gen)
    valid = torch.ones(b, g, dtype=torch.bool)
    valid[list(empty)] = False
    masks, mask_index = [], torch.full((b, g), -1, dtype=torch.int64)
    for i in range(b):
        for j in range(g):
            if not valid[i, j]:
                continue
            x0, y0 = (int(v) for v in torch.randint(0, size // 2, (2,), generator=gen))
            w, h = (int(v) for v in torch.randint(8, size // 2, (2,), generator=gen))
            m = torch.zeros(size, size, dtype=torch.bool)
            m[y0 : y0 + h, x0 : x0 + w] = True
            boxes[i, j] = torch.tensor([x0, y0, x0 + w, y0 + h], dtype=torch.float32)
            mask_index[i, j] = len(masks)
            masks.append(m)
    masks_t = torch.stack(masks) if masks else torch.zeros(0, size, size, dtype=torch.bool)
    return boxes, labels, valid, masks_t, mask_index


# --- ops -------------------------------------------------------------------------------------
def test_linear_combination_masks_equals_a_1x1_conv_per_image():
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(3, 5, 7, 9, generator=gen)
    kernels = torch.randn(8, 5, generator=gen)
    image = torch.tensor([2, 0, 2, 1, 0, 2, 2, 0])
    got = linear_combination_masks(features, kernels, image)
    for n in range(8):
        want = F.conv2d(features[image[n] : image[n] + 1], kernels[n].view(1, 5, 1, 1))[0, 0]
        torch.testing.assert_close(got[n], want, rtol=1e-5, atol=1e-5)
    assert linear_combination_masks(features, kernels[:0], image[:0]).shape == (0, 7, 9)


def test_group_by_image_pads_rows_in_order():
    image = torch.tensor([1, 0, 1, 1, 3])
    groups = group_by_image(image, 4)
    assert groups.counts.tolist() == [1, 3, 0, 1] and groups.width == 3
    padded = groups.pad(torch.arange(5) * 10, fill=-1)
    want = [[10, -1, -1], [0, 20, 30], [-1, -1, -1], [40, -1, -1]]
    assert padded.tolist() == want
    assert groups.valid().tolist() == [[v >= 0 for v in row] for row in want]


def _yolact_crop_transcription(masks_hwn, boxes_rel, padding=1):
    """YOLACT's ``crop`` (layers/box_utils.py) with ``sanitize_coordinates(cast=False)``."""
    h, w, n = masks_hwn.shape

    def sanitize(_x1, _x2, size):
        _x1, _x2 = _x1 * size, _x2 * size
        x1, x2 = torch.min(_x1, _x2), torch.max(_x1, _x2)
        return torch.clamp(x1 - padding, min=0), torch.clamp(x2 + padding, max=size)

    x1, x2 = sanitize(boxes_rel[:, 0], boxes_rel[:, 2], w)
    y1, y2 = sanitize(boxes_rel[:, 1], boxes_rel[:, 3], h)
    rows = torch.arange(w, dtype=x1.dtype).view(1, -1, 1).expand(h, w, n)
    cols = torch.arange(h, dtype=x1.dtype).view(-1, 1, 1).expand(h, w, n)
    keep = (rows >= x1.view(1, 1, -1)) & (rows < x2.view(1, 1, -1)) & (cols >= y1.view(1, 1, -1)) & (cols < y2.view(1, 1, -1))
    return masks_hwn * keep.float()


def test_yolact_box_crop_equals_the_transcription():
    gen = torch.Generator().manual_seed(1)
    h, w = 11, 13
    xy = torch.rand(6, 2, generator=gen) * torch.tensor([w, h])
    wh = torch.rand(6, 2, generator=gen) * 8
    boxes = torch.cat([xy, xy + wh], 1)
    boxes[5] = torch.tensor([12.5, 10.5, 3.0, 2.0])  # corners swapped, past the edge
    want = _yolact_crop_transcription(torch.ones(h, w, 6), boxes / torch.tensor([w, h, w, h]))
    assert torch.equal(yolact_box_crop(boxes, (h, w)).float(), want.permute(2, 0, 1))


def test_binary_masks_at_size_equals_two_interpolations():
    gen = torch.Generator().manual_seed(2)
    probs = torch.rand(4, 10, 12, generator=gen)
    padded, image, out = (40, 48), (37, 41), (53, 60)
    up = F.interpolate(probs[None], size=padded, mode="bilinear", align_corners=False)[..., : image[0], : image[1]]
    want = F.interpolate(up, size=out, mode="bilinear", align_corners=False)[0] > 0.5
    got = binary_masks_at_size(probs, padded, image, out, band_budget=500)
    # float summation order may flip pixels lying within rounding of the threshold
    assert (got != want).float().mean() < 1e-3 and got.shape == (4, *out)


def test_random_subset_per_image_caps_each_image():
    image = torch.tensor([0] * 7 + [1] * 2 + [3] * 5)
    keep = random_subset_per_image(image, 4, 3, torch.Generator().manual_seed(0))
    assert torch.bincount(image[keep], minlength=4).tolist() == [3, 2, 0, 3]


# --- SOLO losses -----------------------------------------------------------------------------
def _focal_reference(logit, target, alpha=0.25, gamma=2.0):
    p = torch.sigmoid(logit)
    pt = torch.where(target > 0, p, 1 - p)
    a = torch.where(target > 0, torch.full_like(p, alpha), torch.full_like(p, 1 - alpha))
    return -(a * (1 - pt) ** gamma * torch.log(pt.clamp(min=1e-12))).sum()


def _raw_mask_probs(outputs, level, image, cell):
    """The mask of one cell from the raw outputs, as each paper defines it."""
    raw = outputs.mask_logits[level][image]
    s = outputs.category_logits[level].shape[-1]
    r, c = divmod(cell, s)
    if outputs.kind == "solo":
        return raw[cell].sigmoid()
    if outputs.kind == "decoupled":  # x-mask of the column times y-mask of the row
        return raw[c].sigmoid() * raw[s + r].sigmoid()
    kernel = raw[:, r, c].view(1, -1, 1, 1)  # SOLOv2: the cell's 1x1 kernel on the mask features
    return F.conv2d(outputs.mask_features[image : image + 1], kernel)[0, 0].sigmoid()


def _solo_loss_reference(outputs, crit, boxes, labels, valid, masks, mask_index):
    """mmdetection's SOLO(v2) loss_by_feat, one image and one level at a time."""
    focal, dice, num_pos = 0.0, 0.0, 0
    for i in range(boxes.shape[0]):
        cols = torch.nonzero(valid[i]).squeeze(1)
        targets = solo_targets(boxes[i : i + 1, cols], labels[i : i + 1, cols], valid[i : i + 1, cols], masks,
                               mask_index[i : i + 1, cols], outputs.padded_size, K, crit.grid_numbers, crit.scale_ranges)
        for level, t in enumerate(targets):
            s = t.labels.shape[-1]
            logits = outputs.category_logits[level][i]
            for cell in range(s * s):
                r, c = divmod(cell, s)
                onehot = torch.zeros(K)
                if t.labels[0, r, c] < K:
                    onehot[t.labels[0, r, c]] = 1
                    num_pos += 1
                focal = focal + _focal_reference(logits[:, r, c], onehot)
            h, w = outputs.mask_size(level)
            if outputs.kind == "solov2":
                pairs = list(zip(t.pair_instance.tolist(), t.pair_cell.tolist()))
            else:
                pairs = [(int(t.instance[0].flatten()[cell]), cell) for cell in range(s * s) if t.instance[0].flatten()[cell] >= 0]
            for col, cell in pairs:
                p = _raw_mask_probs(outputs, level, i, cell)
                gt = masks[mask_index[i, cols[col]]].float()
                q = (F.interpolate(gt[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0] >= 0.5).float()
                a = (p * q).sum()
                dice = dice + 1 - 2 * a / ((p * p).sum() + 1e-3 + (q * q).sum() + 1e-3)
    return focal / (num_pos + 1), 3 * dice / max(num_pos, 1), num_pos


@pytest.mark.parametrize("cls,extra", [(SOLOv2, {}), (SOLO, {}), (SOLO, {"decoupled": True})],
                         ids=["solov2", "solo", "solo_decoupled"])
def test_solo_losses_equal_a_per_image_loop(cls, extra):
    torch.manual_seed(0)
    settings = dict(SMALL_SOLO, **extra)
    model = cls(K, solo=settings, **TINY).eval()
    crit = SOLOCriterion(K, settings["grid_numbers"], settings["scale_ranges"])
    gt = ground_truth(2, 3, empty=())
    with torch.no_grad():
        outputs = model(torch.rand(2, 3, 64, 64))
        got = crit(outputs, *gt)
        want_cat, want_mask, num_pos = _solo_loss_reference(outputs, crit, *gt)
    assert num_pos > 0
    torch.testing.assert_close(got["loss_category"], want_cat, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got["loss_mask"], want_mask, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cls,extra", [(SOLOv2, {}), (SOLO, {}), (SOLO, {"decoupled": True})],
                         ids=["solov2", "solo", "solo_decoupled"])
def test_solo_losses_without_and_with_an_instance(cls, extra):
    torch.manual_seed(0)
    settings = dict(SMALL_SOLO, **extra)
    model = cls(K, solo=settings, **TINY)
    crit = SOLOCriterion(K, settings["grid_numbers"], settings["scale_ranges"])
    images = torch.rand(1, 3, 64, 64)
    empty = crit(model(images), *ground_truth(1, 1, empty=(0,)))
    assert empty["loss_category"] > 0 and empty["loss_mask"] == 0
    sum(empty.values()).backward()
    # the zero mask term still reaches the mask branch (DDP needs every parameter in the graph)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    one = crit(model(images), *ground_truth(1, 1))
    assert one["loss_category"] > 0 and one["loss_mask"] > 0


def test_dice_loss_per_mask_formula():
    p = torch.tensor([[[0.5, 1.0], [0.0, 0.25]]])
    q = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    want = 1 - 2 * 1.5 / ((0.25 + 1 + 0.0625) + 1e-3 + 2 + 1e-3)
    torch.testing.assert_close(dice_loss_per_mask(p, q), torch.tensor([want]))


# --- YOLACT losses ---------------------------------------------------------------------------
def _yolact_loss_reference(outputs, crit, boxes, labels, valid, masks, mask_index):
    """YOLACT's MultiBoxLoss (conf with OHEM, smooth-L1 box, lincomb_mask_loss with crop and
    emulated RoI normalisation, semantic segmentation loss), one image at a time."""
    hp, wp = outputs.padded_size
    proto_h, proto_w = outputs.prototypes.shape[-2:]
    sem_h, sem_w = outputs.semantic_logits.shape[-2:]
    conf = box = mask = sem = 0.0
    total_pos = 0
    for i in range(boxes.shape[0]):
        cols = torch.nonzero(valid[i]).squeeze(1)
        match = yolact_match(boxes[i : i + 1, cols], valid[i : i + 1, cols], outputs.anchors)
        state, gidx = match.state[0], match.gt_index[0]
        pos = state == 1
        total_pos += int(pos.sum())
        logits = outputs.class_logits[i]
        neg = ohem_negatives(logits[None], state[None], 3, background=K, min_negatives=crit.min_negatives)[0]
        for a in torch.nonzero(pos | neg).squeeze(1).tolist():
            target = int(labels[i, cols[gidx[a]]]) if pos[a] else K
            conf = conf - torch.log_softmax(logits[a], -1)[target]
        for a in torch.nonzero(pos).squeeze(1).tolist():
            g = boxes[i, cols[gidx[a]]]
            an = outputs.anchors[a]
            aw, ah = an[2] - an[0], an[3] - an[1]
            acx, acy = an[0] + aw / 2, an[1] + ah / 2
            gw, gh = g[2] - g[0], g[3] - g[1]
            codes = torch.stack([((g[0] + g[2]) / 2 - acx) / (0.1 * aw), ((g[1] + g[3]) / 2 - acy) / (0.1 * ah),
                                 torch.log(gw / aw) / 0.2, torch.log(gh / ah) / 0.2])
            box = box + F.smooth_l1_loss(outputs.box_deltas[i, a], codes, beta=1.0, reduction="sum")
            # lincomb_mask_loss: proto [h, w, k] @ coef -> sigmoid -> crop -> BCE, / box area * h * w
            proto = outputs.prototypes[i].permute(1, 2, 0)
            pred = torch.sigmoid(proto @ outputs.coefficients[i, a])[:, :, None]
            rel = (g / torch.tensor([wp, hp, wp, hp]))[None]
            pred = _yolact_crop_transcription(pred, rel)[:, :, 0]
            gt_mask = masks[mask_index[i, cols[gidx[a]]]].float()
            t = F.interpolate(gt_mask[None, None], (proto_h, proto_w), mode="bilinear", align_corners=False)[0, 0].gt(0.5).float()
            pre = F.binary_cross_entropy(torch.clamp(pred, 0, 1), t, reduction="none").sum()
            mask = mask + pre / (rel[0, 2] - rel[0, 0]) / proto_w / ((rel[0, 3] - rel[0, 1]) * proto_h) * proto_h * proto_w
        seg = torch.zeros(K, sem_h, sem_w)
        for c in cols.tolist():
            m = masks[mask_index[i, c]].float()
            down = F.interpolate(m[None, None], (sem_h, sem_w), mode="bilinear", align_corners=False)[0, 0].gt(0.5).float()
            seg[labels[i, c]] = torch.max(seg[labels[i, c]], down)
        sem = sem + F.binary_cross_entropy_with_logits(outputs.semantic_logits[i], seg, reduction="sum") / sem_h / sem_w
    n = max(total_pos, 1)
    return dict(loss_cls=conf / n, loss_box=1.5 * box / n, loss_mask=6.125 * mask / proto_h / proto_w / n,
                loss_semantic=sem / boxes.shape[0]), total_pos


def test_yolact_losses_equal_a_per_image_loop():
    torch.manual_seed(0)
    model = YOLACT(K, yolact=SMALL_YOLACT, **TINY).eval()
    crit = YOLACTCriterion(K, min_negatives=4, masks_per_image=1000)
    gt = ground_truth(2, 3, empty=())
    with torch.no_grad():
        outputs = model(torch.rand(2, 3, 64, 64))
        got = crit(outputs, *gt)
        want, total_pos = _yolact_loss_reference(outputs, crit, *gt)
    assert total_pos > 0
    for name in want:
        torch.testing.assert_close(got[name], want[name].float(), rtol=1e-4, atol=1e-5, msg=name)


def test_yolact_losses_without_and_with_an_instance():
    torch.manual_seed(0)
    model = YOLACT(K, yolact=SMALL_YOLACT, **TINY)
    crit = YOLACTCriterion(K, min_negatives=16)
    images = torch.rand(1, 3, 64, 64)
    empty = crit(model(images), *ground_truth(1, 1, empty=(0,)))
    assert empty["loss_cls"] > 0 and empty["loss_mask"] == 0 and empty["loss_box"] == 0
    sum(empty.values()).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    one = crit(model(images), *ground_truth(1, 1))
    assert all(v > 0 for v in one.values())


@pytest.mark.parametrize("square", [True, False])
def test_yolact_anchors_centred_on_cells_that_tile_the_input(square):
    model = YOLACT(K, yolact=dict(SMALL_YOLACT, square_anchors=square), **TINY)
    out = model(torch.rand(1, 3, 60, 60))  # P3..P7 of 8, 4, 2, 1, 1 cells
    a = out.anchors
    w, h = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
    root2 = math.sqrt(2)
    if square:  # YOLACT's square priors: sides size * sqrt(ar) for ar in 1, 1/2, 2
        assert torch.allclose(w, h)
        sides = sorted({round(float(v), 3) for v in w[:3]})
        assert sides == sorted(round(v, 3) for v in (12.0, 12 / root2, 12 * root2))
    else:
        assert sorted({round(math.sqrt(v)) for v in (w * h).tolist()}) == [12, 24, 48, 96, 160]
    # centres at (i + 0.5) * 60 / cells: P3 has 8 cells of 7.5 pixels, P7 one cell centred at 30
    centres = (a[:, :2] + a[:, 2:]) / 2
    torch.testing.assert_close(centres[:3], torch.full((3, 2), 3.75))
    torch.testing.assert_close(centres[-1], torch.tensor([30.0, 30.0]))


def test_yolact_mask_loss_rescales_images_with_more_positives_than_trained():
    """With one ground truth and the same coefficients on every prior, every positive has the same
    mask loss, so training 1 of them with YOLACT's positives / trained factor equals training all."""
    torch.manual_seed(0)
    model = YOLACT(K, yolact=SMALL_YOLACT, **TINY).eval()
    with torch.no_grad():
        outputs = model(torch.rand(2, 3, 64, 64))
    outputs.coefficients = torch.full_like(outputs.coefficients, 0.3)
    boxes = torch.tensor([[[14.0, 14.0, 38.0, 38.0]], [[26.0, 26.0, 50.0, 50.0]]])
    masks = torch.zeros(2, 64, 64, dtype=torch.bool)
    masks[0, 14:38, 14:38] = True
    masks[1, 26:50, 26:50] = True
    gt = (boxes, torch.tensor([[1], [2]]), torch.ones(2, 1, dtype=torch.bool), masks, torch.tensor([[0], [1]]))
    state = yolact_match(boxes, gt[2], outputs.anchors).state
    assert ((state == 1).sum(1) > 1).all()
    full = YOLACTCriterion(K, masks_per_image=1000)(outputs, *gt)["loss_mask"]
    capped = YOLACTCriterion(K, masks_per_image=1)(outputs, *gt)["loss_mask"]
    assert full > 0
    torch.testing.assert_close(capped, full, rtol=1e-5, atol=1e-6)


# --- inference -------------------------------------------------------------------------------
@pytest.mark.parametrize("cls,settings", [(SOLOv2, SMALL_SOLO), (SOLO, SMALL_SOLO), (YOLACT, SMALL_YOLACT)],
                         ids=["solov2", "solo", "yolact"])
def test_batched_inference_equals_one_image_at_a_time(cls, settings):
    torch.manual_seed(0)
    key = "yolact" if cls is YOLACT else "solo"
    loose = dict(score_threshold=0.0, max_detections=8)
    if key == "solo":
        loose.update(update_threshold=0.0, pre_nms_topk=40)
    model = cls(K, **{key: dict(settings, **loose)}, **TINY).eval()
    with torch.no_grad():
        for conv in getattr(model, "mask", []):
            conv.bias.zero_()  # SOLO's masks start empty at the 0.01 prior: centre them
    images = torch.rand(2, 3, 64, 64)
    sizes = torch.tensor([[64, 64], [50, 60]])
    outs = [(64, 64), (75, 90)]
    with torch.no_grad():
        batched = model.postprocess(model(images), sizes, outs)
        single = [model.postprocess(model(images[i : i + 1]), sizes[i : i + 1], outs[i : i + 1])[0] for i in range(2)]
    for got, want in zip(batched, single):
        assert got["masks"].shape[0] > 0 and 0 < got["masks"].float().mean() < 1
        assert torch.equal(got["labels"], want["labels"])
        torch.testing.assert_close(got["scores"], want["scores"], rtol=1e-4, atol=1e-6)
        assert (got["masks"] != want["masks"]).float().mean() < 1e-3

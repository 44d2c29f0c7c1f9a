"""SOLO grid targets against a transcription of mmdetection's ``SOLOHead._get_targets_single``
(per image, per level, per instance, with its ``center_of_mass``)."""

from __future__ import annotations

import pytest
import torch

from lightning_seg.ops.solo_targets import mask_centers, solo_targets

GRIDS = (40, 36, 24, 16, 12)
RANGES = ((1, 96), (48, 192), (96, 384), (192, 768), (384, 2048))


def center_of_mass(mask):
    h, w = mask.shape
    grid_h = torch.arange(h)[:, None]
    grid_w = torch.arange(w)
    normalizer = mask.sum()
    return (mask * grid_h).sum() / normalizer, (mask * grid_w).sum() / normalizer


def reference_targets(boxes, labels, masks, num_classes, pad_size, pos_scale=0.2, stats=None):
    areas = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    out = []
    for (lower, upper), num_grid in zip(RANGES, GRIDS):
        lab = torch.zeros(num_grid, num_grid, dtype=torch.int64) + num_classes
        owner = torch.full((num_grid, num_grid), -1, dtype=torch.int64)
        pairs = []
        inds = ((areas >= lower) & (areas <= upper)).nonzero().flatten()
        pos_w = 0.5 * (boxes[inds, 2] - boxes[inds, 0]) * pos_scale
        pos_h = 0.5 * (boxes[inds, 3] - boxes[inds, 1]) * pos_scale
        for gt, ph, pw in zip(inds.tolist(), pos_h, pos_w):
            m = masks[gt]
            if not m.sum() > 0:
                continue
            center_h, center_w = center_of_mass(m)
            div = lambda x: int(torch.div(x, 1.0 / num_grid, rounding_mode="trunc"))  # noqa: E731
            coord_w, coord_h = div(center_w / pad_size[1]), div(center_h / pad_size[0])
            top_box = max(0, div((center_h - ph) / pad_size[0]))
            down_box = min(num_grid - 1, div((center_h + ph) / pad_size[0]))
            left_box = max(0, div((center_w - pw) / pad_size[1]))
            right_box = min(num_grid - 1, div((center_w + pw) / pad_size[1]))
            top, down = max(top_box, coord_h - 1), min(down_box, coord_h + 1)
            left, right = max(coord_w - 1, left_box), min(right_box, coord_w + 1)
            lab[top: down + 1, left: right + 1] = labels[gt]
            # SOLOv2 appends one mask target per (instance, cell), row-major over the region
            pairs.extend((gt, i * num_grid + j) for i in range(top, down + 1) for j in range(left, right + 1))
            if stats is not None:
                stats["overwritten"] += int((owner[top: down + 1, left: right + 1] >= 0).sum())
            owner[top: down + 1, left: right + 1] = gt
        out.append((lab, owner, pairs))
    return out


def random_image(g, n, h, w):
    masks = torch.zeros(n, h, w, dtype=torch.bool)
    boxes = torch.zeros(n, 4)
    for j in range(n):
        side = float(torch.empty(1).uniform_(3.0, 6.5, generator=g).exp())  # 20..665 px
        bh, bw = min(h, max(2, int(side * float(torch.empty(1).uniform_(0.6, 1.4, generator=g))))), min(w, max(2, int(side)))
        y, x = int(torch.randint(0, h - bh + 1, (1,), generator=g)), int(torch.randint(0, w - bw + 1, (1,), generator=g))
        masks[j, y: y + bh, x: x + bw] = torch.rand(bh, bw, generator=g) < 0.8  # irregular: off-centre mass
        boxes[j] = torch.tensor([x, y, x + bw, y + bh], dtype=torch.float32)
    if n > 3:
        masks[2] = False  # an empty mask is skipped
    return boxes, torch.randint(0, 5, (n,), generator=g), masks


@pytest.mark.parametrize("seed", range(3))
def test_solo_targets_equal_mmdetection_loop(seed):
    g = torch.Generator().manual_seed(seed)
    h, w = 512, 640
    images = [random_image(g, n, h, w) for n in (30, 0, 12)]
    gmax = max(1, max(len(b) for b, _, _ in images))
    b = len(images)
    boxes = torch.zeros(b, gmax, 4)
    labels = torch.zeros(b, gmax, dtype=torch.int64)
    valid = torch.zeros(b, gmax, dtype=torch.bool)
    mask_index = torch.full((b, gmax), -1)
    all_masks, offset = [], 0
    for i, (bx, lab, m) in enumerate(images):
        n = len(bx)
        boxes[i, :n], labels[i, :n], valid[i, :n] = bx, lab, True
        mask_index[i, :n] = torch.arange(offset, offset + n)
        all_masks.append(m)
        offset += n
    out = solo_targets(boxes, labels, valid, torch.cat(all_masks), mask_index, (h, w), num_classes=5)
    assert len(out) == len(GRIDS)
    positives = 0
    stats = {"overwritten": 0}
    for i, (bx, lab, m) in enumerate(images):
        ref = reference_targets(bx, lab, m, 5, (h, w), stats=stats)
        for level, (ref_lab, ref_owner, ref_pairs) in enumerate(ref):
            t = out[level]
            assert torch.equal(t.labels[i], ref_lab), (i, level)
            assert torch.equal(t.instance[i], ref_owner), (i, level)
            mine = t.pair_image == i
            assert list(zip(t.pair_instance[mine].tolist(), t.pair_cell[mine].tolist())) == ref_pairs
            positives += int((ref_owner >= 0).sum())
    assert positives > 30
    # cells shared by two instances and instances positive on two levels occur
    assert stats["overwritten"] > 0
    per_level = [set(t.instance[0][t.instance[0] >= 0].tolist()) for t in out]
    assert any(a & b for a, b in zip(per_level, per_level[1:]))


def test_mask_centers_match_loop():
    g = torch.Generator().manual_seed(1)
    masks = torch.rand(4, 33, 47, generator=g) < 0.3
    masks[1] = False
    cy, cx, area = mask_centers(masks)
    for j in range(4):
        if j == 1:
            assert area[j] == 0 and torch.isnan(cy[j])
            continue
        ry, rx = center_of_mass(masks[j])
        assert cy[j] == ry and cx[j] == rx and area[j] == masks[j].sum()


def test_batch_without_ground_truth():
    out = solo_targets(torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.int64), torch.zeros(2, 0, dtype=torch.bool),
                       torch.zeros(0, 64, 64, dtype=torch.bool), torch.zeros(2, 0, dtype=torch.int64), (64, 64), 3)
    assert len(out) == len(GRIDS)
    for t, s in zip(out, GRIDS):
        assert t.labels.shape == (2, s, s) and (t.labels == 3).all() and (t.instance == -1).all()
        assert t.pair_cell.numel() == 0

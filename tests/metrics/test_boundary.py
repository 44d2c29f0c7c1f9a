"""Boundary IoU, trimap accuracy and ASSD against straightforward references (cv2 / loops / scipy)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from scipy import ndimage

from lightning_seg.metrics import AverageSurfaceDistance, BoundaryIoU, TrimapAccuracy


def _blocky_maps(rng, b, h, w, k, void=False):
    cells = rng.integers(0, k, (b, h // 4 + 1, w // 4 + 1))
    target = cells.repeat(4, 1).repeat(4, 2)[:, :h, :w]
    preds = np.where(rng.random((b, h, w)) < 0.08, rng.integers(0, k, (b, h, w)), target)
    preds = np.roll(preds, 1, axis=2)
    if void:
        target = target.copy()
        target[:, :2, :] = 255
    return preds, target


def _cv2_mask_to_boundary(mask, dilation):
    """The Boundary IoU authors' recipe: pad by one, erode ``dilation`` times with a 3x3 kernel."""
    h, w = mask.shape
    padded = cv2.copyMakeBorder(mask.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    eroded = cv2.erode(padded, np.ones((3, 3), np.uint8), iterations=dilation)[1 : h + 1, 1 : w + 1]
    return mask.astype(np.uint8) - eroded


@pytest.mark.parametrize("ratio", [0.02, 0.08])
def test_boundary_iou_matches_cv2_recipe(ratio):
    rng = np.random.default_rng(0)
    k = 4
    preds, target = _blocky_maps(rng, 2, 30, 37, k, void=True)
    metric = BoundaryIoU(k, dilation_ratio=ratio)
    metric.update(torch.from_numpy(preds), torch.from_numpy(target))
    d = max(1, int(round(ratio * np.sqrt(30**2 + 37**2))))
    inter, union = np.zeros(k), np.zeros(k)
    for i in range(2):
        valid = target[i] != 255
        for c in range(k):
            gb = _cv2_mask_to_boundary(target[i] == c, d).astype(bool) & valid
            pb = _cv2_mask_to_boundary(preds[i] == c, d).astype(bool) & valid
            inter[c] += (gb & pb).sum()
            union[c] += (gb | pb).sum()
    np.testing.assert_array_equal(metric.intersection.numpy(), inter)
    np.testing.assert_array_equal(metric.union.numpy(), union)
    assert float(metric.compute()["biou"]) == pytest.approx(np.mean(inter / union))


def test_trimap_accuracy_matches_loop():
    rng = np.random.default_rng(1)
    preds, target = _blocky_maps(rng, 2, 20, 23, 3, void=True)
    width = 2
    metric = TrimapAccuracy(band_width=width)
    metric.update(torch.from_numpy(preds), torch.from_numpy(target))
    correct = total = 0
    for i in range(2):
        for y in range(20):
            for x in range(23):
                if target[i, y, x] == 255:
                    continue
                win = target[i, max(0, y - width) : y + width + 1, max(0, x - width) : x + width + 1]
                if len(np.unique(win)) > 1:
                    total += 1
                    correct += int(preds[i, y, x] == target[i, y, x])
    assert int(metric.total) == total and int(metric.correct) == correct
    assert float(metric.compute()) == pytest.approx(correct / total)


def _scipy_surface(mask):
    eroded = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(2, 1), border_value=0)
    return mask & ~eroded


def test_assd_matches_scipy_distance_transform():
    rng = np.random.default_rng(2)
    k = 4
    preds, target = _blocky_maps(rng, 2, 24, 28, k, void=True)
    preds[0][preds[0] == 3] = 2  # class 3 missing from one prediction: unmatched
    metric = AverageSurfaceDistance(k, chunk_elems=500)  # small chunks exercise the chunking
    metric.update(torch.from_numpy(preds), torch.from_numpy(target))
    dist_sum, count, unmatched = np.zeros(k), np.zeros(k), np.zeros(k)
    for i in range(2):
        valid = target[i] != 255
        for c in range(k):
            g = target[i] == c
            p = preds[i] == c
            if g.any() != p.any():
                unmatched[c] += 1
                continue
            if not g.any():
                continue
            sg, sp = _scipy_surface(g), _scipy_surface(p)
            # ASSD as in medical-imaging toolkits: distances via the EDT of the other surface.
            dist_sum[c] += ndimage.distance_transform_edt(~sg)[sp].sum()
            dist_sum[c] += ndimage.distance_transform_edt(~sp)[sg].sum()
            count[c] += sp.sum() + sg.sum()
            assert valid.any()
    np.testing.assert_allclose(metric.distance_sum.numpy(), dist_sum, rtol=1e-12)
    np.testing.assert_array_equal(metric.point_count.numpy(), count)
    np.testing.assert_array_equal(metric.unmatched.numpy(), unmatched)


def test_perfect_prediction_scores():
    rng = np.random.default_rng(3)
    _, target = _blocky_maps(rng, 1, 16, 16, 3)
    t = torch.from_numpy(target)
    biou, assd = BoundaryIoU(3), AverageSurfaceDistance(3)
    biou.update(t, t)
    assd.update(t, t)
    assert float(biou.compute()["biou"]) == 1.0
    assert float(assd.compute()["assd"]) == 0.0

"""SemanticSegmentationMetrics against the ADE20K kit's published numbers and plain numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_seg.evaluation.semantic_io import read_class_png
from lightning_seg.metrics import SemanticSegmentationMetrics


def test_ade20k_samples_published_values(shared_data):
    root = shared_data / "ade20k_sceneparsing_sample" / "sampleData"
    present = SemanticSegmentationMetrics(150, average="present")
    every = SemanticSegmentationMetrics(150, average="all")
    for ann in sorted((root / "annotations").glob("*.png")):
        gt = read_class_png(ann, reduce_zero_label=True)[None]
        pred = read_class_png(root / "predictions" / ann.name, reduce_zero_label=True)[None]
        present.update(pred, gt)
        every.update(pred, gt)
    p, a = present.compute(), every.compute()
    assert float(p["pixel_acc"]) == 1.0 and float(a["pixel_acc"]) == 1.0
    assert float(p["mIoU"]) == pytest.approx(1.0)
    # The kit's README: "Mean IoU over 150 classes: 0.1000" (15 classes present).
    assert float(a["mIoU"]) == pytest.approx(0.1)
    assert int(torch.isfinite(p["per_class_iou"]).sum()) == 15


def _numpy_reference(preds, target, k, ignore):
    cm = np.zeros((k, k), dtype=np.int64)
    for t, p in zip(target.ravel(), preds.ravel()):
        if t == ignore:
            continue
        cm[t, p] += 1
    tp = np.diag(cm).astype(float)
    gt, pr = cm.sum(1), cm.sum(0)
    union = gt + pr - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / union
        acc = tp / gt
    freq = gt / cm.sum()
    return {
        "confmat": cm,
        "pixel_acc": tp.sum() / cm.sum(),
        "mIoU": np.nanmean(iou),
        "mAcc": np.nanmean(acc),
        "mIoU_all": np.nan_to_num(iou).mean(),
        "mAcc_all": np.nan_to_num(acc).mean(),
        "fwIoU": (freq * np.nan_to_num(iou)).sum(),
        "iou": iou,
    }


@pytest.mark.parametrize("seed", [0, 1])
def test_random_maps_match_numpy(seed):
    rng = np.random.default_rng(seed)
    k = 7
    target = rng.integers(0, k - 1, (3, 17, 19))  # class 6 never in ground truth
    target[rng.random(target.shape) < 0.1] = 255
    preds = np.where(rng.random(target.shape) < 0.6, np.where(target == 255, 0, target), rng.integers(0, k - 2, target.shape))
    ref = _numpy_reference(preds, target, k, 255)
    present = SemanticSegmentationMetrics(k)
    every = SemanticSegmentationMetrics(k, average="all")
    for i in range(3):  # several updates accumulate one matrix
        present.update(torch.from_numpy(preds[i : i + 1]), torch.from_numpy(target[i : i + 1]))
        every.update(torch.from_numpy(preds[i : i + 1]), torch.from_numpy(target[i : i + 1]))
    p, a = present.compute(), every.compute()
    np.testing.assert_array_equal(present.confmat[:, :k].numpy(), ref["confmat"])
    for key in ("pixel_acc", "mIoU", "mAcc", "fwIoU"):
        assert float(p[key]) == pytest.approx(ref[key], abs=1e-12), key
    assert float(a["mIoU"]) == pytest.approx(ref["mIoU_all"], abs=1e-12)
    assert float(a["mAcc"]) == pytest.approx(ref["mAcc_all"], abs=1e-12)
    np.testing.assert_allclose(p["per_class_iou"].numpy(), ref["iou"], equal_nan=True)


def test_predicted_void_is_a_miss():
    m = SemanticSegmentationMetrics(2)
    m.update(torch.tensor([[[0, 255], [1, 1]]]), torch.tensor([[[0, 0], [1, 255]]]))
    out = m.compute()
    assert float(out["pixel_acc"]) == pytest.approx(2 / 3)
    assert out["per_class_iou"].tolist() == pytest.approx([0.5, 1.0])


def test_logits_are_argmaxed():
    logits = torch.randn(2, 4, 5, 5)
    target = torch.randint(0, 4, (2, 5, 5))
    a, b = SemanticSegmentationMetrics(4), SemanticSegmentationMetrics(4)
    a.update(logits, target)
    b.update(logits.argmax(1), target)
    assert torch.equal(a.confmat, b.confmat)


def test_matches_torchmetrics_jaccard():
    from torchmetrics.classification import MulticlassJaccardIndex

    rng = np.random.default_rng(4)
    target = torch.from_numpy(rng.integers(0, 5, (2, 16, 16)))
    target[0, :3] = 255
    preds = torch.from_numpy(rng.integers(0, 5, (2, 16, 16)))
    ours = SemanticSegmentationMetrics(5)
    ours.update(preds, target)
    theirs = MulticlassJaccardIndex(num_classes=5, ignore_index=255, average="macro")
    theirs.update(preds, target)
    assert float(ours.compute()["mIoU"]) == pytest.approx(float(theirs.compute()), abs=1e-6)


def test_bad_values_raise():
    m = SemanticSegmentationMetrics(3)
    with pytest.raises(ValueError, match=r"target holds values \[7\]"):
        m.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 7))
    with pytest.raises(ValueError, match=r"preds hold values \[3\]"):
        m.update(torch.full((1, 2, 2), 3), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="average"):
        SemanticSegmentationMetrics(3, average="micro")  # type: ignore[arg-type]

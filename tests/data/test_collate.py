"""collate: padding of images and targets, and original-resolution evaluation targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_seg.data.base import Record, record_to_sample, semantic_from_segments
from lightning_seg.data.transforms import build_augmentation
from lightning_seg.structures import IGNORE_INDEX, check_sample, collate, empty_sample
from tests.box_reference import reference_boxes


def test_pads_to_divisibility_with_void_and_false():
    a, b = empty_sample(30, 40), empty_sample(50, 20)
    a["masks"] = torch.ones(1, 30, 40, dtype=torch.bool)
    a["labels"] = torch.tensor([2])
    a["iscrowd"] = a["is_thing"] = torch.tensor([False])
    a["semantic"][:] = 2
    a["boxes"] = torch.tensor([[0.0, 0.0, 40.0, 30.0]])
    batch = collate([a, b], size_divisibility=32)
    assert batch["images"].shape == (2, 3, 64, 64)
    assert batch["pixel_mask"][0, :30, :40].all() and not batch["pixel_mask"][0, 30:].any()
    t = batch["targets"][0]
    assert t["masks"].shape == (1, 64, 64) and not t["masks"][0, 30:].any() and t["masks"][0, :30, :40].all()
    assert (t["semantic"][30:] == IGNORE_INDEX).all() and (t["semantic"][:30, :40] == 2).all()
    assert t["image_size"] == t["target_size"] == (30, 40)
    # padding at the bottom/right leaves the boxes where the masks are
    assert t["boxes"].tolist() == [[0.0, 0.0, 40.0, 30.0]]
    np.testing.assert_array_equal(t["boxes"].numpy(), reference_boxes(t["masks"]))
    assert batch["targets"][1]["boxes"].shape == (0, 4)


def test_image_only_eval_keeps_original_targets():
    h, w = 60, 90
    masks = np.zeros((1, h, w), bool)
    masks[0, 10:20, 10:30] = True
    labels = np.array([1])
    rec = Record(image=np.zeros((h, w, 3), np.uint8), masks=masks, labels=labels, iscrowd=np.zeros(1, bool),
                 is_thing=np.ones(1, bool), semantic=semantic_from_segments(masks, labels, (h, w)),
                 image_id=3, orig_size=(h, w))
    aug = build_augmentation("resize", 30, image_only=True)  # shortest edge 60 -> 30
    out = record_to_sample(aug(rec))
    assert out["image"].shape == (3, 30, 45)
    assert out["masks"].shape == (1, 60, 90) and torch.equal(out["masks"], torch.from_numpy(masks))
    # boxes are in the frame of the (original-resolution) masks, not of the resized image
    assert out["boxes"].dtype == torch.float32 and out["boxes"].tolist() == [[10.0, 10.0, 30.0, 20.0]]
    other = record_to_sample(build_augmentation("resize", 30, image_only=True)(
        Record(**{**rec, "image": np.zeros((40, 40, 3), np.uint8), "masks": masks[:, :40, :40],
                  "semantic": rec["semantic"][:40, :40], "orig_size": (40, 40)})))
    batch = collate([out, other], size_divisibility=16)
    assert batch["images"].shape == (2, 3, 32, 48)
    t0, t1 = batch["targets"]
    assert t0["image_size"] == (30, 45) and t0["target_size"] == (60, 90)
    assert t1["image_size"] == (30, 30) and t1["target_size"] == (40, 40)
    # targets are padded among themselves, at the original resolution
    assert t0["masks"].shape == t1["masks"].shape == (1, 60, 90)
    assert (t1["semantic"][40:] == IGNORE_INDEX).all()
    assert t0["boxes"].tolist() == [[10.0, 10.0, 30.0, 20.0]] and t1["boxes"].tolist() == [[10.0, 10.0, 30.0, 20.0]]


def test_check_sample_rejects_bad_boxes():
    s = empty_sample(8, 10)
    s["masks"] = torch.zeros(2, 8, 10, dtype=torch.bool)
    s["masks"][0, 1:3, 2:5] = True
    s["labels"] = torch.tensor([0, 1])
    s["iscrowd"] = s["is_thing"] = torch.zeros(2, dtype=torch.bool)
    s["boxes"] = torch.tensor([[2.0, 1.0, 5.0, 3.0], [0.0, 0.0, 0.0, 0.0]])
    check_sample(s, 2)
    for bad in (s["boxes"].double(), s["boxes"][:1], s["boxes"][:, :3], s["boxes"].long()):
        with pytest.raises(ValueError, match=r"item 4: boxes must be float32 \[2,4\]"):
            check_sample({**s, "boxes": bad}, 2, "item 4")
    no_boxes = {k: v for k, v in s.items() if k != "boxes"}
    with pytest.raises(ValueError, match="item 4: no 'boxes'"):
        check_sample(no_boxes, 2, "item 4")  # type: ignore[arg-type]

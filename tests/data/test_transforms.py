"""Augmentations keep image, masks and semantic map aligned — checked on pixels, not shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_seg.data.base import Record, record_to_sample, semantic_from_segments
from lightning_seg.data.transforms import build_augmentation
from lightning_seg.structures import IGNORE_INDEX, check_sample
from tests.box_reference import reference_boxes


def _record(h=64, w=80, seed=0) -> Record:
    """An image whose colour encodes the segment: pixel colour = palette[label] per segment."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((4, h, w), bool)
    masks[0, 5:25, 5:30] = True
    masks[1, 30:60, 40:75] = True
    masks[2, 40:50, 5:15] = True
    masks[3, :3, :] = True  # a thin strip that a crop may remove
    labels = np.array([0, 1, 2, 3])
    semantic = semantic_from_segments(masks, labels, (h, w))
    palette = np.array([[250, 0, 0], [0, 250, 0], [0, 0, 250], [250, 250, 0]], np.uint8)
    image = rng.integers(0, 20, (h, w, 3)).astype(np.uint8)  # dark background = void
    for m, c in zip(masks, labels):
        image[m] = palette[c]
    return Record(
        image=image, masks=masks, labels=labels, iscrowd=np.array([False, True, False, False]),
        is_thing=np.array([True, True, False, False]), semantic=semantic, image_id=7, orig_size=(h, w),
    )


PALETTE = np.array([[250, 0, 0], [0, 250, 0], [0, 0, 250], [250, 250, 0]])


def _check_aligned(out: Record) -> None:
    img = out["image"].astype(int)
    sem = out["semantic"]
    masks = out["masks"]
    assert masks.dtype == bool and masks.shape[1:] == img.shape[:2] == sem.shape
    # each surviving mask: its interior pixels have its class colour and its semantic label
    for m, c in zip(masks, out["labels"]):
        assert m.any()
        # erode by three pixels: nearest (masks) and bilinear (image) resampling may differ by a
        # pixel, and a crop may cut a mask next to its own (blurred) edge, so the image border
        # erodes too
        inner = np.pad(m, 1)
        for _ in range(3):
            e = inner.copy()
            e[1:] &= inner[:-1]
            e[:-1] &= inner[1:]
            e[:, 1:] &= inner[:, :-1]
            e[:, :-1] &= inner[:, 1:]
            inner = e
        inner = inner[1:-1, 1:-1]
        if inner.sum() < 10:
            continue
        # every segment was painted one flat colour over a noisy void; a mask that drifted
        # from its image covers several colours (photometric changes keep a flat area flat)
        colors = img[inner]
        assert (np.abs(colors - np.median(colors, 0)).sum(1) <= 40).mean() > 0.9, f"class {c} moved"
        assert (sem[inner] == c).all()
    # semantic map equals the painted masks, and void everywhere else
    assert np.array_equal(sem, semantic_from_segments(masks, out["labels"], sem.shape))
    covered = masks.any(0)
    assert (sem[~covered] == IGNORE_INDEX).all()


@pytest.mark.parametrize("preset", ["lsj", "ade20k", "resize", "flip"])
def test_presets_keep_alignment(preset):
    torch.manual_seed(0)  # the pipelines seed themselves from torch's seed
    rec = _record()
    for trial in range(8):
        out = build_augmentation(preset, 48)(rec)
        _check_aligned(out)
        if preset in ("lsj", "ade20k"):
            assert out["image"].shape[:2] == (48, 48)


def test_flags_follow_segments_and_vanished_dropped():
    rec = _record()
    # a crop below the top strip removes segment 3 (label 3), which must be dropped with its flags
    aug = build_augmentation([{"type": "Crop", "x_min": 0, "y_min": 10, "x_max": 80, "y_max": 64}])
    out = aug(rec)
    assert out["labels"].tolist() == [0, 1, 2]
    assert out["iscrowd"].tolist() == [False, True, False]
    assert out["is_thing"].tolist() == [True, True, False]
    _check_aligned(out)


def test_flip_moves_pixels_exactly():
    rec = _record()
    out = build_augmentation([{"type": "HorizontalFlip", "p": 1.0}])(rec)
    assert np.array_equal(out["image"], rec["image"][:, ::-1])
    assert np.array_equal(out["masks"], rec["masks"][:, :, ::-1])
    assert np.array_equal(out["semantic"], rec["semantic"][:, ::-1])


def test_padding_is_void_not_a_class():
    rec = _record(h=20, w=20)
    rec["semantic"][:] = 0  # every pixel labelled class 0
    out = build_augmentation([{"type": "PadIfNeeded", "min_height": 30, "min_width": 30, "position": "top_left"}])(rec)
    assert (out["semantic"][20:, :] == IGNORE_INDEX).all() and (out["semantic"][:, 20:] == IGNORE_INDEX).all()
    assert not out["masks"][:, 20:, :].any()


def test_category_aware_crop_avoids_dominant_class():
    torch.manual_seed(1)
    h = w = 100
    masks = np.zeros((2, h, w), bool)
    masks[0] = True
    masks[0, 60:, 60:] = False
    masks[1, 60:, 60:] = True
    labels = np.array([0, 1])
    rec = Record(image=np.zeros((h, w, 3), np.uint8), masks=masks, labels=labels, iscrowd=np.zeros(2, bool),
                 is_thing=np.zeros(2, bool), semantic=semantic_from_segments(masks, labels, (h, w)),
                 image_id=0, orig_size=(h, w))
    aug = build_augmentation([{"type": "CategoryAwareRandomCrop", "height": 30, "width": 30,
                               "cat_max_ratio": 0.75, "max_tries": 200}])
    for _ in range(5):
        out = aug(rec)
        counts = np.bincount(out["semantic"].ravel(), minlength=2)[:2]
        assert counts.max() / counts.sum() < 0.75


def test_empty_sample_and_unknown_spec():
    rec = _record()
    rec.update(masks=np.zeros((0, 64, 80), bool), labels=np.zeros(0, np.int64), iscrowd=np.zeros(0, bool),
               is_thing=np.zeros(0, bool), semantic=np.full((64, 80), IGNORE_INDEX))
    out = build_augmentation("lsj", 32)(rec)
    assert out["masks"].shape == (0, 32, 32) and (out["semantic"] == IGNORE_INDEX).all()
    with pytest.raises(ValueError, match="unknown augmentation type 'NoSuchThing'"):
        build_augmentation([{"type": "NoSuchThing"}])
    with pytest.raises(ValueError, match="unknown augmentation preset"):
        build_augmentation("nope")


@pytest.mark.parametrize(
    "spec",
    [
        "lsj",
        "ade20k",
        [{"type": "Rotate", "limit": 40, "p": 1.0}],
        [{"type": "Affine", "scale": [0.6, 1.4], "rotate": [-30, 30], "shear": [-10, 10], "p": 1.0}],
        [{"type": "Crop", "x_min": 20, "y_min": 10, "x_max": 70, "y_max": 50}, {"type": "VerticalFlip", "p": 1.0}],
    ],
    ids=["lsj", "ade20k", "rotate", "affine", "crop_vflip"],
)
def test_sample_boxes_follow_the_augmented_masks(spec):
    torch.manual_seed(0)
    rec = _record()
    moved = 0
    for _ in range(6):
        sample = record_to_sample(build_augmentation(spec, 48)(rec))
        check_sample(sample, 4)
        boxes = sample["boxes"].numpy()
        np.testing.assert_array_equal(boxes, reference_boxes(sample["masks"].numpy()))
        h, w = sample["masks"].shape[1:]
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        moved += not np.array_equal(boxes, reference_boxes(rec["masks"])[: len(boxes)])
    assert moved  # the transforms did change the boxes, so the check above is not vacuous


def test_augmentation_is_reproducible_from_the_torch_seed():
    """albumentations ignores the global seeds; the pipeline seeds itself from torch's, so a
    seeded run repeats and another seed draws differently."""

    def draws(seed: int) -> list:
        torch.manual_seed(seed)
        aug = build_augmentation("lsj", 48)
        rec = _record()
        return [aug(rec)["image"] for _ in range(4)]

    a, b, c = draws(3), draws(3), draws(4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    assert not np.array_equal(a[0], a[1])  # successive calls draw afresh


class _Augmented(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.aug = build_augmentation("lsj", 48)
        self.rec = _record()

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> np.ndarray:
        return self.aug(self.rec)["image"]


def test_augmentation_in_dataloader_workers_repeats_with_the_seed():
    def epochs(seed: int) -> list:
        torch.manual_seed(seed)
        loader = torch.utils.data.DataLoader(_Augmented(), batch_size=4, num_workers=1)
        return [next(iter(loader)) for _ in range(2)]  # each epoch starts fresh workers

    a, b = epochs(0), epochs(0)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], a[1])  # a new epoch draws new augmentations


def test_resize_shortest_edge_picks_a_short_side_and_bounds_the_long_side():
    from lightning_seg.data.transforms import ResizeShortestEdge

    t = ResizeShortestEdge((64, 80), max_size=150)
    t.set_random_seed(0)
    shorts = set()
    for _ in range(20):
        out = t(image=np.zeros((100, 120, 3), np.uint8), mask=np.zeros((100, 120), np.uint8))
        h, w = out["image"].shape[:2]
        assert out["mask"].shape == (h, w) and h in (64, 80) and w == int(h * 1.2 + 0.5)
        shorts.add(h)
    assert shorts == {64, 80}
    capped = ResizeShortestEdge((100,), max_size=150)(image=np.zeros((50, 200, 3), np.uint8))["image"]
    assert capped.shape[:2] == (38, 150)
    with pytest.raises(ValueError, match="sample_style"):
        ResizeShortestEdge((1, 2), sample_style="nope")

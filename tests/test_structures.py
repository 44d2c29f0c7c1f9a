"""masks_to_boxes against a pixel loop and pycocotools, on random masks with empty ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util

from lightning_seg.structures import masks_to_boxes
from tests.box_reference import reference_boxes


def _random_masks(seed: int, n: int, h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    density = rng.choice([0.002, 0.02, 0.3], size=(n, 1, 1))
    masks = rng.random((n, h, w)) < density
    masks[0] = False  # empty
    masks[1] = True  # full
    masks[2] = False
    masks[2, h - 1, w - 1] = True  # one pixel in the last row and column
    masks[3] = False
    masks[3, 0, 0] = True  # one pixel at the origin
    return masks


@pytest.mark.parametrize("shape", [(12, 17, 23), (9, 1, 30), (8, 40, 1), (6, 64, 48)])
def test_masks_to_boxes_equals_loop_and_pycocotools(shape):
    masks = _random_masks(sum(shape), *shape)
    ours = masks_to_boxes(torch.from_numpy(masks))
    assert ours.dtype == torch.float32 and ours.shape == (shape[0], 4)
    np.testing.assert_array_equal(ours.numpy(), reference_boxes(masks))
    rles = mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    xywh = torch.cat([ours[:, :2], ours[:, 2:] - ours[:, :2]], dim=1)
    np.testing.assert_array_equal(xywh.numpy(), mask_util.toBbox(rles))
    assert (ours[0] == 0).all() and ours[1].tolist() == [0, 0, shape[2], shape[1]]


def test_masks_to_boxes_no_masks_and_bad_shape():
    assert masks_to_boxes(torch.zeros(0, 5, 7, dtype=torch.bool)).shape == (0, 4)
    assert masks_to_boxes(torch.zeros(3, 0, 7, dtype=torch.bool)).tolist() == [[0.0] * 4] * 3
    with pytest.raises(ValueError, match=r"\[N,H,W\]"):
        masks_to_boxes(torch.zeros(5, 7, dtype=torch.bool))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_masks_to_boxes_on_cuda_equals_cpu():
    masks = torch.from_numpy(_random_masks(3, 20, 33, 45))
    boxes = masks_to_boxes(masks.cuda())
    assert boxes.device.type == "cuda"
    assert torch.equal(boxes.cpu(), masks_to_boxes(masks))

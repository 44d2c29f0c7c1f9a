"""Band-wise two-step resize against detectron2-style F.interpolate calls."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_seg.ops.mask_resize import resize_rows, resize_taps, row_bands


@pytest.mark.parametrize(
    "padded,image,orig",
    [((64, 48), (60, 41), (120, 77)), ((64, 48), (64, 48), (31, 17)), ((16, 12), (16, 12), (16, 12))],
)
def test_bands_equal_upsample_crop_resize(padded, image, orig):
    x = torch.randn(3, 16, 12, generator=torch.Generator().manual_seed(0))
    ref = F.interpolate(x[None], size=padded, mode="bilinear", align_corners=False)[0][:, : image[0], : image[1]]
    ref = F.interpolate(ref[None], size=orig, mode="bilinear", align_corners=False)[0]
    ty = resize_taps(16, orig[0], padded[0], image[0])
    tx = resize_taps(12, orig[1], padded[1], image[1])
    bands = row_bands(orig[0], row_cost=3 * orig[1], budget=3 * orig[1] * 7)
    assert len(bands) == -(-orig[0] // 7)
    out = torch.cat([resize_rows(x, ty, tx, rows) for rows in bands], dim=1)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=2e-5)


def test_bad_sizes():
    with pytest.raises(ValueError, match="valid_size"):
        resize_taps(4, 8, padded_size=16, valid_size=20)

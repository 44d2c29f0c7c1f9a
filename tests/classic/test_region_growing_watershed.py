"""Region growing against scikit-image's flood and a plain breadth-first loop; watershed on
constructed basins whose answer is known."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_seg.classic import (
    distance_peak_markers,
    gradient_magnitude,
    gradient_minima_seeds,
    grid_seeds,
    h_minima_markers,
    region_growing,
    watershed_segments,
)

skimage_segmentation = pytest.importorskip("skimage.segmentation", reason="scikit-image is not installed")

IMAGE = "ade20k_sceneparsing_sample/sampleData/images/ADE_val_00000002.jpg"


def grey(root, size=(80, 60)) -> torch.Tensor:
    im = Image.open(root / IMAGE).convert("L").resize(size)
    return torch.from_numpy(np.array(im)).long()


@pytest.mark.parametrize("connectivity", [1, 2])
@pytest.mark.parametrize("method", ["flood", "flood_fallback", "label", "dilation"])
def test_seed_mode_equals_skimage_flood_on_a_real_image(shared_data, connectivity, method, monkeypatch):
    if method == "flood_fallback":  # scikit-image's kernel not importable: flood itself per seed
        monkeypatch.setattr(sys.modules["lightning_seg.classic.region_growing"], "_flood_kernel", lambda: None)
        method = "flood"
    levels = grey(shared_data)[None]
    seeds = grid_seeds(60, 80, 20)[None]
    labels = region_growing(levels, seeds, tolerance=12, connectivity=connectivity, method=method)
    claimed = torch.zeros_like(labels[0], dtype=torch.bool)
    for s, (y, x) in enumerate(seeds[0].tolist()):
        flood = torch.from_numpy(skimage_segmentation.flood(levels[0].numpy().astype(np.uint8), (y, x), tolerance=12,
                                                           connectivity=connectivity))
        # the first seed holding a pixel names it: seed s owns its flood minus earlier seeds' floods
        assert torch.equal(labels[0] == s + 1, flood & ~claimed)
        claimed |= flood
    assert (labels[0] == 0).sum() == (~claimed).sum()


def loop_mean_growing(img: np.ndarray, seed: tuple[int, int], tol: float, connectivity: int) -> np.ndarray:
    """Ring by ring: the neighbours of the region within tol of the region's current mean join."""
    h, w = img.shape[:2]
    steps = [(-1, 0), (1, 0), (0, -1), (0, 1)] + ([(-1, -1), (-1, 1), (1, -1), (1, 1)] if connectivity == 2 else [])
    region = {seed}
    while True:
        mean = np.mean([img[p] for p in region], axis=0)
        ring = set()
        for y, x in region:
            for dy, dx in steps:
                q = (y + dy, x + dx)
                if 0 <= q[0] < h and 0 <= q[1] < w and q not in region and np.all(np.abs(img[q] - mean) <= tol):
                    ring.add(q)
        if not ring:
            break
        region |= ring
    out = np.zeros((h, w), dtype=bool)
    for p in region:
        out[p] = True
    return out


@pytest.mark.parametrize("connectivity", [1, 2])
def test_mean_mode_equals_a_breadth_first_loop_on_colours(shared_data, connectivity):
    im = Image.open(shared_data / IMAGE).convert("RGB").resize((40, 30))
    rgb = np.array(im).astype(np.float64)
    image = torch.from_numpy(rgb).permute(2, 0, 1)[None]
    seeds = torch.tensor([[[5, 5], [20, 30]]])
    labels = region_growing(image, seeds, tolerance=25, connectivity=connectivity, mode="mean")
    first = loop_mean_growing(rgb, (5, 5), 25, connectivity)
    second = loop_mean_growing(rgb, (20, 30), 25, connectivity) & ~first
    assert torch.equal(labels[0] == 1, torch.from_numpy(first))
    assert torch.equal(labels[0] == 2, torch.from_numpy(second))
    assert first.sum() > 1


def test_region_growing_errors_and_gradient_seeds():
    levels = torch.zeros(2, 10, 12)
    levels[:, :, 6:] = 100
    seeds = gradient_minima_seeds(levels, 2, min_distance=2)
    assert seeds.shape == (2, 2, 2)
    # one seed per flat half (each plateau once), at its first pixel, the left half first
    assert seeds[0].tolist() == [[0, 0], [0, 6]] and torch.equal(seeds[0], seeds[1])
    labels = region_growing(levels, seeds, tolerance=0)
    assert torch.equal(labels[0], torch.where(levels[0] > 0, 2, 1))
    # more seeds than plateaus: the flattest one repeats
    assert gradient_minima_seeds(levels[:1], 3, min_distance=2)[0].tolist() == [[0, 0], [0, 6], [0, 0]]
    with pytest.raises(ValueError, match="inside the 10x12 image"):
        region_growing(levels, torch.tensor([[10, 0]]), tolerance=1)
    with pytest.raises(ValueError, match="connectivity"):
        region_growing(levels, torch.tensor([[0, 0]]), tolerance=1, connectivity=3)
    with pytest.raises(ValueError, match="dilation method only"):
        region_growing(levels, torch.tensor([[0, 0]]), tolerance=1, mode="mean", method="label")
    with pytest.raises(ValueError, match="one channel"):
        region_growing(levels[:, None].expand(2, 3, 10, 12), torch.tensor([[0, 0]]), tolerance=1, method="flood")


def test_watershed_pipeline_equals_skimage_on_a_real_image(shared_data):
    from scipy import ndimage
    from skimage.filters import sobel
    from skimage.morphology import h_minima

    levels = torch.stack([grey(shared_data), grey(shared_data).flip(1)])
    grad = gradient_magnitude(levels)
    markers = h_minima_markers(grad, 2.0)
    for compactness in (0.0, 0.01):
        basins = watershed_segments(grad, markers, compactness=compactness)
        for i in range(2):
            g = sobel(levels[i].numpy().astype(np.float64))
            m = ndimage.label(h_minima(g, 2.0))[0]
            assert np.array_equal(grad[i].numpy(), g) and np.array_equal(markers[i].numpy(), m)
            assert np.array_equal(basins[i].numpy(), skimage_segmentation.watershed(g, m, compactness=compactness))
    assert len(torch.unique(basins[0])) > 5


def test_watershed_splits_touching_discs_at_their_neck():
    yy, xx = np.mgrid[:40, :70]
    left = (yy - 20) ** 2 + (xx - 22) ** 2 < 15 ** 2
    right = (yy - 20) ** 2 + (xx - 47) ** 2 < 15 ** 2
    fg = torch.from_numpy(left | right)[None]
    markers = distance_peak_markers(fg, min_distance=8)
    assert len(torch.unique(markers)) == 3  # background + one peak per disc
    dist = torch.from_numpy(__import__("scipy.ndimage", fromlist=["x"]).distance_transform_edt(fg[0].numpy()))[None]
    basins = watershed_segments(-dist, markers, mask=fg)
    a, b = int(basins[0, 20, 22]), int(basins[0, 20, 47])
    assert a != b and a > 0 and b > 0
    # every disc pixel away from the neck lies in its own disc's basin
    only_left = torch.from_numpy(left & ~right & (xx < 30))
    only_right = torch.from_numpy(right & ~left & (xx > 40))
    assert (basins[0][only_left] == a).all() and (basins[0][only_right] == b).all()
    assert (basins[0][~fg[0]] == 0).all()


def test_h_minima_markers_on_the_gradient_find_the_flat_regions():
    levels = torch.zeros(1, 30, 30)
    levels[0, :, 15:] = 200.0  # two flat halves
    grad = gradient_magnitude(levels)
    markers = h_minima_markers(grad, h=0.5)
    basins = watershed_segments(grad, markers)
    assert len(torch.unique(basins)) == 2
    assert int(basins[0, 15, 2]) != int(basins[0, 15, 27])

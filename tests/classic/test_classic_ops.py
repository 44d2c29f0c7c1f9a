"""Classic baselines against scikit-image, scikit-learn and scipy on real sample images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_seg.classic import (
    assign_clusters_to_classes,
    cluster_confusion,
    grey_levels,
    kmeans_plus_plus,
    level_histograms,
    lloyd_kmeans,
    map_clusters,
    multi_otsu_thresholds,
    otsu_thresholds,
    pixel_features,
    threshold_classes,
)

skimage_filters = pytest.importorskip("skimage.filters", reason="scikit-image (the reference extra) is not installed")
sklearn_cluster = pytest.importorskip("sklearn.cluster", reason="scikit-learn (the reference extra) is not installed")

IMAGES = [
    "ade20k_sceneparsing_sample/sampleData/images/ADE_val_00000001.jpg",
    "ade20k_sceneparsing_sample/sampleData/images/ADE_val_00000002.jpg",
    "ade20k_sceneparsing_sample/sampleData/images/ADE_val_00000003.jpg",
    "panopticapi_sample/sample_data/input_images/000000142238.jpg",
    "panopticapi_sample/sample_data/input_images/000000439180.jpg",
    "hf_coco_000000039769/000000039769.png",
]


def load(root, rel: str, size: tuple[int, int] | None = None) -> torch.Tensor:
    im = Image.open(root / rel).convert("RGB")
    if size is not None:
        im = im.resize(size)
    return torch.from_numpy(np.array(im)).permute(2, 0, 1)


@pytest.mark.parametrize("backend", ["library", "tensor"])
@pytest.mark.parametrize("channel", [None, 0, 2])
def test_otsu_and_multi_otsu_equal_skimage_on_real_images(shared_data, channel, backend):
    for rel in IMAGES:
        levels = grey_levels(load(shared_data, rel)[None], channel)
        hist = level_histograms(levels, backend=backend)
        grey = levels[0].numpy().astype(np.uint8)
        assert int(otsu_thresholds(hist, backend)[0]) == int(skimage_filters.threshold_otsu(grey)), rel
        for classes in (3, 4):
            want = skimage_filters.threshold_multiotsu(grey, classes).tolist()
            assert multi_otsu_thresholds(hist, classes, backend=backend)[0].tolist() == want, (rel, classes)


def test_histogram_backends_agree_with_a_padding_mask():
    g = torch.Generator().manual_seed(3)
    levels = torch.randint(0, 256, (3, 17, 23), generator=g)
    valid = torch.rand(3, 17, 23, generator=g) > 0.3
    want = np.stack([np.histogram(levels[i][valid[i]].numpy(), bins=256, range=(0, 256))[0] for i in range(3)])
    for backend in ("library", "tensor"):
        assert np.array_equal(level_histograms(levels, valid=valid, backend=backend).numpy(), want)


@pytest.mark.parametrize("backend", ["library", "tensor"])
def test_otsu_batched_equals_one_image_at_a_time_and_masks_padding(backend):
    g = torch.Generator().manual_seed(0)
    levels = torch.randint(0, 256, (4, 20, 30), generator=g)
    levels[1] = torch.where(levels[1] > 128, 200, 40)  # two levels with a gap: the first level wins
    levels[2] = 7  # a single level
    hist = level_histograms(levels, backend=backend)
    batched = otsu_thresholds(hist, backend)
    for i in range(4):
        one = otsu_thresholds(level_histograms(levels[i : i + 1], backend=backend), backend)
        assert int(one[0]) == int(batched[i])
        grey = levels[i].numpy().astype(np.uint8)
        assert int(batched[i]) == int(skimage_filters.threshold_otsu(grey))
    valid = torch.zeros(4, 20, 30, dtype=torch.bool)
    valid[:, :10] = True
    masked = otsu_thresholds(level_histograms(levels, valid=valid, backend=backend), backend)
    for i in range(4):
        grey = levels[i, :10].numpy().astype(np.uint8)
        assert int(masked[i]) == int(skimage_filters.threshold_otsu(grey))
    classes = threshold_classes(levels, batched)
    assert torch.equal(classes, (levels > batched[:, None, None]).long())
    with pytest.raises(ValueError, match="distinct levels"):
        multi_otsu_thresholds(hist, 3, backend=backend)  # image 1 has two levels, image 2 one
    full = level_histograms(levels[[0, 3]])
    assert torch.equal(multi_otsu_thresholds(full, 3, chunk_elements=100, backend="tensor"),
                       multi_otsu_thresholds(full, 3, backend="library"))


@pytest.mark.parametrize("backend", ["library", "library_fallback", "tensor"])
@pytest.mark.parametrize("spatial_weight", [0.0, 2.0])
def test_kmeans_equals_sklearn_from_the_same_centres(shared_data, spatial_weight, backend, monkeypatch):
    images = torch.stack([load(shared_data, rel, (64, 48)) for rel in IMAGES[:4]])
    points = pixel_features(images, spatial_weight)
    init = kmeans_plus_plus(points, 5, torch.Generator().manual_seed(0))
    if backend == "library_fallback":  # scikit-learn's kernel not importable: the public estimator
        monkeypatch.setattr("lightning_seg.classic.kmeans._lloyd_kernel", lambda: None)
    ours = lloyd_kmeans(points, init, backend=backend.removesuffix("_fallback"))
    for i in range(len(images)):
        ref = sklearn_cluster.KMeans(5, init=init[i].numpy(), n_init=1, algorithm="lloyd", tol=1e-4,
                                     max_iter=300).fit(points[i].numpy())
        assert np.array_equal(ours.labels[i].numpy(), ref.labels_)
        assert ours.inertia[i].item() == pytest.approx(ref.inertia_, rel=1e-12)
        assert int(ours.iterations[i]) == ref.n_iter_
        np.testing.assert_allclose(ours.centers[i].numpy(), ref.cluster_centers_, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("backend", ["library", "tensor"])
def test_kmeans_relocates_empty_clusters_as_sklearn(backend):
    g = torch.Generator().manual_seed(1)
    points = torch.cat([torch.randn(40, 2, generator=g, dtype=torch.float64),
                        torch.randn(40, 2, generator=g, dtype=torch.float64) + 6])[None]
    init = torch.tensor([[[0.0, 0.0], [6.0, 6.0], [100.0, 100.0]]], dtype=torch.float64)  # the third gets no point
    ours = lloyd_kmeans(points, init, backend=backend)
    ref = sklearn_cluster.KMeans(3, init=init[0].numpy(), n_init=1, algorithm="lloyd").fit(points[0].numpy())
    assert np.array_equal(ours.labels[0].numpy(), ref.labels_)
    assert ours.inertia[0].item() == pytest.approx(ref.inertia_, rel=1e-12)


def test_kmeans_plus_plus_picks_distinct_spread_points():
    points = torch.cat([torch.zeros(50, 2), torch.full((50, 2), 10.0), torch.full((50, 2), -10.0)]).double()[None]
    init = kmeans_plus_plus(points, 3, torch.Generator().manual_seed(0))
    # one seed in each well-separated group: the greedy draw never takes two from one group here
    assert sorted(init[0, :, 0].tolist()) == [-10.0, 0.0, 10.0]


def test_hungarian_assignment_equals_scipy_on_the_confusion():
    from scipy.optimize import linear_sum_assignment

    g = torch.Generator().manual_seed(0)
    for clusters, classes in ((5, 5), (7, 4), (3, 6)):
        pred = torch.randint(0, clusters, (3, 16, 16), generator=g)
        target = torch.randint(0, classes, (3, 16, 16), generator=g)
        target[:, :2] = 255
        conf = cluster_confusion(pred, target, clusters, classes)
        want = np.zeros((clusters, classes), dtype=np.int64)  # a plain loop over the pixels
        for c, t in zip(pred.flatten().tolist(), target.flatten().tolist()):
            if t != 255:
                want[c, t] += 1
        assert np.array_equal(conf.numpy(), want)
        rows, cols = linear_sum_assignment(-want)
        mapping = assign_clusters_to_classes(conf)
        expected = np.full(clusters, -1)
        expected[rows] = cols
        assert mapping.tolist() == expected.tolist()
        mapped = map_clusters(pred, mapping)
        assert torch.equal(mapped, torch.tensor(np.where(expected[pred.numpy()] >= 0, expected[pred.numpy()], -1)))

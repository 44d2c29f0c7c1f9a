"""Classic baselines (``lightning_seg.classic``) against scikit-image / scikit-learn looped over images.

The images are the real sample photos of ``../shared/data`` (``$LIGHTNING_SEG_TEST_DATA``)
resized to ``--size``², cycled to ``--images`` images (random smooth images when the data is
absent). Per method, in this process: our batched call on the whole stack (the default path:
on the CPU the libraries' kernels called for the batch, see ``lightning_seg.classic.backend``;
with ``--tensor`` also the tensor path meant for accelerators) against the library called once
per image, median of ``--repeats`` runs after one warm-up, and whether the results are
identical:

* Otsu and 3-class multi-Otsu on the luma grey levels: ``otsu_thresholds`` /
  ``multi_otsu_thresholds`` of ``level_histograms`` against ``skimage.filters.threshold_otsu`` /
  ``threshold_multiotsu``;
* region growing from ``--seeds``² grid seeds at tolerance 12, 4-connected: ``region_growing``
  (default ``flood`` method; with ``--tensor`` also ``label`` and ``dilation``, minutes on the
  CPU) against ``skimage.segmentation.flood`` per seed;
* watershed on the Sobel gradient from h-minima markers: ``gradient_magnitude``,
  ``h_minima_markers``, ``watershed_segments`` against the same three scikit-image calls;
* k-means with 5 clusters on colours from the same k-means++ centres: ``lloyd_kmeans`` (float64)
  against ``sklearn.cluster.KMeans(init=centres, n_init=1, algorithm="lloyd")``.

    python scripts/benchmarks/classic.py --images 20 --size 512 --repeats 3 [--tensor]
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(os.environ.get("LIGHTNING_SEG_TEST_DATA", Path(__file__).resolve().parents[2].parent / "shared" / "data"))


def load_images(n: int, size: int) -> torch.Tensor:
    """uint8 ``[n, 3, size, size]``: the sample photos, cycled, or random smooth images."""
    from PIL import Image

    paths = sorted(glob.glob(str(ROOT / "ade20k_sceneparsing_sample/sampleData/images/*.jpg")))
    paths += sorted(glob.glob(str(ROOT / "panopticapi_sample/sample_data/input_images/*.jpg")))
    if paths:
        imgs = [np.array(Image.open(p).convert("RGB").resize((size, size))) for p in paths]
        return torch.from_numpy(np.stack([imgs[i % len(imgs)] for i in range(n)])).permute(0, 3, 1, 2).contiguous()
    g = torch.Generator().manual_seed(0)
    low = torch.rand(n, 3, 8, 8, generator=g) * 255
    return torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic").clamp(0, 255).to(torch.uint8)


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Median wall seconds of ``repeats`` runs after one warm-up, and the last result."""
    out = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def report(name: str, ours: float, ref: float, same: bool) -> None:
    """One table row: times, ratio ours / library and whether the results are identical."""
    print(f"| {name} | {ours * 1000:.1f} | {ref * 1000:.1f} | {ours / ref:.2f}x | {'yes' if same else 'NO'} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=4, help="grid seeds per image side")
    parser.add_argument("--tensor", action="store_true",
                        help="also time the tensor paths meant for accelerators (minutes on the CPU)")
    args = parser.parse_args()

    import skimage
    import sklearn
    from scipy import ndimage
    from skimage.filters import sobel, threshold_multiotsu, threshold_otsu
    from skimage.morphology import h_minima
    from skimage.segmentation import flood, watershed
    from sklearn.cluster import KMeans

    from lightning_seg.classic import (
        gradient_magnitude,
        grey_levels,
        grid_seeds,
        h_minima_markers,
        kmeans_plus_plus,
        level_histograms,
        lloyd_kmeans,
        multi_otsu_thresholds,
        otsu_thresholds,
        pixel_features,
        region_growing,
        watershed_segments,
    )

    images = load_images(args.images, args.size)
    levels = grey_levels(images)
    greys = [g.numpy().astype(np.uint8) for g in levels]
    print(f"torch {torch.__version__}, scikit-image {skimage.__version__}, scikit-learn {sklearn.__version__}; "
          f"{torch.get_num_threads()} threads; {args.images} images of {args.size}x{args.size}")
    print("| method | ours (ms) | library loop (ms) | ratio | identical |")
    print("|---|---|---|---|---|")

    backends = ("auto", "tensor") if args.tensor else ("auto",)
    t_ref, ref = timed(lambda: [threshold_otsu(g) for g in greys], args.repeats)
    for backend in backends:
        t_ours, ours = timed(lambda: otsu_thresholds(level_histograms(levels, backend=backend)), args.repeats)
        report(f"Otsu ({backend})", t_ours, t_ref, ours.tolist() == [int(r) for r in ref])

    t_ref, ref = timed(lambda: [threshold_multiotsu(g, 3) for g in greys], args.repeats)
    for backend in backends:
        t_ours, ours = timed(lambda: multi_otsu_thresholds(level_histograms(levels, backend=backend), 3,
                                                           backend=backend), args.repeats)
        report(f"multi-Otsu, 3 classes ({backend})", t_ours, t_ref, ours.tolist() == [r.tolist() for r in ref])

    step = args.size // args.seeds
    seeds = grid_seeds(args.size, args.size, step)

    def flood_loop() -> list[np.ndarray]:
        out = []
        for g in greys:
            lab = np.zeros(g.shape, dtype=np.int64)
            for s, (y, x) in enumerate(seeds.tolist()):
                lab[(lab == 0) & flood(g, (y, x), tolerance=12, connectivity=1)] = s + 1
            out.append(lab)
        return out

    t_ref, ref = timed(flood_loop, args.repeats)
    for method in ("flood", "label", "dilation") if args.tensor else ("flood",):
        t_ours, ours = timed(lambda: region_growing(levels, seeds, tolerance=12, connectivity=1, method=method),
                             args.repeats)
        report(f"region growing ({method}, {len(seeds)} seeds)", t_ours, t_ref,
               all(np.array_equal(o.numpy(), r) for o, r in zip(ours, ref)))

    def watershed_ours() -> torch.Tensor:
        grad = gradient_magnitude(levels)
        return watershed_segments(grad, h_minima_markers(grad, 0.05))

    def watershed_ref() -> list[np.ndarray]:
        out = []
        for g in greys:
            grad = sobel(g.astype(np.float64))
            out.append(watershed(grad, ndimage.label(h_minima(grad, 0.05))[0]))
        return out

    t_ours, ours = timed(watershed_ours, args.repeats)
    t_ref, ref = timed(watershed_ref, args.repeats)
    report("watershed (Sobel, h-minima 0.05)", t_ours, t_ref, all(np.array_equal(o.numpy(), r) for o, r in zip(ours, ref)))

    points = pixel_features(images)
    init = kmeans_plus_plus(points, 5, torch.Generator().manual_seed(0))
    t_ref, ref = timed(lambda: [KMeans(5, init=init[i].numpy(), n_init=1, algorithm="lloyd").fit(points[i].numpy())
                                for i in range(len(images))], args.repeats)
    for backend in backends:
        t_ours, ours = timed(lambda: lloyd_kmeans(points, init, backend=backend), args.repeats)
        report(f"k-means, 5 clusters, colour ({backend})", t_ours, t_ref,
               all(np.array_equal(ours.labels[i].numpy(), r.labels_) and ours.inertia[i].item() == r.inertia_
                   for i, r in enumerate(ref)))


if __name__ == "__main__":
    main()

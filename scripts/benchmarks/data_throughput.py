"""Images/s of the COCO-panoptic loading path with large-scale jitter, per DataLoader worker count.

Reads the synthetic shapes set (COCO panoptic format on disk) through
``CocoPanopticDataset`` + the ``lsj`` augmentation + ``collate``, and compares it with the
floor of the same work: decoding the image and the panoptic PNG alone (no masks, no
augmentation, no collation), measured in the same run. The ratio says how much the sample
contract and augmentation cost on top of the file decoding every loader must do.

    python scripts/benchmarks/data_throughput.py --workers 0 1 2 --num-images 200 --size 512
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from functools import partial

import torch
from torch.utils.data import DataLoader, Dataset

from lightning_seg.data import CocoPanopticDataset, build_augmentation
from lightning_seg.data.io import read_image, read_panoptic_png
from lightning_seg.data.synthetic import ensure_synthetic_shapes
from lightning_seg.structures import collate


class DecodeOnly(Dataset):
    """The reference floor: decode the image and the id PNG of each item, nothing else."""

    def __init__(self, ds: CocoPanopticDataset) -> None:
        self.items = ds.items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> int:
        item = self.items[i]
        image = read_image(item["image_path"])
        ids = read_panoptic_png(item["png_path"])
        return image.shape[0] + ids.shape[0]


def images_per_second(dataset: Dataset, workers: int, batch_size: int, collate_fn) -> float:
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate_fn,
                        persistent_workers=False)
    start = time.perf_counter()
    n = 0
    for batch in loader:
        n += len(batch) if isinstance(batch, list) else len(batch["targets"])
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--num-images", type=int, default=200)
    parser.add_argument("--size", type=int, default=512, help="image side of the synthetic set and LSJ crop")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--root", default=None, help="where to generate the synthetic set")
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = ensure_synthetic_shapes(args.root, num_train=args.num_images, num_val=1,
                                   image_size=(args.size, args.size), seed=0)
    split = root / "train"
    full = CocoPanopticDataset(split / "panoptic.json", split / "images", split / "panoptic",
                               transform=build_augmentation("lsj", args.size))
    floor = DecodeOnly(full)
    print(f"# data throughput, {args.num_images} synthetic images {args.size}x{args.size}, "
          f"LSJ {args.size}, batch {args.batch_size}; torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print("| workers | decode only (img/s) | dataset + LSJ + collate (img/s) | ratio (ours / decode) |")
    print("|---|---|---|---|")
    for w in args.workers:
        ref = images_per_second(floor, w, args.batch_size, list)
        ours = images_per_second(full, w, args.batch_size, partial(collate, size_divisibility=32))
        print(f"| {w} | {ref:.1f} | {ours:.1f} | {ours / ref:.2f} |")


if __name__ == "__main__":
    main()

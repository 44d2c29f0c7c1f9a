"""Benchmark our metrics against the reference implementations on the same inputs.

* ``PanopticQuality`` vs torchmetrics' ``PanopticQuality`` (no crowd, no predicted void, so
  both apply the same rules): numbers must be identical, we report the time ratio.
* ``SemanticSegmentationMetrics`` vs torchmetrics' ``MulticlassJaccardIndex`` (mIoU).
* COCO mask AP: faster-coco-eval vs pycocotools on the 100-image COCO val2014 sample.

Usage::

    python scripts/benchmarks/metrics.py --images 20 --size 512 --segments 30 --device cpu
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch


def synthetic_panoptic(n: int, size: int, segments: int, classes: int, seed: int, device: str):
    """Voronoi-cell panoptic maps ``[n, size, size, 2]`` (category, instance) and perturbed
    predictions with no void; about ``segments`` segments per image."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    pix = torch.stack([ys.flatten(), xs.flatten()], 1).float()
    gts, preds = [], []
    for _ in range(n):
        seeds = torch.rand(segments, 2, generator=g) * size
        cat = torch.randint(0, classes, (segments,), generator=g)
        inst = torch.arange(segments)
        owner = torch.cdist(pix, seeds).argmin(1)
        jitter = seeds + torch.randn(segments, 2, generator=g) * size / 40
        owner_pred = torch.cdist(pix, jitter).argmin(1)
        relabel = torch.rand(segments, generator=g) < 0.15
        pcat = torch.where(relabel, torch.randint(0, classes, (segments,), generator=g), cat)
        gt = torch.stack([cat[owner], inst[owner]], 1).reshape(size, size, 2)
        # A thin void band in the ground truth exercises the void rules.
        gt[size // 2 : size // 2 + 2, :, 0] = classes + 1
        gts.append(gt)
        preds.append(torch.stack([pcat[owner_pred], inst[owner_pred]], 1).reshape(size, size, 2))
    return torch.stack(preds).to(device), torch.stack(gts).to(device)


def _time(fn, repeats: int, device: str) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best, out


def bench_panoptic(args) -> dict:
    """Time ours vs torchmetrics' PanopticQuality (update + compute) and return both PQs."""
    from torchmetrics.detection import PanopticQuality as TMPanopticQuality

    from lightning_seg.metrics import PanopticQuality

    k = args.classes
    n_things = k * 2 // 3
    is_thing = [c < n_things for c in range(k)]
    preds, gts = synthetic_panoptic(args.images, args.size, args.segments, k, 0, args.device)

    def ours():
        m = PanopticQuality(is_thing=is_thing).to(args.device)
        for i in range(0, args.images, args.batch):
            m.update(preds[i : i + args.batch], gts[i : i + args.batch])
        return float(m.compute()["pq"])

    def theirs():
        m = TMPanopticQuality(things=set(range(n_things)), stuffs=set(range(n_things, k))).to(args.device)
        for i in range(0, args.images, args.batch):
            m.update(preds[i : i + args.batch], gts[i : i + args.batch])
        return float(m.compute())

    t_ours, pq_ours = _time(ours, args.repeats, args.device)
    t_theirs, pq_theirs = _time(theirs, max(1, args.repeats // 2), args.device)
    return {"ours_s": t_ours, "torchmetrics_s": t_theirs, "ratio": t_ours / t_theirs, "pq_ours": pq_ours, "pq_torchmetrics": pq_theirs}


def bench_semantic(args) -> dict:
    """Time ours vs torchmetrics' MulticlassJaccardIndex on random maps; return both mIoUs."""
    from torchmetrics.classification import MulticlassJaccardIndex

    from lightning_seg.metrics import SemanticSegmentationMetrics

    g = torch.Generator().manual_seed(1)
    k = args.semantic_classes
    target = torch.randint(0, k, (args.images, args.size // 8, args.size // 8), generator=g)
    target = target.repeat_interleave(8, 1).repeat_interleave(8, 2)
    noise = torch.rand(target.shape, generator=g) < 0.2
    preds = torch.where(noise, torch.randint(0, k, target.shape, generator=g), target)
    target[:, :4] = 255
    preds, target = preds.to(args.device), target.to(args.device)

    def run(metric):
        metric = metric.to(args.device)
        for i in range(0, args.images, args.batch):
            metric.update(preds[i : i + args.batch], target[i : i + args.batch])
        out = metric.compute()
        return float(out["mIoU"] if isinstance(out, dict) else out)

    t_ours, ours = _time(lambda: run(SemanticSegmentationMetrics(k)), args.repeats, args.device)
    t_theirs, theirs = _time(
        lambda: run(MulticlassJaccardIndex(num_classes=k, ignore_index=255, average="macro")), args.repeats, args.device
    )
    return {"ours_s": t_ours, "torchmetrics_s": t_theirs, "ratio": t_ours / t_theirs, "miou_ours": ours, "miou_torchmetrics": theirs}


def bench_coco(args) -> dict | None:
    """Time COCOeval segm through faster-coco-eval vs pycocotools (None without the data)."""
    from lightning_seg.evaluation.panoptic_io import load_json
    from lightning_seg.metrics import coco_evaluate

    root = Path(args.coco_dir)
    if not (root / "instances_val2014_100.json").is_file():
        return None
    gt = load_json(root / "instances_val2014_100.json")
    results = load_json(root / "instances_val2014_fakesegm100_results.json")
    t_fast, fast = _time(lambda: coco_evaluate(gt, results, "segm", "faster_coco_eval"), args.repeats, "cpu")
    t_py, py = _time(lambda: coco_evaluate(gt, results, "segm", "pycocotools"), args.repeats, "cpu")
    return {"faster_coco_eval_s": t_fast, "pycocotools_s": t_py, "ratio": t_fast / t_py, "AP_fast": fast["AP"], "AP_pycocotools": py["AP"]}


def main() -> None:
    """Parse the flags, run the selected benchmarks, print one line each plus a JSON summary."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=20)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--segments", type=int, default=30)
    p.add_argument("--classes", type=int, default=12, help="panoptic classes (2/3 things)")
    p.add_argument("--semantic-classes", type=int, default=150)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    data_root = os.environ.get("LIGHTNING_SEG_TEST_DATA", Path(__file__).resolve().parents[3] / "shared" / "data")
    p.add_argument("--coco-dir", default=str(Path(data_root) / "coco_val2014_100_eval"))
    p.add_argument("--skip", nargs="*", default=[], choices=["panoptic", "semantic", "coco"])
    args = p.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    import torchmetrics

    print(f"device={args.device} torch={torch.__version__} torchmetrics={torchmetrics.__version__} "
          f"threads={torch.get_num_threads()} python={platform.python_version()}")  # fmt: skip
    report = {}
    if "panoptic" not in args.skip:
        report["panoptic"] = r = bench_panoptic(args)
        print(f"PQ {args.images}x{args.size}^2, ~{args.segments} segments: ours {r['ours_s']:.3f}s, "
              f"torchmetrics {r['torchmetrics_s']:.3f}s, ratio {r['ratio']:.4f}; "
              f"PQ {r['pq_ours']:.8f} vs {r['pq_torchmetrics']:.8f}")  # fmt: skip
    if "semantic" not in args.skip:
        report["semantic"] = r = bench_semantic(args)
        print(f"mIoU {args.images}x{args.size}^2, {args.semantic_classes} classes: ours {r['ours_s']:.4f}s, "
              f"torchmetrics {r['torchmetrics_s']:.4f}s, ratio {r['ratio']:.3f}; "
              f"mIoU {r['miou_ours']:.8f} vs {r['miou_torchmetrics']:.8f}")  # fmt: skip
    if "coco" not in args.skip:
        r = bench_coco(args)
        if r is None:
            print(f"COCO mask AP: skipped, no data at {args.coco_dir}")
        else:
            report["coco"] = r
            print(f"COCO segm AP (100 images, 734 detections): faster-coco-eval {r['faster_coco_eval_s']:.3f}s, "
                  f"pycocotools {r['pycocotools_s']:.3f}s, ratio {r['ratio']:.3f}; AP {r['AP_fast']:.4f} vs {r['AP_pycocotools']:.4f}")  # fmt: skip
    print(json.dumps(report))


if __name__ == "__main__":
    main()

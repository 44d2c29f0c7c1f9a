"""Benchmark our metrics against the reference implementations on the same inputs.

* ``PanopticQuality`` vs torchmetrics' ``PanopticQuality`` (no crowd, no predicted void, so
  both apply the same rules): numbers must be identical, we report the time ratio.
* ``SemanticSegmentationMetrics`` vs torchmetrics' ``MulticlassJaccardIndex`` (mIoU).
* COCO mask AP on the 100-image COCO val2014 sample: our entry point
  ``coco_evaluate(gt, results, "segm", backend=...)`` (deep-copies its inputs, silences the
  tools' output) with each backend, and faster-coco-eval used directly, against pycocotools'
  own ``COCO`` / ``COCOeval`` run directly. The direct runs get fresh copies of the inputs made
  outside the timed call (both tools modify the dicts they are given) and their stdout goes to
  a buffer, not the terminal.

Every benchmark runs its sides in rounds (``alternate``): each round runs every side once,
rotating which goes first (two sides: alternating), so all sides get the same number of runs
and load drift falls on all of them. Printed: the median time of each side and the median
over rounds of the within-round ratio to the reference, with its range.

Usage::

    python scripts/benchmarks/metrics.py --images 20 --size 512 --segments 30 --device cpu
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import platform
import time
from collections.abc import Callable
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


def _seconds(fn: Callable[[], object], device: str) -> tuple[float, object]:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out


def _median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


Side = Callable[[], object] | tuple[Callable[[], object], Callable[[object], object]]


def alternate(sides: dict[str, Side], reference: str, repeats: int, warmup: int, device: str) -> dict[str, dict]:
    """Time every side the same number of times, in rounds of one run each.

    ``sides`` maps a name to ``fn`` or to ``(setup, fn)``: ``setup()`` runs untimed before each
    call and its result is passed to ``fn``. After ``warmup`` untimed rounds, round ``r`` runs
    the sides in their order rotated by ``r`` (two sides: alternating which goes first).

    Returns, per side: ``median_s`` and ``best_s`` over rounds, ``ratio`` (median over rounds
    of the side's time / the reference's time in the same round) with ``ratio_min`` and
    ``ratio_max``, and ``out`` (the last call's result).
    """
    names = list(sides)

    def call(name: str) -> tuple[float, object]:
        side = sides[name]
        if callable(side):
            return _seconds(side, device)
        setup, fn = side
        arg = setup()
        return _seconds(lambda: fn(arg), device)

    for _ in range(warmup):
        for name in names:
            call(name)
    times: dict[str, list[float]] = {n: [] for n in names}
    outs: dict[str, object] = {}
    for r in range(max(1, repeats)):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            t, outs[name] = call(name)
            times[name].append(t)
    ref = times[reference]
    report = {}
    for name in names:
        ratios = [a / b for a, b in zip(times[name], ref)]
        report[name] = {"median_s": _median(times[name]), "best_s": min(times[name]), "ratio": _median(ratios),
                        "ratio_min": min(ratios), "ratio_max": max(ratios), "out": outs[name]}  # fmt: skip
    return report


def _pair(r: dict, ours: str, ref: str, value: str) -> dict:
    """Flatten an ``alternate`` report of two sides into the JSON summary's keys."""
    return {"ours_s": r[ours]["median_s"], f"{ref}_s": r[ref]["median_s"], "ratio": r[ours]["ratio"],
            "ratio_range": [r[ours]["ratio_min"], r[ours]["ratio_max"]],
            f"{value}_ours": r[ours]["out"], f"{value}_{ref}": r[ref]["out"]}  # fmt: skip


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

    r = alternate({"ours": ours, "torchmetrics": theirs}, "torchmetrics", args.repeats, args.warmup, args.device)
    return _pair(r, "ours", "torchmetrics", "pq")


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

    r = alternate(
        {"ours": lambda: run(SemanticSegmentationMetrics(k)),
         "torchmetrics": lambda: run(MulticlassJaccardIndex(num_classes=k, ignore_index=255, average="macro"))},
        "torchmetrics", args.repeats, args.warmup, args.device,
    )  # fmt: skip
    return _pair(r, "ours", "torchmetrics", "miou")


COCO_SIDES = {
    "ours": "coco_evaluate(backend='faster_coco_eval')",
    "ours_pycocotools": "coco_evaluate(backend='pycocotools')",
    "faster_coco_eval": "faster-coco-eval direct",
    "pycocotools": "pycocotools direct",
}


def _pycocotools_direct(data: tuple[dict, list]) -> float:
    """pycocotools' own COCO / COCOeval segm run on in-memory data (modified in place); AP."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt, results = data
    with contextlib.redirect_stdout(io.StringIO()):
        gt_api = COCO()
        gt_api.dataset = gt
        gt_api.createIndex()
        evaluator = COCOeval(gt_api, gt_api.loadRes(results), "segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[0])


def _faster_coco_eval_direct(data: tuple[dict, list]) -> float:
    """faster-coco-eval's COCO / COCOeval_faster segm run on in-memory data; AP."""
    from faster_coco_eval import COCO, COCOeval_faster

    gt, results = data
    quiet = lambda *a, **k: None  # noqa: E731
    with contextlib.redirect_stdout(io.StringIO()):
        gt_api = COCO(gt, print_function=quiet)
        evaluator = COCOeval_faster(gt_api, gt_api.loadRes(results), "segm", print_function=quiet)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[0])


def bench_coco(args) -> dict | None:
    """Time COCOeval segm through our ``coco_evaluate`` (each backend) and faster-coco-eval
    directly against pycocotools directly (None without the data)."""
    from lightning_seg.evaluation.panoptic_io import load_json
    from lightning_seg.metrics import coco_evaluate

    root = Path(args.coco_dir)
    if not (root / "instances_val2014_100.json").is_file():
        return None
    gt = load_json(root / "instances_val2014_100.json")
    results = load_json(root / "instances_val2014_fakesegm100_results.json")
    fresh = lambda: (copy.deepcopy(gt), copy.deepcopy(results))  # noqa: E731  (untimed)
    r = alternate(
        {"ours": lambda: coco_evaluate(gt, results, "segm", backend="faster_coco_eval")["AP"],
         "ours_pycocotools": lambda: coco_evaluate(gt, results, "segm", backend="pycocotools")["AP"],
         "faster_coco_eval": (fresh, _faster_coco_eval_direct),
         "pycocotools": (fresh, _pycocotools_direct)},
        "pycocotools", args.repeats, args.warmup, "cpu",
    )  # fmt: skip
    return {"images": len(gt["images"]), "detections": len(results), **r}


def _range(r: dict) -> str:
    return f"rounds {r['ratio_range'][0]:.4f}-{r['ratio_range'][1]:.4f}"


def main() -> None:
    """Parse the flags, run the selected benchmarks, print one line each plus a JSON summary."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=20)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--segments", type=int, default=30)
    p.add_argument("--classes", type=int, default=12, help="panoptic classes (2/3 things)")
    p.add_argument("--semantic-classes", type=int, default=150)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3, help="timed rounds; every side runs once per round")
    p.add_argument("--warmup", type=int, default=0, help="untimed rounds first")
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
              f"torchmetrics {r['torchmetrics_s']:.3f}s, ratio {r['ratio']:.4f} ({_range(r)}); "
              f"PQ {r['pq_ours']:.10f} vs {r['pq_torchmetrics']:.10f}")  # fmt: skip
    if "semantic" not in args.skip:
        report["semantic"] = r = bench_semantic(args)
        print(f"mIoU {args.images}x{args.size}^2, {args.semantic_classes} classes: ours {r['ours_s']:.4f}s, "
              f"torchmetrics {r['torchmetrics_s']:.4f}s, ratio {r['ratio']:.3f} ({_range(r)}); "
              f"mIoU {r['miou_ours']:.8f} vs {r['miou_torchmetrics']:.8f}")  # fmt: skip
    if "coco" not in args.skip:
        r = bench_coco(args)
        if r is None:
            print(f"COCO mask AP: skipped, no data at {args.coco_dir}")
        else:
            report["coco"] = r
            print(f"COCO segm AP ({r['images']} images, {r['detections']} detections), ratio to pycocotools direct:")
            for name, label in COCO_SIDES.items():
                x = r[name]
                print(f"  {label:<42} {x['median_s']:.3f}s  ratio {x['ratio']:.3f} "
                      f"(rounds {x['ratio_min']:.3f}-{x['ratio_max']:.3f})  AP {x['out']:.4f}")  # fmt: skip
    print(json.dumps(report))


if __name__ == "__main__":
    main()

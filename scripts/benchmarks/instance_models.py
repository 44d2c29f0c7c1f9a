"""Instance families at the same input, and the three suppression ops on the same candidates.

Part 1, models: inference images/s (the network plus its post-processing to instance
predictions at the input size, through each task's ``predict``) of Mask R-CNN, SOLOv2, SOLO,
YOLACT and Mask2Former in instance mode, each with its COCO recipe (80 classes, torchvision
ResNet-50, random weights), on the same random ``--size`` x ``--size`` images, alternating
rounds, median; printed with the ratio to Mask R-CNN and the detections per image. With
random weights SOLO's category scores all sit at the 0.01 prior, below its 0.1 threshold, so
its post-processing would have nothing to do: the category bias of SOLO and SOLOv2 is shifted
so that about ``--solo-candidates`` (cell, class) pairs per image pass the threshold (before
the 2x2 local maxima), as a trained model gives, and SOLO's mask bias is zeroed (its masks
would be empty at the prior); the other families return their 100.

Part 2, suppression: on the same ``--candidates`` scored candidates per image (80 classes,
boxes of 16-160 pixels in a 512 image, their rectangles as 128x128 masks for matrix NMS):
``ops.matrix_nms`` (SOLOv2's settings), ``ops.fast_nms`` (YOLACT's) and
``torchvision.ops.batched_nms`` over the whole batch (image x class groups), median time per
batch, with the ratio to ``batched_nms``.

    python scripts/benchmarks/instance_models.py
    python scripts/benchmarks/instance_models.py --device cuda --rounds 10
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402
from torchvision.ops import batched_nms  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lightning_seg.ops import fast_nms, matrix_nms  # noqa: E402
from lightning_seg.structures import collate  # noqa: E402

K = 80
R50 = dict(backbone="resnet50", backbone_source="torchvision", num_overlays=0)


def build_tasks() -> dict:
    from lightning_seg.tasks import (
        DenseInstanceModule,
        MaskClassificationModule,
        RCNNModule,
    )

    return {
        "Mask R-CNN R50-FPN": lambda: RCNNModule(K, model="mask_rcnn", **R50),
        "SOLOv2 R50-FPN": lambda: DenseInstanceModule(K, model="solov2", **R50),
        "SOLO R50-FPN": lambda: DenseInstanceModule(K, model="solo", **R50),
        "YOLACT R50-FPN": lambda: DenseInstanceModule(K, model="yolact", frozen_stages=-1, **R50),
        "Mask2Former R50 (instance)": lambda: MaskClassificationModule(K, model="mask2former", task="instance", **R50),
    }


def image_batch(size: int, batch: int, device: str) -> dict:
    g = torch.Generator().manual_seed(0)
    samples = [dict(image=torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g),
                    masks=torch.zeros(0, size, size, dtype=torch.bool), labels=torch.zeros(0, dtype=torch.int64),
                    iscrowd=torch.zeros(0, dtype=torch.bool), is_thing=torch.zeros(0, dtype=torch.bool),
                    semantic=torch.full((size, size), 255), boxes=torch.zeros(0, 4), image_id=i, orig_size=(size, size))
               for i in range(batch)]
    b = collate(samples, size_divisibility=32)
    b["images"] = b["images"].to(device)
    return b


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def calibrate_solo(task, batch: dict, candidates: int) -> None:
    """Shift the category bias so that ``candidates`` (cell, class) scores of the first image
    pass the score threshold."""
    from lightning_seg.models.dense_instance import GridInstanceModel

    model = task.model
    if not isinstance(model, GridInstanceModel):
        return
    logits = torch.cat([x[0].flatten() for x in model(batch["images"]).category_logits])
    kth = logits.topk(candidates).values[-1]
    threshold = torch.logit(torch.tensor(model.settings.score_threshold))
    model.category.bias += (threshold - kth + 1e-4).to(model.category.bias)
    # SOLO's mask logits start at the 0.01 prior too (empty binary masks, all dropped): centre them
    for conv in getattr(model, "mask", []):
        conv.bias.zero_()


def time_models(args) -> list[dict]:
    tasks = {name: make().eval().to(args.device) for name, make in build_tasks().items()}
    batch = image_batch(args.size, args.batch, args.device)
    for task in tasks.values():
        calibrate_solo(task, batch, args.solo_candidates)
    times: dict[str, list[float]] = {n: [] for n in tasks}
    dets: dict[str, float] = {}
    with torch.inference_mode():
        for task in tasks.values():  # warm-up
            task.predict(batch, at_original_size=False)
        for _ in range(args.rounds):
            for name, task in tasks.items():
                sync(args.device)
                t0 = time.perf_counter()
                preds = task.predict(batch, at_original_size=False)["instance"]
                sync(args.device)
                times[name].append(time.perf_counter() - t0)
                dets[name] = sum(p["masks"].shape[0] for p in preds) / len(preds)
    ref = statistics.median(times["Mask R-CNN R50-FPN"])
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append(dict(model=name, seconds=med, images_per_s=args.batch / med, ratio_to_mask_rcnn=ref / med,
                         detections_per_image=dets[name],
                         params_m=sum(p.numel() for p in tasks[name].model.parameters()) / 1e6))
    return rows


def candidates(b: int, n: int, device: str):
    g = torch.Generator().manual_seed(1)
    size, mask_size = 512, 128
    wh = torch.exp(torch.empty(b, n, 2).uniform_(torch.log(torch.tensor(16.0)), torch.log(torch.tensor(160.0)),
                                                 generator=g))
    xy = torch.rand(b, n, 2, generator=g) * (size - wh)
    boxes = torch.cat([xy, xy + wh], -1)
    scores = torch.rand(b, n, generator=g) * 0.9 + 0.1
    labels = torch.randint(0, K, (b, n), generator=g)
    q = boxes / (size / mask_size)
    ys = torch.arange(mask_size) + 0.5
    in_y = (ys >= q[..., 1:2]) & (ys < q[..., 3:4])
    in_x = (ys >= q[..., 0:1]) & (ys < q[..., 2:3])
    masks = in_y[..., :, None] & in_x[..., None, :]
    class_scores = torch.zeros(b, n, K).scatter_(2, labels[..., None], scores[..., None])
    return [t.to(device) for t in (boxes, scores, labels, masks, class_scores)]


def time_suppression(args) -> list[dict]:
    boxes, scores, labels, masks, class_scores = candidates(args.batch_nms, args.candidates, args.device)
    b, n = scores.shape
    image = torch.arange(b, device=boxes.device)[:, None].expand(b, n)
    ops = {
        "torchvision.ops.batched_nms (IoU 0.5)": lambda: batched_nms(boxes.flatten(0, 1), scores.flatten(),
                                                                     (image * K + labels).flatten(), 0.5),
        "ops.fast_nms (IoU 0.5, top 200, 100)": lambda: fast_nms(boxes, class_scores, None, 0.5, 200, 100, 0.05),
        "ops.matrix_nms (gaussian 2.0, 100)": lambda: matrix_nms(masks, scores, labels, None, "gaussian", 2.0,
                                                                 500, 0.05, 100),
    }
    times: dict[str, list[float]] = {k: [] for k in ops}
    for fn in ops.values():
        fn()
    for _ in range(args.rounds):
        for name, fn in ops.items():
            sync(args.device)
            t0 = time.perf_counter()
            fn()
            sync(args.device)
            times[name].append(time.perf_counter() - t0)
    ref = statistics.median(times["torchvision.ops.batched_nms (IoU 0.5)"])
    return [dict(op=k, ms=statistics.median(v) * 1e3, ratio_to_batched_nms=statistics.median(v) / ref)
            for k, v in times.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1, help="images per inference call")
    parser.add_argument("--batch-nms", type=int, default=8, help="images per suppression call")
    parser.add_argument("--candidates", type=int, default=500)
    parser.add_argument("--solo-candidates", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", choices=["models", "suppression"], default=None)
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    out: dict = {}
    if args.only in (None, "models"):
        out["models"] = time_models(args)
        print(f"\n| model | images/s ({args.size}x{args.size}, batch {args.batch}) | speed vs Mask R-CNN | detections/image | params (M) |")
        print("|---|---|---|---|---|")
        for r in out["models"]:
            print(f"| {r['model']} | {r['images_per_s']:.2f} | {r['ratio_to_mask_rcnn']:.2f} | "
                  f"{r['detections_per_image']:.0f} | {r['params_m']:.1f} |")
    if args.only in (None, "suppression"):
        out["suppression"] = time_suppression(args)
        print(f"\n| op ({args.batch_nms} images x {args.candidates} candidates) | ms | / batched_nms |")
        print("|---|---|---|")
        for r in out["suppression"]:
            print(f"| {r['op']} | {r['ms']:.2f} | {r['ratio_to_batched_nms']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

"""Panoptic FPN fusion: ``ops.panoptic_fpn_fusion`` against the reference loop, same inputs.

The reference is a transcription of detectron2's ``combine_semantic_and_instance_outputs``
(the rules of panopticapi's ``combine_semantic_and_instance_predictions``): one instance at a
time in score order over the whole image, ``.item()`` per decision, then one stuff class at a
time. Both sides get the same batch, by default 8 images of 1/4-scale masks of an 800x1333
input (200x334), 100 detections each (elliptical masks in log-uniform boxes, scores in
decreasing order as a detector returns them, about half above the 0.5 threshold) and a
semantic map of 54 classes (53 stuff + the "things" class) made of blocks of several sizes, with
no void, as a model's argmax gives.
The results are checked equal before timing.

Printed: median time per batch over ``--rounds`` alternating rounds, and ours / reference.

    python scripts/benchmarks/panoptic_fusion.py
    python scripts/benchmarks/panoptic_fusion.py --device cuda --rounds 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lightning_seg.ops.panoptic_fpn_fusion import panoptic_fpn_fusion  # noqa: E402


def reference_fusion(masks, scores, labels, sem, things, num_classes, overlap, stuff_area, score_thr):
    """detectron2's loop, with the semantic map in the full class space (things excluded)."""
    pan = torch.zeros_like(sem, dtype=torch.int32)
    infos = []
    seg = 0
    for j in torch.argsort(-scores, stable=True):
        score = scores[j].item()
        if score < score_thr:
            break
        mask = masks[j]
        area = mask.sum().item()
        if area == 0:
            continue
        inter = ((mask > 0) & (pan > 0)).sum().item()
        if inter * 1.0 / area > overlap:
            continue
        if inter > 0:
            mask = mask & (pan == 0)
        seg += 1
        pan[mask] = seg
        infos.append({"id": seg, "category_id": int(labels[j].item()), "isthing": True})
    for c in torch.unique(sem).cpu().tolist():
        if c in things or c < 0 or c >= num_classes:
            continue
        mask = (sem == c) & (pan == 0)
        area = mask.sum().item()
        if area < stuff_area:
            continue
        seg += 1
        pan[mask] = seg
        infos.append({"id": seg, "category_id": c, "isthing": False})
    return pan, infos


def make_inputs(images: int, height: int, width: int, detections: int, stuff: int, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    num_classes = stuff + 1  # class 0 stands for "things"; 1..53 are stuff
    yy = torch.arange(height, dtype=torch.float32)[:, None]
    xx = torch.arange(width, dtype=torch.float32)[None, :]
    insts, sems = [], []
    for _ in range(images):
        side = torch.exp(torch.empty(detections, 2).uniform_(torch.log(torch.tensor(6.0)).item(),
                                                             torch.log(torch.tensor(160.0)).item(), generator=g))
        cy = torch.rand(detections, generator=g) * height
        cx = torch.rand(detections, generator=g) * width
        ry, rx = side[:, 1, None, None] / 2, side[:, 0, None, None] / 2
        masks = ((yy - cy[:, None, None]) / ry) ** 2 + ((xx - cx[:, None, None]) / rx) ** 2 <= 1
        scores = torch.sort(torch.rand(detections, generator=g), descending=True)[0]
        labels = torch.zeros(detections, dtype=torch.int64)
        # stuff regions of several sizes, some below the area threshold; class 0 = things
        sem = torch.zeros(height, width, dtype=torch.int64)
        for cell in (64, 16, 4):
            coarse = torch.randint(0, num_classes, (height // cell + 1, width // cell + 1), generator=g)
            keep = torch.rand(coarse.shape, generator=g) < 0.5
            up = F.interpolate(coarse[None, None].float(), scale_factor=cell, mode="nearest")[0, 0].long()
            upk = F.interpolate(keep[None, None].float(), scale_factor=cell, mode="nearest")[0, 0].bool()
            sem = torch.where(upk[:height, :width], up[:height, :width], sem)
        insts.append({"masks": masks.to(device), "scores": scores.to(device), "labels": labels.to(device)})
        sems.append(sem.to(device))
    return insts, sems, num_classes


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--height", type=int, default=200)
    parser.add_argument("--width", type=int, default=334)
    parser.add_argument("--detections", type=int, default=100)
    parser.add_argument("--stuff-classes", type=int, default=53)
    parser.add_argument("--stuff-area", type=int, default=4096 // 16,
                        help="stuff area threshold in mask pixels (4096 at full size = 256 at 1/4)")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    dev = args.device
    insts, sems, k = make_inputs(args.images, args.height, args.width, args.detections, args.stuff_classes, dev)
    things = [0]
    settings = dict(overlap_threshold=0.5, stuff_area_threshold=args.stuff_area, instance_score_threshold=0.5)

    def ours():
        return panoptic_fpn_fusion(insts, sems, things, k, **settings)

    def reference():
        return [reference_fusion(i["masks"], i["scores"], i["labels"], s, things, k, 0.5, args.stuff_area, 0.5)
                for i, s in zip(insts, sems)]

    out, ref = ours(), reference()
    for o, (pan, infos) in zip(out, ref):
        if not torch.equal(o["panoptic_seg"], pan) or [(s["id"], s["category_id"], s["isthing"])
                                                       for s in o["segments_info"]] != [
                (s["id"], s["category_id"], s["isthing"]) for s in infos]:
            raise SystemExit("results differ from the reference")
    segments = sum(len(o["segments_info"]) for o in out)
    times: dict[str, list[float]] = {"ours": [], "reference": []}
    for _ in range(args.rounds):
        for name, fn in (("ours", ours), ("reference", reference)):
            sync(dev)
            t = time.perf_counter()
            fn()
            sync(dev)
            times[name].append(time.perf_counter() - t)
    med = {k_: statistics.median(v) for k_, v in times.items()}
    print(json.dumps({
        "device": dev, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "images": args.images, "size": [args.height, args.width], "detections": args.detections,
        "segments_per_batch": segments,
        "ours_ms": round(med["ours"] * 1e3, 2), "reference_ms": round(med["reference"] * 1e3, 2),
        "ratio": round(med["ours"] / med["reference"], 3),
    }, indent=1))


if __name__ == "__main__":
    main()

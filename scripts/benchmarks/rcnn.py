"""Mask R-CNN against torchvision's ``maskrcnn_resnet50_fpn``: same process, weights and inputs.

Both models hold the same random weights (ours loaded from torchvision's state dict, with
torchvision's settings: ``aligned=False``, sampling ratio 2, 2000 post-NMS proposals in training),
the same two images (640x640 by default) with 20 ground-truth instances each. torchvision's
resize is switched off (our data layer resizes), so both see the same pixels.

Printed, as medians over alternating rounds, with the ratio ours / torchvision:

* ``train step``: forward with losses + backward; ``peak memory`` of one step (CUDA: max
  allocated; CPU: peak RSS during the step over the RSS before it, the peak reset through
  ``/proc/self/clear_refs``; each side in a fresh subprocess);
* ``inference``: forward + masks pasted at the original size;
* the parts that are not the network, each timed alone on both sides from the same network
  outputs: anchor matching + sampling (+ box targets), proposal selection (decode, clip, NMS,
  top-k), RoI matching + sampling + box and mask targets, detection post-processing + pasting.

    python scripts/benchmarks/rcnn.py                 # CPU, 640x640, 3 rounds
    python scripts/benchmarks/rcnn.py --nchw          # ours in torchvision's memory format
    python scripts/benchmarks/rcnn.py --device cuda --rounds 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from typing import Any

import torch

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))

from lightning_seg.models.rcnn import (
    box_targets_from_batch,
    mask_rcnn_from_torchvision,
    torchvision_settings,
)
from lightning_seg.ops.box_matching import sample_balanced
from lightning_seg.ops.roi_pooling import crop_mask_targets
from lightning_seg.structures import collate


def torchvision_model(num_classes: int):
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    torch.manual_seed(0)
    # score threshold 0: 100 detections per image on both sides, as a trained model gives
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=num_classes + 1,
                                  box_score_thresh=0.0)
    from lightning_seg.models.backbone import _freeze_batchnorm

    _freeze_batchnorm(model.backbone.body)  # what torchvision builds when it loads pretrained weights
    model.transform.resize = lambda image, target=None: (image, target)
    return model


def make_inputs(size: int, instances: int, num_classes: int, device: str):
    """Two images with ``instances`` elliptic instances each, in both input formats."""
    g = torch.Generator().manual_seed(0)
    samples = []
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    for i in range(2):
        masks = torch.zeros(instances, size, size, dtype=torch.bool)
        for j in range(instances):
            c = torch.rand(2, generator=g) * size * 0.8 + size * 0.1
            r = torch.rand(2, generator=g) * size * 0.15 + 8
            masks[j] = ((yy - c[0]) / r[0]) ** 2 + ((xx - c[1]) / r[1]) ** 2 <= 1
        ys, xs = masks.any(2), masks.any(1)
        boxes = torch.stack([xs.float().argmax(1), ys.float().argmax(1), size - xs.flip(1).float().argmax(1),
                             size - ys.flip(1).float().argmax(1)], 1).float()
        labels = torch.randint(0, num_classes, (instances,), generator=g)
        samples.append(dict(image=torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g),
                            masks=masks, labels=labels, iscrowd=torch.zeros(instances, dtype=torch.bool),
                            is_thing=torch.ones(instances, dtype=torch.bool), semantic=torch.zeros(size, size),
                            boxes=boxes, image_id=i, orig_size=(size, size)))
    batch = collate(samples, size_divisibility=32)
    images = batch["images"].to(device)
    sizes = torch.tensor([t["image_size"] for t in batch["targets"]], device=device)
    targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in batch["targets"]]
    tv_images = [images[i, :, :size, :size] for i in range(2)]
    tv_targets = [dict(boxes=s["boxes"].to(device), labels=(s["labels"] + 1).to(device),
                       masks=s["masks"].to(torch.uint8).to(device)) for s in samples]
    return images, sizes, targets, tv_images, tv_targets


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def build(args):
    tv = torchvision_model(args.num_classes).to(args.device)
    settings = torchvision_settings("v1")["roi_heads"]
    settings.score_threshold = 0.0
    ours = mask_rcnn_from_torchvision(tv.state_dict(), "v1", roi_heads=settings,
                                      channels_last=not args.nchw).to(args.device)
    return tv, ours


def train_steps(tv, ours, inputs, device):
    images, sizes, targets, tv_images, tv_targets = inputs

    def ours_step():
        ours.zero_grad(set_to_none=True)
        losses = ours(images, sizes, box_targets_from_batch(targets))
        sum(losses.values()).backward()

    def tv_step():
        tv.zero_grad(set_to_none=True)
        losses = tv(tv_images, tv_targets)
        sum(losses.values()).backward()

    return ours_step, tv_step


def inference_steps(tv, ours, inputs, device):
    images, sizes, targets, tv_images, _ = inputs
    out_sizes = [tuple(t["orig_size"]) for t in targets]

    def ours_infer():
        with torch.no_grad():
            ours.postprocess(ours(images, sizes), sizes, out_sizes)

    def tv_infer():
        with torch.no_grad():
            tv(tv_images)

    return ours_infer, tv_infer


def non_network_parts(tv, ours, inputs, device) -> dict[str, tuple[Any, Any]]:
    """``name -> (ours, torchvision)`` closures over precomputed network outputs."""
    from torchvision.models.detection.image_list import ImageList
    from torchvision.models.detection.roi_heads import (
        maskrcnn_inference,
        project_masks_on_boxes,
    )

    images, sizes, targets, _, tv_targets = inputs
    box_targets = box_targets_from_batch(targets)
    parts: dict[str, tuple[Any, Any]] = {}
    with torch.no_grad():
        # ---- network outputs, shared
        feats = ours.features(images)
        logits, deltas = ours.rpn.head(feats)
        padded = tuple(images.shape[-2:])
        anchors = ours.rpn.anchors([tuple(f.shape[-2:]) for f in feats], padded)
        tv_list = ImageList(images, [tuple(s) for s in sizes.tolist()])
        tv_anchors = tv.rpn.anchor_generator(tv_list, feats)
        num_per_level = [a.shape[0] for a in anchors]
        tv_obj = torch.cat(logits, 1).reshape(-1, 1)
        tv_deltas = torch.cat(deltas, 1).reshape(-1, 4)
        all_anchors = torch.cat(anchors)

        feature_sizes = [tuple(f.shape[-2:]) for f in feats]

        def ours_anchor_targets():
            iou = ours.rpn.anchors.iou(box_targets.boxes.reshape(-1, 4), feature_sizes, padded)
            matches, labels = ours.rpn.label_anchors(all_anchors, box_targets, iou)
            pos, _ = sample_balanced(labels, 256, 0.5)
            bi, ai = torch.nonzero(pos, as_tuple=True)
            ours.rpn.box_coder.encode_single(box_targets.boxes[bi, matches[bi, ai]], all_anchors[ai])

        def tv_anchor_targets():
            labels, matched = tv.rpn.assign_targets_to_anchors(tv_anchors, tv_targets)
            tv.rpn.fg_bg_sampler(labels)
            tv.rpn.box_coder.encode(matched, tv_anchors)

        parts["anchor matching + sampling"] = (ours_anchor_targets, tv_anchor_targets)

        ours.train(), tv.train()

        def ours_proposals():
            return ours.rpn.select_proposals(anchors, logits, deltas, sizes)

        def tv_proposals():
            props = tv.rpn.box_coder.decode(tv_deltas, tv_anchors).view(2, -1, 4)
            return tv.rpn.filter_proposals(props, tv_obj, tv_list.image_sizes, num_per_level)[0]

        parts["proposal selection + NMS"] = (ours_proposals, tv_proposals)
        props, valid = ours_proposals()
        tv_props = tv_proposals()

        def ours_roi_targets():
            bi, boxes, _, gt, fg = ours.roi_heads.sample_proposals(props, valid, box_targets)
            fi = torch.nonzero(fg).squeeze(1)
            ours.roi_heads.box_coder.encode_single(box_targets.boxes[bi[fi], gt[fi]], boxes[fi])
            crop_mask_targets(box_targets.masks, boxes[fi], box_targets.mask_index[bi[fi], gt[fi]], 28, False, None,
                              mask_boxes=box_targets.boxes[box_targets.valid])

        def tv_roi_targets():
            p, matched, labels, _ = tv.roi_heads.select_training_samples([x.clone() for x in tv_props], tv_targets)
            for t, pp, m, lab in zip(tv_targets, p, matched, labels):
                pos = torch.where(lab > 0)[0]
                project_masks_on_boxes(t["masks"], pp[pos], m[pos], 28)

        parts["RoI matching + sampling + targets"] = (ours_roi_targets, tv_roi_targets)
        ours.eval(), tv.eval()

        props, valid = ours_proposals()
        bi, pi = torch.nonzero(valid, as_tuple=True)
        boxes = props[bi, pi]
        rois = torch.cat([bi[:, None].float(), boxes], 1)
        cls_logits, box_deltas = ours.roi_heads._box_outputs(feats[:4], rois)
        det = ours.roi_heads.select_detections(cls_logits, box_deltas, boxes, bi, sizes)
        det_rois = torch.cat([det.image_index[:, None].float(), det.boxes], 1)
        mask_logits_all = ours.roi_heads.mask_head(ours.roi_heads._pool(feats[:4], det_rois, 14))
        det.mask_probs = mask_logits_all[torch.arange(len(det.labels)), det.labels].sigmoid()
        out_sizes = [tuple(t["orig_size"]) for t in targets]
        tv_props_eval = [boxes[bi == i] for i in range(2)]
        # torchvision's classifier puts background first
        tv_cls = torch.cat([cls_logits[:, -1:], cls_logits[:, :-1]], 1)
        tv_box = torch.cat([torch.zeros_like(box_deltas[:, :4]), box_deltas], 1)
        tv_mask_logits = torch.cat([torch.zeros_like(mask_logits_all[:, :1]), mask_logits_all], 1)
        image_shapes = [tuple(s) for s in sizes.tolist()]

        def ours_post():
            d = ours.roi_heads.select_detections(cls_logits, box_deltas, boxes, bi, sizes)
            d.mask_probs = det.mask_probs[: len(d.labels)]
            ours.postprocess(d, sizes, out_sizes)

        def tv_post():
            b, s, lab = tv.roi_heads.postprocess_detections(tv_cls, tv_box, tv_props_eval, image_shapes)
            result = [dict(boxes=x, scores=y, labels=z) for x, y, z in zip(b, s, lab)]
            n = sum(len(x) for x in b)
            masks = maskrcnn_inference(tv_mask_logits[:n], [r["labels"] for r in result])
            for r, m in zip(result, masks):
                r["masks"] = m
            tv.transform.postprocess(result, image_shapes, out_sizes)

        parts["detections + mask pasting"] = (ours_post, tv_post)
    return parts


def peak_memory(side: str, args) -> float:
    """MiB of one training step (CUDA max allocated; CPU peak-RSS growth in a fresh process)."""
    cmd = [sys.executable, __file__, "--memory-side", side, "--size", str(args.size), "--instances",
           str(args.instances), "--device", args.device, "--num-classes", str(args.num_classes)] + \
        (["--nchw"] if args.nchw else [])
    return float(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()
                            .splitlines()[-1])["mib"])


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory_child(args) -> None:
    tv, ours = build(args)
    inputs = make_inputs(args.size, args.instances, args.num_classes, args.device)
    ours_step, tv_step = train_steps(tv.train(), ours.train(), inputs, args.device)
    step = ours_step if args.memory_side == "ours" else tv_step
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        mib = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        # reset the peak RSS (Linux clear_refs), so the step's own peak is measured
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _status_kib("VmRSS")
        step()
        mib = (_status_kib("VmHWM") - base) / 1024
    print(json.dumps({"mib": mib}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--instances", type=int, default=20)
    parser.add_argument("--num-classes", type=int, default=80)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--nchw", action="store_true", help="our model in torchvision's NCHW memory format "
                        "(default: channels-last, the model's default)")
    parser.add_argument("--memory-side", choices=["ours", "tv"], default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_side:
        memory_child(args)
        return
    torch.manual_seed(0)
    tv, ours = build(args)
    inputs = make_inputs(args.size, args.instances, args.num_classes, args.device)
    results: dict[str, tuple[list[float], list[float]]] = {}

    def measure(name, ours_fn, tv_fn, rounds):
        ours_fn(), tv_fn()  # warm-up
        o, t = [], []
        for r in range(rounds):
            first, second = (ours_fn, tv_fn) if r % 2 == 0 else (tv_fn, ours_fn)
            a, b = timed(first, args.device), timed(second, args.device)
            o.append(a if first is ours_fn else b)
            t.append(b if first is ours_fn else a)
        results[name] = (o, t)

    tv.train(), ours.train()
    measure("train step", *train_steps(tv, ours, inputs, args.device), args.rounds)
    tv.eval(), ours.eval()
    measure("inference (incl. pasting)", *inference_steps(tv, ours, inputs, args.device), args.rounds)
    parts = non_network_parts(tv, ours, inputs, args.device)
    for name, (o, t) in parts.items():
        measure(name, lambda o=o: o(), lambda t=t: t(), max(args.rounds, 5))
    print(f"device {args.device}, torch {torch.__version__}, images 2x{args.size}x{args.size}, "
          f"{args.instances} instances each, {args.num_classes} classes, ours "
          f"{'NCHW' if args.nchw else 'channels-last'}")
    print("| part | ours (s) | torchvision (s) | ratio |")
    print("|---|---|---|---|")
    total_o = total_t = 0.0
    for name, (o, t) in results.items():
        mo, mt = statistics.median(o), statistics.median(t)
        if name in parts:
            total_o, total_t = total_o + mo, total_t + mt
        print(f"| {name} | {mo:.4f} | {mt:.4f} | {mo / mt:.2f} |")
    print(f"| not the network, total | {total_o:.4f} | {total_t:.4f} | {total_o / total_t:.2f} |")
    del tv, ours
    mo, mt = peak_memory("ours", args), peak_memory("tv", args)
    print(f"| train step peak memory (MiB) | {mo:.0f} | {mt:.0f} | {mo / mt:.2f} |")


if __name__ == "__main__":
    main()

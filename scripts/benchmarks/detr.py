"""Training step and panoptic post-processing of our DETR against HF transformers' DETR.

Both sides are DETR's panoptic model with a timm ResNet-50 (random init, width 256, 6 encoder
and 6 decoder layers, 8 heads, feed-forward 2048, 100 queries, dropout 0.1 on attention
weights, activations and residual branches as DETR has it: HF's ``attention_dropout`` and
``activation_dropout`` default to 0 and are set to 0.1 here). HF's ``DetrForSegmentation`` is
built first; its state dict is loaded into ours (``load_hf_detr_weights``), so both hold the same
weights. Both freeze the stem and res2 as DETR does: HF means to (``DetrConvEncoder``) but skips
it for a timm backbone, whose config type is ``timm_backbone``, so this script freezes them.

Training step (forward + loss + backward) on the same batch: ``--batch`` random images of
``--size``² and ``--targets`` random rectangles per image, a quarter of them stuff (distinct
classes), the rest things, of 133 classes (COCO panoptic: 80 things, 53 stuff). HF computes its
own loss from ``labels`` (``class_labels``, normalised ``cxcywh`` ``boxes``, float ``masks``)
with its defaults, DETR's recipe: matching on class 1, L1 box 5, GIoU 2; cross-entropy with
no-object weight 0.1, L1 5, GIoU 2, focal 1 and dice 1 on masks at the last layer, class and box
losses at the other layers (``auxiliary_loss=True``). Ours: ``SetCriterion`` as
``DETRModule.configure_losses`` builds it (losses labels, boxes, dense_masks; matching and aux
layers on labels and boxes).

Post-processing: both get the same outputs, HF's model's in eval mode on the same images.
Random weights give no confident query, so the logits are shifted first: in each image
``--kept`` random queries (20 by default, about what a trained DETR keeps on COCO) get the
logit of their best real class raised so that its softmax score is uniform in
``(threshold, 1)`` (between 10 % and 90 % of the way); the other queries are left as they are.
HF: ``DetrImageProcessor.post_process_panoptic_segmentation`` with ``--threshold`` (DETR's 0.85),
``label_ids_to_fuse`` the stuff classes and target size the input size; ours:
``detr_panoptic_inference`` with the same threshold, output size the input size (no padding).
Random weights also give the kept queries near-identical masks, so each kept query's mask
logits are replaced by +8 on one of the image's target rectangles and -8 elsewhere, plus unit
noise (``region_masks``): both post-processings then find about one segment per kept query, as
with a trained model (the segment counts are printed).

Measured as in ``train_step.py``: in this process, interleaving the two sides, median over
``--iters`` runs after ``--warmup``, wall-clock and process CPU time (all threads), plus the ratio
of the fastest runs. Peak memory of a training step (CPU): each side runs one step in a forked
child that builds its model, resets the kernel's peak-RSS counter (``/proc/self/clear_refs`` ←
5), runs the step and reports ``VmHWM`` minus the RSS before the step. On CUDA,
``torch.cuda.max_memory_allocated`` over a second step after ``reset_peak_memory_stats``.
Targets: our step <= 1.0x HF's time and peak memory, our post-processing <= 0.2x HF's time.

    python scripts/benchmarks/detr.py --size 512 --batch 2 --targets 20 --iters 5
    python scripts/benchmarks/detr.py --device cuda --iters 20 --warmup 3
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch

PIXEL_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
PIXEL_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
TRAIN_TARGET, MEMORY_TARGET, POSTPROCESS_TARGET = 1.0, 1.0, 0.2


def stuff_classes(args: argparse.Namespace) -> list[int]:
    """Contiguous ids of the stuff classes (after the ``--things`` thing classes)."""
    return list(range(args.things, args.num_classes))


def make_batch(args: argparse.Namespace, device: torch.device) -> tuple[torch.Tensor, list[dict]]:
    """Images float ``[B, 3, S, S]`` in ``[0, 1]`` and per image ``--targets`` random rectangles.

    Each target dict holds ``masks`` bool ``[N, S, S]``, ``labels`` int64 ``[N]`` (a quarter
    distinct stuff classes, the rest thing classes), ``boxes`` float ``[N, 4]`` xyxy pixels and
    ``image_size`` ``(S, S)``.
    """
    g = torch.Generator().manual_seed(0)
    s, n = args.size, args.targets
    images = torch.rand(args.batch, 3, s, s, generator=g)
    stuff = torch.tensor(stuff_classes(args))
    targets = []
    for _ in range(args.batch):
        masks = torch.zeros(n, s, s, dtype=torch.bool)
        boxes = torch.zeros(n, 4)
        for k in range(n):
            y0, x0 = torch.randint(0, s // 2, (2,), generator=g).tolist()
            h, w = torch.randint(max(s // 8, 1), max(s // 2, 2), (2,), generator=g).tolist()
            masks[k, y0 : y0 + h, x0 : x0 + w] = True
            boxes[k] = torch.tensor([x0, y0, x0 + w, y0 + h], dtype=torch.float32)
        n_stuff = min(n // 4, len(stuff))
        labels = torch.cat([stuff[torch.randperm(len(stuff), generator=g)[:n_stuff]],
                            torch.randint(0, args.things, (n - n_stuff,), generator=g)])
        targets.append({"masks": masks.to(device), "labels": labels.to(device), "boxes": boxes.to(device),
                        "image_size": (s, s)})
    return images.to(device), targets


def hf_labels(targets: list[dict]) -> list[dict]:
    """HF's ``labels``: ``class_labels`` int64 ``[N]``, ``boxes`` float ``[N, 4]`` ``cxcywh`` in
    ``[0, 1]`` and ``masks`` float ``[N, H, W]``, from :func:`make_batch`'s targets."""
    out = []
    for t in targets:
        h, w = t["image_size"]
        x0, y0, x1, y1 = (t["boxes"] / t["boxes"].new_tensor([w, h, w, h])).unbind(-1)
        boxes = torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], -1)
        out.append({"class_labels": t["labels"], "boxes": boxes, "masks": t["masks"].float()})
    return out


def hf_model(args: argparse.Namespace):
    """HF ``DetrForSegmentation`` (random init, DETR's configuration and recipe), on the CPU, train mode."""
    import transformers
    from transformers import DetrConfig, DetrForSegmentation

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    config = DetrConfig(
        use_timm_backbone=True, backbone="resnet50", use_pretrained_backbone=False, num_labels=args.num_classes,
        d_model=256, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8, decoder_attention_heads=8,
        encoder_ffn_dim=2048, decoder_ffn_dim=2048, num_queries=100, dropout=0.1, attention_dropout=0.1,
        activation_dropout=0.1, auxiliary_loss=True,
    )
    model = DetrForSegmentation(config)
    # HF's own rule for ResNets (train layer2..layer4), which it does not apply to timm backbones
    for name, p in model.detr.model.backbone.model.named_parameters():
        if not any(stage in name for stage in ("layer2", "layer3", "layer4")):
            p.requires_grad_(False)
    return model.train()


def our_model(args: argparse.Namespace):
    """Our ``DETR`` with the weights of :func:`hf_model`, on the CPU, train mode."""
    from lightning_seg.models.detr import DETR, load_hf_detr_weights

    model = DETR(args.num_classes, backbone="resnet50", hidden_dim=256, nheads=8, enc_layers=6, dec_layers=6,
                 dim_feedforward=2048, dropout=0.1, num_queries=100, with_masks=True)
    load_hf_detr_weights(model, hf_model(args).state_dict())
    return model.train()


def build_ours(args: argparse.Namespace, device: torch.device):
    """Our model and ``SetCriterion`` (as ``DETRModule``); returns the model and a training-step closure."""
    from lightning_seg.losses import SetCriterion

    model = our_model(args).to(device)
    criterion = SetCriterion(args.num_classes, class_weight=1.0, mask_weight=1.0, dice_weight=1.0, eos_coef=0.1,
                             losses=("labels", "boxes", "dense_masks"), bbox_weight=5.0, giou_weight=2.0,
                             match_losses=("labels", "boxes"), aux_losses=("labels", "boxes")).to(device)
    images, targets = make_batch(args, device)

    def step() -> float:
        model.zero_grad(set_to_none=True)
        loss = criterion.total(criterion(model(images), targets))
        loss.backward()
        return float(loss.detach())

    return model, step


def build_hf(args: argparse.Namespace, device: torch.device):
    """HF's model with its own loss on the same batch; returns the model and a training-step closure."""
    model = hf_model(args).to(device)
    images, targets = make_batch(args, device)
    pixel_values = (images - PIXEL_MEAN.to(device)) / PIXEL_STD.to(device)
    labels = hf_labels(targets)

    def step() -> float:
        model.zero_grad(set_to_none=True)
        out = model(pixel_values=pixel_values, labels=labels)
        out.loss.backward()
        return float(out.loss.detach())

    return model, step


BUILDERS = {"ours": build_ours, "hf": build_hf}


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _cpu_peak_child(name: str, args: argparse.Namespace, queue: mp.Queue) -> None:
    torch.set_num_threads(args.threads)
    _, step = BUILDERS[name](args, torch.device("cpu"))
    before = _rss_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    step()
    queue.put((_rss_kib("VmHWM") - before) / 1024.0)


def peak_memory_mib(name: str, args: argparse.Namespace, device: torch.device) -> float:
    """Extra memory (MiB) one training step of ``name`` needs on ``device``."""
    if device.type == "cuda":
        model, step = BUILDERS[name](args, device)
        step()  # gradients exist from here on, as in training
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        del model, step
        torch.cuda.empty_cache()
        return peak
    # a fresh process per side, so that neither inherits the other's allocator state
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_cpu_peak_child, args=(name, args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def confident_logits(logits: torch.Tensor, kept: int, threshold: float, seed: int = 0
                     ) -> tuple[torch.Tensor, list[list[int]]]:
    """Copy of ``logits`` float ``[B, Q, K+1]`` where ``kept`` random queries per image pass ``threshold``,
    and those queries' indices per image.

    The chosen query's best real class ``c`` gets the logit ``logsumexp(others) + logit(p)``, so
    that its softmax score is exactly ``p``, drawn uniformly from ``threshold + (1 - threshold) *
    [0.1, 0.9]``; the other queries are unchanged.
    """
    g = torch.Generator().manual_seed(seed)
    out = logits.detach().float().clone()
    b, q, _ = out.shape
    chosen = []
    for i in range(b):
        chosen.append(torch.randperm(q, generator=g)[: min(kept, q)].tolist())
        for j in chosen[-1]:
            c = int(out[i, j, :-1].argmax())
            others = torch.cat([out[i, j, :c], out[i, j, c + 1 :]])
            p = threshold + (1 - threshold) * (0.1 + 0.8 * float(torch.rand((), generator=g)))
            out[i, j, c] = torch.logsumexp(others, 0) + math.log(p / (1 - p))
    return out.to(logits.device), chosen


def region_masks(masks: torch.Tensor, chosen: list[list[int]], targets: list[dict], seed: int = 0) -> torch.Tensor:
    """Copy of mask logits float ``[B, Q, h, w]`` where the ``chosen`` queries of image ``i`` cover
    its targets' rectangles: logits ``+8`` inside the query's rectangle, ``-8`` outside, plus noise
    of standard deviation 1, so both post-processings find about one segment per kept query (as
    with a trained model) instead of random weights' near-identical masks."""
    g = torch.Generator().manual_seed(seed)
    out = masks.detach().float().clone()
    h, w = out.shape[-2:]
    for i, queries in enumerate(chosen):
        regions = targets[i]["masks"].float()[:, None]
        regions = torch.nn.functional.interpolate(regions, size=(h, w), mode="nearest")[:, 0] > 0.5
        for n, j in enumerate(queries):
            inside = regions[n % regions.shape[0]].to(out.device)
            noise = torch.randn(h, w, generator=g).to(out.device)
            out[i, j] = torch.where(inside, 8.0, -8.0) + noise
    return out


def build_postprocess(args: argparse.Namespace, device: torch.device, hf, ours) -> dict[str, Callable[[], list]]:
    """The two post-processings of the same outputs (HF's eval-mode outputs on the batch, logits shifted by
    :func:`confident_logits`); returns zero-argument closures returning the per-image results."""
    from transformers import DetrImageProcessor
    from transformers.models.detr.modeling_detr import DetrSegmentationOutput

    from lightning_seg.ops.detr_panoptic import detr_panoptic_inference

    images, targets = make_batch(args, device)
    hf.eval()
    ours.eval()
    with torch.no_grad():
        out = hf(pixel_values=(images - PIXEL_MEAN.to(device)) / PIXEL_STD.to(device))
        mine = ours(images)
    hf.train()
    ours.train()
    print(f"same weights: max |ours - hf| logits {float((mine['pred_logits'] - out.logits).abs().max()):.2e}, "
          f"masks {float((mine['pred_masks'] - out.pred_masks).abs().max()):.2e}")
    logits, chosen = confident_logits(out.logits, args.kept, args.threshold)
    masks = region_masks(out.pred_masks, chosen, targets)
    scores, labels = logits.softmax(-1).max(-1)
    passing = ((labels != args.num_classes) & (scores > args.threshold)).sum(1).tolist()
    print(f"post-processing input: logits {tuple(logits.shape)}, masks {tuple(masks.shape)}, "
          f"queries above {args.threshold} per image: {passing}")
    processor = DetrImageProcessor()
    outputs = DetrSegmentationOutput(logits=logits, pred_masks=masks)
    size = (args.size, args.size)
    stuff = set(stuff_classes(args))
    things = list(range(args.things))

    def run_hf() -> list:
        return processor.post_process_panoptic_segmentation(outputs, threshold=args.threshold,
                                                            label_ids_to_fuse=stuff, target_sizes=[size] * args.batch)

    def run_ours() -> list:
        return detr_panoptic_inference(logits, masks, things, size, [size] * args.batch, [size] * args.batch,
                                       threshold=args.threshold)

    return {"ours": run_ours, "hf": run_hf}


def time_interleaved(fns: dict[str, Callable[[], object]], iters: int, warmup: int, device: torch.device
                     ) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, object]]:
    """Wall and process CPU seconds of each run, the sides interleaved so load changes hit both alike,
    and each side's last result."""
    last: dict[str, object] = {}
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0, c0 = time.perf_counter(), time.process_time()
            last[name] = fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return wall, cpu, last


def report(what: str, wall: dict[str, list[float]], cpu: dict[str, list[float]], target: float,
           extra: dict[str, str] | None = None) -> None:
    """Print each side's median wall / CPU time and the ratio ours/HF against ``target``."""
    med = {n: statistics.median(t) for n, t in wall.items()}
    med_cpu = {n: statistics.median(t) for n, t in cpu.items()}
    for name, times in wall.items():
        runs = ", ".join(f"{t:.3f}" for t in times)
        print(f"{what} {name:>4}: {med[name]:.4f} s (runs {runs}), CPU time {med_cpu[name]:.4f} s"
              + (f", {extra[name]}" if extra and name in extra else ""))
    ratio = med["ours"] / med["hf"]
    print(f"{what} time ratio ours/hf: {ratio:.3f} (median wall), {med_cpu['ours'] / med_cpu['hf']:.3f} "
          f"(median CPU), {min(wall['ours']) / min(wall['hf']):.3f} (fastest wall); "
          f"target <= {target}: {'holds' if ratio <= target else 'MISSED'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="square image side")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--targets", type=int, default=20, help="target segments per image")
    parser.add_argument("--num-classes", type=int, default=133)
    parser.add_argument("--things", type=int, default=80, help="classes 0..things-1 are things, the rest stuff")
    parser.add_argument("--threshold", type=float, default=0.85, help="class score of a kept query")
    parser.add_argument("--kept", type=int, default=20, help="queries per image shifted above the threshold")
    parser.add_argument("--iters", type=int, default=5, help="timed runs per side")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-train", action="store_true", help="time the post-processing only")
    parser.add_argument("--skip-postprocess", action="store_true")
    args = parser.parse_args()
    if args.iters < 1 or not 0 < args.threshold < 1:
        parser.error("--iters must be >= 1 and --threshold in (0, 1)")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)

    import timm
    import transformers

    print(f"torch {torch.__version__}, timm {timm.__version__}, transformers {transformers.__version__}; "
          f"device {device} ({args.threads} threads); batch {args.batch}x3x{args.size}x{args.size}, "
          f"{args.targets} targets/image, {args.num_classes} classes ({args.things} things)")
    memory: dict[str, float] = {}
    if not args.skip_memory and not args.skip_train:
        for name in BUILDERS:
            memory[name] = peak_memory_mib(name, args, device)

    models, steps = {}, {}
    for name, build in BUILDERS.items():
        models[name], steps[name] = build(args, device)
        n_all = sum(p.numel() for p in models[name].parameters())
        n_train = sum(p.numel() for p in models[name].parameters() if p.requires_grad)
        print(f"{name}: {n_all:,} parameters, {n_train:,} trained")

    if not args.skip_train:
        wall, cpu, losses = time_interleaved(steps, args.iters, args.warmup, device)
        extra = {n: f"{args.batch / statistics.median(wall[n]):.2f} images/s, loss {losses[n]:.3f}"
                 + (f", peak step memory {memory[n]:.0f} MiB" if n in memory else "") for n in steps}
        report("train step", wall, cpu, TRAIN_TARGET, extra)
        if memory:
            ratio = memory["ours"] / memory["hf"]
            print(f"train step memory ratio ours/hf: {ratio:.3f}; target <= {MEMORY_TARGET}: "
                  f"{'holds' if ratio <= MEMORY_TARGET else 'MISSED'}")

    if not args.skip_postprocess:
        fns = build_postprocess(args, device, models["hf"], models["ours"])
        wall, cpu, results = time_interleaved(fns, args.iters, args.warmup, device)
        ours_n = [len(r["segments_info"]) for r in results["ours"]]
        # HF lists a fused stuff segment once per query
        hf_n = [len({s["id"] for s in r["segments_info"]}) for r in results["hf"]]
        report("post-process", wall, cpu, POSTPROCESS_TARGET,
               {"ours": f"segments per image {ours_n}", "hf": f"segments per image {hf_n}"})


if __name__ == "__main__":
    main()

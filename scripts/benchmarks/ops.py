"""Benchmark lightning_seg.ops / SetCriterion against HF transformers' Mask2Former code.

Both sides run in this process on the same inputs, in alternating rounds (see ``compare``);
each line prints our median time, the reference's, the median within-round ratio (ours /
reference, lower is better) with its range over rounds, and the peak memory growth of one
extra call (CUDA: allocator peak; CPU: resident-set high-water mark of that call run in a
forked single-threaded child). ``criterion, HF's point draws`` runs ``SetCriterion`` with
``shared_points=False`` (fresh points per layer and per mask, as HF draws them).

Two options compare our own defaults against a reference setting of the same op, with the
same ``compare`` (alternating rounds, ratio default / reference):

* ``--chunks``: the matcher's cost (``mask_matching_costs``, same points and targets on both
  sides) with the default ``chunk_elements`` (see ``point_mask_costs``: on CPU chunks of
  images of a few MiB of point logits) against one pass over the whole batch
  (``chunk_elements = B*Q*P``).
* ``--bands``: panoptic, instance and semantic inference with the default ``band_budget``
  (see ``band_budget_for``: cache-sized bands on CPU) against ``band_budget=2**24``.

On an accelerator the defaults already are one pass / ``2**24``, so both print about 1 there.

    python scripts/benchmarks/ops.py                      # full sizes (a few minutes on CPU)
    python scripts/benchmarks/ops.py --batch 2 --aux 2    # quick
    python scripts/benchmarks/ops.py --only matcher --chunks
    python scripts/benchmarks/ops.py --only inference --bands
"""

from __future__ import annotations

import argparse
import ctypes
import multiprocessing as mp
import os
import platform
import time
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from lightning_seg.losses import SetCriterion
from lightning_seg.ops import (
    instance_inference,
    mask_matching_costs,
    match_masks,
    matrix_nms,
    panoptic_inference,
    semantic_inference,
    solve_assignment,
)
from lightning_seg.ops.point_sampling import rand_points_row_major


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _peak_child(fn, queue) -> None:
    # libgomp cannot start a thread pool in a child forked after the parent used one.
    torch.set_num_threads(1)
    # Hand freed heap memory back to the kernel first: memory the parent freed but kept
    # mapped would otherwise be reused without raising the resident set, hiding the peak.
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    base = _rss_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark to the current resident set
    fn()
    queue.put((_rss_kib("VmHWM") - base) / 1024.0)


def peak_memory_mib(fn, device: torch.device) -> float:
    """Extra memory one call of ``fn`` needs, in MiB.

    CUDA: allocator peak minus allocated before. CPU: the call runs once in a forked child
    (single-threaded) that first returns free heap memory to the kernel (``malloc_trim``);
    the figure is the kernel's resident-set high-water mark minus the resident set before
    the call, so memory cached by earlier calls cannot hide a peak.
    """
    if not MEASURE_MEMORY:
        return float("nan")
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_peak_child, args=(fn, queue))
    proc.start()
    peak = queue.get()
    proc.join()
    return peak


WARMUP = 1
MEASURE_MEMORY = True


def _seconds(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def compare(name: str, ours_fn, ref_fn, device: torch.device, repeats: int, ref_name: str = "HF",
            ours_name: str = "ours") -> None:
    """Time ``ours_fn`` against ``ref_fn`` in alternating rounds and print one line.

    After ``WARMUP`` calls of each, every round runs both once, alternating which goes first,
    so load drift and allocator state (which call pays for fresh pages) fall on both sides.
    Printed: median seconds of each side, the median over rounds of the within-round ratio
    ours / reference (lower is better), and the peak memory of one extra call of each.
    """
    for _ in range(WARMUP):
        ours_fn()
        ref_fn()
    ours, ref, ratios = [], [], []
    for r in range(repeats):
        if r % 2 == 0:
            a = _seconds(ours_fn, device)
            b = _seconds(ref_fn, device)
        else:
            b = _seconds(ref_fn, device)
            a = _seconds(ours_fn, device)
        ours.append(a)
        ref.append(b)
        ratios.append(a / b)
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    ours_mem, ref_mem = peak_memory_mib(ours_fn, device), peak_memory_mib(ref_fn, device)
    print(
        f"{name:<34} {ours_name} {med(ours) * 1e3:9.1f} ms  peak {ours_mem:7.1f} MiB | {ref_name} "
        f"{med(ref) * 1e3:9.1f} ms  peak {ref_mem:7.1f} MiB | ratio {med(ratios):.3f} "
        f"(rounds {min(ratios):.3f}-{max(ratios):.3f})",
        flush=True,
    )


def make_problem(args, device):
    g = torch.Generator().manual_seed(0)
    b, q, k = args.batch, args.queries, args.classes
    logits = torch.randn(b, q, k + 1, generator=g).to(device)
    masks = torch.randn(b, q, args.mask, args.mask, generator=g).to(device)
    aux = [
        {"pred_logits": torch.randn(b, q, k + 1, generator=g).to(device),
         "pred_masks": torch.randn(b, q, args.mask, args.mask, generator=g).to(device)}
        for _ in range(args.aux)
    ]
    targets = []
    s = args.image
    for i in range(b):
        n = args.targets
        # Rectangles of random size, a realistic mix of small and large segments.
        m = torch.zeros(n, s, s, dtype=torch.bool)
        ys, xs = torch.randint(0, s // 2, (2, n), generator=g)
        hs, ws = torch.randint(8, s // 2, (2, n), generator=g)
        for j in range(n):
            m[j, ys[j] : ys[j] + hs[j], xs[j] : xs[j] + ws[j]] = True
        targets.append({"masks": m.to(device), "labels": torch.randint(0, k, (n,), generator=g).to(device)})
    return logits, masks, aux, targets


def bench_training(args, device, criterion: bool = True):
    from transformers import Mask2FormerConfig
    from transformers.models.mask2former.modeling_mask2former import Mask2FormerHungarianMatcher, Mask2FormerLoss

    logits, masks, aux, targets = make_problem(args, device)
    t = max(len(x["labels"]) for x in targets)
    labels = torch.stack([x["labels"] for x in targets])
    tmasks = torch.stack([x["masks"] for x in targets])
    valid = torch.ones(args.batch, t, dtype=torch.bool, device=device)
    hf_masks = [x["masks"].float() for x in targets]
    hf_labels = [x["labels"] for x in targets]

    hf = Mask2FormerHungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=args.points)
    for solver in ("scipy", "torch"):
        compare(f"matcher (solver={solver})",
                lambda: match_masks(logits, masks, labels, tmasks, valid, num_points=args.points, solver=solver),
                lambda: hf(masks, logits, hf_masks, hf_labels), device, args.repeats)

    cost = torch.rand(args.batch, args.queries, t, generator=torch.Generator().manual_seed(1)).to(device)
    compare("assignment only: torch vs scipy", lambda: solve_assignment(cost, solver="torch"),
            lambda: solve_assignment(cost, solver="scipy"), device, args.repeats, "scipy")

    if args.chunks:
        # The matcher's cost at fixed points (drawn once, row-major as match_masks draws them),
        # default chunks against the whole batch in one pass; the solver is not timed.
        points = rand_points_row_major(args.batch, args.points, generator=torch.Generator().manual_seed(4)).to(device)
        one_pass = args.batch * args.queries * args.points

        @torch.no_grad()
        def matcher_cost(chunk_elements):
            return mask_matching_costs(logits, masks, labels, tmasks, points, 2.0, 5.0, 5.0,
                                       chunk_elements=chunk_elements, row_ordered=True)

        compare("matcher cost: default chunks", lambda: matcher_cost(None), lambda: matcher_cost(one_pass),
                device, args.repeats, f"one pass (chunk_elements={one_pass})", "default")

    if not criterion:
        return

    crit = SetCriterion(num_classes=args.classes, num_points=args.points).to(device)
    cfg = Mask2FormerConfig(num_labels=args.classes, train_num_points=args.points, oversample_ratio=3.0,
                            importance_sample_ratio=0.75, class_weight=2.0, mask_weight=5.0, dice_weight=5.0,
                            no_object_weight=0.1)
    hf_loss = Mask2FormerLoss(cfg, weight_dict={}).to(device)

    def make_leaves():
        return [x.detach().clone().requires_grad_() for x in (logits, masks)], [
            {k: v.detach().clone().requires_grad_() for k, v in a.items()} for a in aux
        ]

    # One set of leaves per side, made once: copying 10 layers of masks (0.5 GiB) in every
    # timed call would add the same harness cost to both sides.
    our_leaves, hf_leaves = make_leaves(), make_leaves()

    def leaves(which):
        (lg, mk), ax = which
        for x in [lg, mk, *(v for a in ax for v in a.values())]:
            x.grad = None
        return which

    def ours_step(criterion=crit):
        (lg, mk), ax = leaves(our_leaves)
        criterion.total(criterion({"pred_logits": lg, "pred_masks": mk, "aux_outputs": ax}, targets)).backward()

    per_mask = SetCriterion(num_classes=args.classes, num_points=args.points, shared_points=False).to(device)

    def ours_step_per_mask():
        ours_step(per_mask)

    def hf_step():
        (lg, mk), ax = leaves(hf_leaves)
        out = hf_loss(mk, lg, hf_masks, hf_labels,
                      [{"masks_queries_logits": a["pred_masks"], "class_queries_logits": a["pred_logits"]} for a in ax])
        w = {"loss_cross_entropy": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}
        sum(w[k.rsplit("_", 1)[0] if k[-1].isdigit() else k] * v for k, v in out.items()).backward()

    global WARMUP
    WARMUP, saved = args.criterion_warmup, WARMUP
    compare(f"criterion fwd+bwd ({args.aux} aux)", ours_step, hf_step, device, args.criterion_repeats)
    if args.criterion_repeats > 1:
        compare(f"criterion, HF's point draws ({args.aux} aux)", ours_step_per_mask, hf_step, device,
                args.criterion_repeats)
    WARMUP = saved


def bench_inference(args, device):
    from transformers.models.mask2former.image_processing_mask2former import Mask2FormerImageProcessor

    g = torch.Generator().manual_seed(2)
    b, q, k = args.batch, args.queries, args.classes
    logits = (torch.randn(b, q, k + 1, generator=g) * 3).to(device)
    masks = (torch.randn(b, q, args.infer_mask, args.infer_mask, generator=g) * 3).to(device)
    size = (args.infer_out, args.infer_out)
    outputs = SimpleNamespace(class_queries_logits=logits, masks_queries_logits=masks)
    proc = Mask2FormerImageProcessor()
    things = list(range(80))
    sizes = dict(padded_size=size, image_sizes=[size] * b, orig_sizes=[size] * b)
    # band_budget=None: the op's default for the device.
    ours = {
        "panoptic": lambda band_budget=None: panoptic_inference(
            logits, masks, things, object_mask_threshold=0.8, band_budget=band_budget, **sizes),
        "instance": lambda band_budget=None: instance_inference(
            logits, masks, topk=q, score_threshold=0.5, drop_empty=True, band_budget=band_budget, **sizes),
        "semantic": lambda band_budget=None: semantic_inference(logits, masks, band_budget=band_budget, **sizes),
    }
    compare("panoptic inference", ours["panoptic"],
            lambda: proc.post_process_panoptic_segmentation(outputs, threshold=0.8, target_sizes=[size] * b,
                                                            label_ids_to_fuse=set(range(80, k))),
            device, args.repeats)
    compare("instance inference (top-100)", ours["instance"],
            lambda: proc.post_process_instance_segmentation(outputs, threshold=0.5, target_sizes=[size] * b,
                                                            return_binary_maps=True),
            device, args.repeats)
    compare("semantic inference", ours["semantic"],
            lambda: proc.post_process_semantic_segmentation(outputs, target_sizes=[size] * b),
            device, args.repeats)
    if args.bands:
        for task, fn in ours.items():
            compare(f"{task} inference: default bands", fn, lambda fn=fn: fn(1 << 24), device, args.repeats,
                    "band_budget=2**24", "default")


def _matrix_nms_per_image(masks, scores, labels, sigma=2.0):
    """mmdetection-style single-image matrix NMS (unchunked), looped over images."""
    out = []
    for m, s, lab in zip(masks, scores, labels):
        s, order = s.sort(descending=True)
        flat = m[order].flatten(1).float()
        lab = lab[order]
        area = flat.sum(1)
        inter = flat @ flat.T
        iou = (inter / (area[:, None] + area[None, :] - inter)).triu(1)
        same = (lab[:, None] == lab[None, :]).triu(1)
        d = iou * same
        comp = d.max(0)[0][:, None].expand_as(d)
        coeff = (torch.exp(-sigma * d**2) / torch.exp(-sigma * comp**2)).min(0)[0]
        out.append(s * coeff)
    return out


def bench_matrix_nms(args, device):
    g = torch.Generator().manual_seed(3)
    b, n, h, w = args.nms_batch, args.nms_masks, args.nms_height, args.nms_width
    masks = torch.zeros(b, n, h, w, dtype=torch.bool)
    ys = torch.randint(0, h // 2, (b, n), generator=g)
    xs = torch.randint(0, w // 2, (b, n), generator=g)
    for i in range(b):
        for j in range(n):
            masks[i, j, ys[i, j] : ys[i, j] + h // 4, xs[i, j] : xs[i, j] + w // 4] = True
    masks = masks.to(device)
    scores = torch.rand(b, n, generator=g).to(device)
    labels = torch.randint(0, 80, (b, n), generator=g).to(device)
    compare(f"matrix NMS {b}x{n} masks {h}x{w}", lambda: matrix_nms(masks, scores, labels),
            lambda: _matrix_nms_per_image(masks, scores, labels), device, args.repeats, "per-image loop")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--classes", type=int, default=133)
    p.add_argument("--targets", type=int, default=30)
    p.add_argument("--image", type=int, default=512, help="target mask size")
    p.add_argument("--mask", type=int, default=128, help="predicted mask size (training)")
    p.add_argument("--points", type=int, default=12544)
    p.add_argument("--aux", type=int, default=9)
    p.add_argument("--infer-mask", type=int, default=160)
    p.add_argument("--infer-out", type=int, default=640)
    p.add_argument("--nms-batch", type=int, default=1)
    p.add_argument("--nms-masks", type=int, default=500)
    p.add_argument("--nms-height", type=int, default=200)
    p.add_argument("--nms-width", type=int, default=333)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--no-memory", action="store_true", help="skip the (one extra call) memory runs")
    p.add_argument("--criterion-repeats", type=int, default=1)
    p.add_argument("--criterion-warmup", type=int, default=0, help="the matcher runs warm up most of it")
    p.add_argument("--only", choices=["training", "matcher", "inference", "nms"], default=None,
                   help="one group; 'matcher': the matcher and assignment lines of 'training', no criterion")
    p.add_argument("--chunks", action="store_true",
                   help="also time the matcher cost with the default chunk_elements against one pass (B*Q*P)")
    p.add_argument("--bands", action="store_true",
                   help="also time the three inference ops with the default band_budget against 2**24")
    args = p.parse_args()
    if args.chunks and args.only not in (None, "training", "matcher"):
        p.error("--chunks runs with the matcher: use it without --only or with --only matcher/training")
    if args.bands and args.only not in (None, "inference"):
        p.error("--bands runs with inference: use it without --only or with --only inference")
    device = torch.device(args.device)
    global WARMUP, MEASURE_MEMORY
    WARMUP = args.warmup
    MEASURE_MEMORY = not args.no_memory
    import transformers

    print(f"device={device} ({platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}) "
          f"torch {torch.__version__} transformers {transformers.__version__}")
    print(f"sizes: {vars(args)}")
    if args.only in (None, "training", "matcher"):
        bench_training(args, device, criterion=args.only != "matcher")
    if args.only in (None, "inference"):
        bench_inference(args, device)
    if args.only in (None, "nms"):
        bench_matrix_nms(args, device)


if __name__ == "__main__":
    main()

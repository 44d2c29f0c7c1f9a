"""Training-step cost of our Mask2Former against HF transformers' Mask2Former.

Both models are Mask2Former with a timm ResNet-50 backbone (random init, identical
configuration: 100 queries, 9 decoder layers, 6 deformable encoder layers, width 256) and
their own Hungarian set criterion (12544 sampled points, class/mask/dice weights 2/5/5). They
get the same batch of images and the same targets. One "step" is forward + loss + backward.

Time: in this process, interleaving the two models, median over ``--iters`` steps after
``--warmup`` steps, both wall-clock and process CPU time (all threads), plus the ratio of the fastest
steps — on a machine shared with other jobs the fastest step is the least disturbed one. Peak memory (CPU): each side runs one step in a forked child that builds
its model, resets the kernel's peak-RSS counter (``/proc/self/clear_refs`` ← 5), runs the step
and reports ``VmHWM`` minus the RSS before the step — the extra resident memory the step
needed. On CUDA, ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``.

With ``--decoders-only`` both sides skip backbone and criterion: the same ResNet-50 features
go through each pixel decoder and transformer decoder, and the same simple loss (mean square
of every layer's class and mask logits) is back-propagated — the model code that differs.

    python scripts/benchmarks/train_step.py --size 384 --batch 2 --iters 3
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402

PIXEL_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
PIXEL_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def make_batch(args: argparse.Namespace, device: torch.device) -> tuple[torch.Tensor, list[dict]]:
    """Random images in [0, 1] and, per image, ``--segments`` random rectangles with labels."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(args.batch, 3, args.size, args.size, generator=g)
    targets = []
    for i in range(args.batch):
        masks = torch.zeros(args.segments, args.size, args.size, dtype=torch.bool)
        for n in range(args.segments):
            y0, x0 = torch.randint(0, args.size // 2, (2,), generator=g).tolist()
            h, w = torch.randint(args.size // 8, args.size // 2, (2,), generator=g).tolist()
            masks[n, y0 : y0 + h, x0 : x0 + w] = True
        labels = torch.randint(0, args.num_classes, (args.segments,), generator=g)
        targets.append({"masks": masks.to(device), "labels": labels.to(device), "image_id": i})
    return images.to(device), targets


def build_ours(args: argparse.Namespace, device: torch.device):
    """Our model and criterion; returns a zero-argument training-step closure."""
    from lightning_seg.losses import SetCriterion
    from lightning_seg.models.mask_classification import Mask2Former

    torch.manual_seed(0)
    model = Mask2Former(args.num_classes, backbone="resnet50").to(device).train()
    criterion = SetCriterion(args.num_classes, num_points=args.num_points).to(device)
    images, targets = make_batch(args, device)

    def step() -> float:
        model.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            out = model(images)
        loss = criterion.total(criterion(out, targets))
        loss.backward()
        return float(loss.detach())

    return model, step


def build_hf(args: argparse.Namespace, device: torch.device):
    """HF ``Mask2FormerForUniversalSegmentation`` with the same configuration and batch."""
    import transformers
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, TimmBackboneConfig

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    config = Mask2FormerConfig(
        backbone_config=TimmBackboneConfig(backbone="resnet50", out_indices=(1, 2, 3, 4)),
        num_labels=args.num_classes,
        num_queries=100,
        decoder_layers=10,  # HF counts the initial prediction: 9 attention layers
        train_num_points=args.num_points,
    )
    model = Mask2FormerForUniversalSegmentation(config).to(device).train()
    images, targets = make_batch(args, device)
    pixel_values = (images - PIXEL_MEAN.to(device)) / PIXEL_STD.to(device)
    mask_labels = [t["masks"].float() for t in targets]
    class_labels = [t["labels"] for t in targets]

    def step() -> float:
        model.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            out = model(pixel_values=pixel_values, mask_labels=mask_labels, class_labels=class_labels)
        out.loss.backward()
        return float(out.loss.detach())

    return model, step


def _square_loss(logits: list[torch.Tensor], masks: list[torch.Tensor]) -> torch.Tensor:
    return sum(m.float().square().mean() for m in masks) + sum(g.float().square().mean() for g in logits)


def _backbone_features(args: argparse.Namespace, device: torch.device) -> list[torch.Tensor]:
    from lightning_seg.models.backbone import Backbone

    torch.manual_seed(0)
    images, _ = make_batch(args, device)
    with torch.no_grad():
        return Backbone("resnet50").to(device)(images)


def build_ours_decoders(args: argparse.Namespace, device: torch.device):
    """Our pixel decoder + masked-attention decoder on fixed backbone features."""
    from lightning_seg.models.mask_classification import Mask2Former

    torch.manual_seed(0)
    model = Mask2Former(args.num_classes, backbone="resnet50").to(device).train()
    feats = _backbone_features(args, device)

    def step() -> float:
        model.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            mask_features, multi_scale = model.pixel_decoder(feats)
            out = model.transformer_decoder(multi_scale, mask_features)
        layers = [out, *out["aux_outputs"]]
        loss = _square_loss([o["pred_logits"] for o in layers], [o["pred_masks"] for o in layers])
        loss.backward()
        return float(loss.detach())

    return model, step


def build_hf_decoders(args: argparse.Namespace, device: torch.device):
    """HF's pixel decoder + transformer module (+ class head) on the same features."""
    model, _ = build_hf(args, device)
    feats = _backbone_features(args, device)

    def step() -> float:
        model.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            pix = model.model.pixel_level_module.decoder(feats)
            dec = model.model.transformer_module(pix.multi_scale_features, pix.mask_features)
            logits = [model.class_predictor(h.transpose(0, 1)) for h in dec.intermediate_hidden_states]
        loss = _square_loss(logits, list(dec.masks_queries_logits))
        loss.backward()
        return float(loss.detach())

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
        step()
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        del model, step
        torch.cuda.empty_cache()
        return peak
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_cpu_peak_child, args=(name, args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=384, help="square image side")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--segments", type=int, default=8, help="target segments per image")
    parser.add_argument("--num-classes", type=int, default=133)
    parser.add_argument("--num-points", type=int, default=12544)
    parser.add_argument("--iters", type=int, default=3, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="autocast the forward pass to bfloat16")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--decoders-only", action="store_true", help="time only the decoders (see above)")
    args = parser.parse_args()
    if args.decoders_only:
        BUILDERS.update(ours=build_ours_decoders, hf=build_hf_decoders)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)

    import timm
    import transformers

    print(
        f"torch {torch.__version__}, timm {timm.__version__}, transformers {transformers.__version__}; "
        f"device {device} ({args.threads} threads); batch {args.batch}x3x{args.size}x{args.size}, "
        f"{args.segments} segments/image, {args.num_classes} classes, {args.num_points} points, bf16={args.bf16}"
        + (", decoders only" if args.decoders_only else "")
    )
    memory = {}
    if not args.skip_memory:
        for name in BUILDERS:
            memory[name] = peak_memory_mib(name, args, device)

    if args.skip_timing:
        for name, mib in memory.items():
            print(f"{name:>5}: peak step memory {mib:.0f} MiB")
        if memory:
            print(f"memory ratio ours/hf: {memory['ours'] / memory['hf']:.3f}")
        return
    steps = {}
    for name, build in BUILDERS.items():
        model, steps[name] = build(args, device)
        print(f"{name}: {sum(p.numel() for p in model.parameters()):,} parameters")
    for name, step in steps.items():
        for _ in range(args.warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    cpu_times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.iters):
        for name, step in steps.items():  # interleaved so load changes hit both sides alike
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0, c0 = time.perf_counter(), time.process_time()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
            cpu_times[name].append(time.process_time() - c0)

    med = {name: statistics.median(t) for name, t in times.items()}
    med_cpu = {name: statistics.median(t) for name, t in cpu_times.items()}
    for name in steps:
        line = f"{name:>5}: step {med[name]:.3f} s (runs {', '.join(f'{t:.2f}' for t in times[name])})"
        line += f", {args.batch / med[name]:.2f} images/s, CPU time {med_cpu[name]:.3f} s"
        if name in memory:
            line += f", peak step memory {memory[name]:.0f} MiB"
        print(line)
    fastest = {name: min(t) for name, t in times.items()}
    print(
        f"time ratio ours/hf: {med['ours'] / med['hf']:.3f} (median wall), "
        f"{med_cpu['ours'] / med_cpu['hf']:.3f} (median CPU), {fastest['ours'] / fastest['hf']:.3f} (fastest wall)"
    )
    if memory:
        print(f"memory ratio ours/hf: {memory['ours'] / memory['hf']:.3f}")


if __name__ == "__main__":
    main()

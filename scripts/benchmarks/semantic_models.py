"""Benchmark the per-pixel semantic models against torchvision and segmentation_models_pytorch.

Each pair runs ours and the reference on the same input in this process, with the same
backbone (a torchvision-layout ResNet-50) and the same head, and prints parameters, forward
FLOPs (``torch.utils.flop_counter``; one multiply-add = 2 FLOPs) and the best and median
forward times. Each timed round runs both models back to back (alternating which goes first),
and the ratio is the median over rounds of ours / reference within the round (lower is
better): a paired statistic, so a change in machine load between rounds cancels out.
Each pair is one network twice: the reference's weights load into ours and give the same
logits, as ``tests/models/test_semantic_models.py`` (FCN, DeepLabV3) and
``tests/models/test_smp_parity.py`` (U-Net, DeepLabV3+: the options below, on a smaller
encoder or narrower ASPP) check.
``--ours-only`` adds our other models with their default (timm) backbone, with no reference.

    python scripts/benchmarks/semantic_models.py                         # 512x512, all pairs
    python scripts/benchmarks/semantic_models.py --size 256 --repeats 3  # quick
    python scripts/benchmarks/semantic_models.py --pairs fcn deeplabv3 --device cuda
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lightning_seg.models import FCN, DeepLabV3, DeepLabV3Plus, SemanticFPN, UNet

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
K = 150  # ADE20K


class Normalised(nn.Module):
    """Reference models take normalised images; ours normalise inside, so time that for them too."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", MEAN.clone())
        self.register_buffer("std", STD.clone())

    def forward(self, x: torch.Tensor):
        """Images float ``[B, 3, H, W]`` in ``[0, 1]`` -> the wrapped model's output."""
        return self.model((x - self.mean) / self.std)


def _smp():
    """segmentation_models_pytorch, or None when it is not installed."""
    try:
        import segmentation_models_pytorch as smp
    except ImportError:
        return None
    return smp


def pairs() -> dict[str, tuple[Callable[[], nn.Module], Callable[[], nn.Module] | None, str]]:
    """name -> (ours, reference or None, reference description)."""
    seg = torchvision.models.segmentation
    smp = _smp()
    out = {
        "fcn": (
            lambda: FCN(K, backbone="resnet50", backbone_source="torchvision", output_stride=8, aux_head=True),
            lambda: Normalised(seg.fcn_resnet50(weights=None, weights_backbone=None, num_classes=K, aux_loss=True)),
            "torchvision fcn_resnet50 (aux)",
        ),
        "deeplabv3": (
            lambda: DeepLabV3(K, backbone="resnet50", backbone_source="torchvision", output_stride=8, aux_head=True),
            lambda: Normalised(seg.deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=K, aux_loss=True)),
            "torchvision deeplabv3_resnet50 (aux)",
        ),
        "unet": (
            lambda: UNet(K, backbone="resnet50", backbone_source="torchvision", decoder_channels=(256, 128, 64, 32, 16),
                         upsampling="nearest", classifier_kernel_size=3),
            (lambda: Normalised(smp.Unet("resnet50", encoder_weights=None, classes=K))) if smp else None,
            "smp Unet resnet50",
        ),
        "deeplabv3plus": (
            lambda: DeepLabV3Plus(K, backbone="resnet50", backbone_source="torchvision", output_stride=16,
                                  aspp_rates=(12, 24, 36), aspp_separable=True, post_aspp_conv=True, decoder_convs=1,
                                  decoder_separable=True, dropout=0.0, align_corners=True, uniform_dilation=True),
            (lambda: Normalised(smp.DeepLabV3Plus("resnet50", encoder_weights=None, classes=K))) if smp else None,
            "smp DeepLabV3Plus resnet50",
        ),
    }
    return out


def ours_only() -> dict[str, Callable[[], nn.Module]]:
    """Our models with their default configuration (timm ResNet-50)."""
    return {
        "fcn (timm r50, os8)": lambda: FCN(K),
        "unet (timm r50)": lambda: UNet(K),
        "deeplabv3 (timm r50, os8)": lambda: DeepLabV3(K),
        "deeplabv3plus (timm r50, os16)": lambda: DeepLabV3Plus(K),
        "semantic_fpn (timm r50)": lambda: SemanticFPN(K),
    }


def count_flops(model: nn.Module, x: torch.Tensor) -> int:
    """Forward FLOPs, counted on a meta-device copy so counting costs no compute."""
    meta = copy.deepcopy(model).to("meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        meta(torch.empty_like(x, device="meta"))
    return counter.get_total_flops()


def time_once(model: nn.Module, x: torch.Tensor) -> float:
    """Seconds for one inference forward of ``model`` on ``x``."""
    if x.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.no_grad():
        model(x)
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def params_m(model: nn.Module) -> float:
    """Number of parameters, in millions."""
    return sum(p.numel() for p in model.parameters()) / 1e6


def main() -> None:
    """Parse the command line, run the pairs and print one table row per model."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="input height and width")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (one forward per model each)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--pairs", nargs="*", default=None, help="subset of: fcn deeplabv3 unet deeplabv3plus")
    parser.add_argument("--ours-only", action="store_true", help="also time our default-config models")
    parser.add_argument("--no-flops", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    x = torch.rand(args.batch, 3, args.size, args.size, device=device)
    smp = _smp()
    print(f"device={device} threads={torch.get_num_threads()} cpu={platform.processor() or platform.machine()} "
          f"torch={torch.__version__} torchvision={torchvision.__version__} "
          f"smp={getattr(smp, '__version__', 'not installed')} input={tuple(x.shape)}")
    header = (f"{'model':32s} {'params M':>9s} {'GFLOPs':>8s} {'best s':>7s} {'med s':>7s} | "
              f"{'reference':36s} {'params M':>9s} {'GFLOPs':>8s} {'best s':>7s} {'med s':>7s} | ratio (paired median)")
    print(header)
    table = pairs()
    for name in args.pairs or list(table):
        make_ours, make_ref, ref_name = table[name]
        ours = make_ours().to(device).eval()
        ref = make_ref().to(device).eval() if make_ref else None
        models = [ours] + ([ref] if ref is not None else [])
        flops = [0 if args.no_flops else count_flops(m, x) for m in models]
        for _ in range(args.warmup):
            for m in models:
                time_once(m, x)
        times: list[list[float]] = [[] for _ in models]
        for r in range(args.repeats):
            # Alternate the order so neither model always runs right after the other.
            order = list(range(len(models))) if r % 2 == 0 else list(reversed(range(len(models))))
            for i in order:
                times[i].append(time_once(models[i], x))
        med = [statistics.median(t) for t in times]
        best = [min(t) for t in times]
        line = f"{name:32s} {params_m(ours):9.2f} {flops[0] / 1e9:8.1f} {best[0]:7.3f} {med[0]:7.3f} | "
        if ref is not None:
            line += (f"{ref_name:36s} {params_m(ref):9.2f} {flops[1] / 1e9:8.1f} {best[1]:7.3f} {med[1]:7.3f} | "
                     f"{statistics.median(a / b for a, b in zip(times[0], times[1])):.3f}")
        else:
            line += f"{ref_name + ' (not installed)':36s}"
        print(line, flush=True)
        del ours, ref, models
    if args.ours_only:
        for name, make in ours_only().items():
            model = make().to(device).eval()
            flops = 0 if args.no_flops else count_flops(model, x)
            for _ in range(args.warmup):
                time_once(model, x)
            runs = [time_once(model, x) for _ in range(args.repeats)]
            print(f"{name:32s} {params_m(model):9.2f} {flops / 1e9:8.1f} {min(runs):7.3f} {statistics.median(runs):7.3f} |",
                  flush=True)


if __name__ == "__main__":
    main()

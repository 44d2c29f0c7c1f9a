"""Run a quickstart config and print its validation curve (one row per validation).

The run is the quickstart's own ``lightning-seg fit`` with two changes: a ``CSVLogger`` in a
fresh output folder (so the curve can be read back) and, optionally, further ``--key=value``
overrides after ``--``. It prints one Markdown table row per validation (step, epoch and every
``val/*`` metric the task logged) and the wall-clock time of the whole command, and can save the
curve as JSON to compare two runs (``--compare OTHER.json`` prints the largest difference).

    python scripts/quickstart_curve.py experiments/quickstart.yaml --output curve.json
    python scripts/quickstart_curve.py experiments/quickstart_semantic.yaml -- --seed_everything=1
    python scripts/quickstart_curve.py experiments/quickstart.yaml --compare before.json
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "offline")


def read_curve(metrics_csv: Path) -> list[dict[str, float]]:
    """The validation rows of a ``CSVLogger`` metrics file: ``step``, ``epoch`` and ``val/*``."""
    with metrics_csv.open() as f:
        rows = list(csv.DictReader(f))
    curve = []
    for row in rows:
        vals = {k: float(v) for k, v in row.items() if k.startswith("val/") and v not in ("", None)}
        if vals:
            curve.append({"step": int(float(row["step"])), "epoch": int(float(row["epoch"])), **vals})
    return curve


def print_table(curve: list[dict[str, float]]) -> None:
    """Print the curve as a Markdown table."""
    names = sorted({k for row in curve for k in row if k.startswith("val/")})
    print("| step | epoch | " + " | ".join(n[4:] for n in names) + " |")
    print("|---|---|" + "---|" * len(names))
    for row in curve:
        cells = [f"{row[n]:.4f}" if n in row else "" for n in names]
        print(f"| {row['step']} | {row['epoch']} | " + " | ".join(cells) + " |")


def largest_difference(a: list[dict[str, float]], b: list[dict[str, float]]) -> tuple[float, str]:
    """Largest absolute difference between two curves over their common (step, metric) cells."""
    by_step = {row["step"]: row for row in b}
    worst, where = 0.0, "identical"
    for row in a:
        other = by_step.get(row["step"])
        if other is None:
            return math.inf, f"step {row['step']} missing from the other curve"
        for k, v in row.items():
            if k.startswith("val/") and k in other and abs(v - other[k]) > worst:
                worst, where = abs(v - other[k]), f"{k} at step {row['step']}"
    return worst, where


def main(argv: list[str] | None = None) -> int:
    """Run the quickstart, print its curve; 0 on success."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", type=Path, help="quickstart YAML")
    p.add_argument("--output", type=Path, help="save the curve as JSON")
    p.add_argument("--compare", type=Path, help="a curve saved earlier: print the largest difference")
    p.add_argument("--root", type=Path, help="output folder of the run (default: a temporary one)")
    args = p.parse_args(argv)
    from lightning_seg.cli import main as cli_main

    root = args.root or Path(tempfile.mkdtemp(prefix="quickstart_curve_"))
    start = time.perf_counter()
    cli_main([
        "fit", "--config", str(args.config), f"--trainer.default_root_dir={root}",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger", f"--trainer.logger.save_dir={root}",
        "--trainer.logger.name=curve", *extra,
    ])
    seconds = time.perf_counter() - start
    files = sorted(root.glob("curve/version_*/metrics.csv"))
    if not files:
        print(f"no metrics.csv under {root}/curve", file=sys.stderr)
        return 1
    curve = read_curve(files[-1])
    print_table(curve)
    print(f"\nwhole run: {seconds:.0f} s ({int(seconds // 60)} min {seconds % 60:.0f} s), output in {root}")
    if args.output:
        args.output.write_text(json.dumps(curve, indent=1))
    if args.compare:
        worst, where = largest_difference(curve, json.loads(args.compare.read_text()))
        print(f"largest difference from {args.compare}: {worst:.6g} ({where})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python
"""Build ADE20K panoptic (COCO panoptic format) inside an ``ADEChallengeData2016`` folder.

Needs ``images/``, ``annotations/`` (SceneParsing) and ``annotations_instance/`` (the
instance-challenge PNGs) under the folder, and writes ``ade20k_panoptic_{train,val}.json``
plus ``ade20k_panoptic_{train,val}/*.png`` next to them.

Example::

    python scripts/prepare_ade20k_panoptic.py datasets/ADEChallengeData2016 --workers 8
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from lightning_seg.data.ade20k_panoptic_conversion import SPLIT_FOLDERS, prepare_ade20k_panoptic


def _print_progress(items: Iterable[Any], total: int) -> Iterable[Any]:
    """Yield ``items`` and print a progress line every ~5 %."""
    step = max(1, total // 20)
    for i, item in enumerate(items, 1):
        if i % step == 0 or i == total:
            print(f"  {i}/{total}", file=sys.stderr, flush=True)
        yield item


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="the ADEChallengeData2016 folder")
    parser.add_argument(
        "--splits",
        nargs="+",
        default=list(SPLIT_FOLDERS),
        choices=list(SPLIT_FOLDERS),
        help="splits to convert (default: train val)",
    )
    parser.add_argument(
        "--workers", type=int, default=0, help="worker processes (default: 0, in-process)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)
    for split in args.splits:
        print(f"converting {split} ...", file=sys.stderr)
        out = prepare_ade20k_panoptic(
            args.root,
            splits=[split],
            workers=args.workers,
            progress=None if args.quiet else _print_progress,
        )
        print(out[split])
    return 0


if __name__ == "__main__":
    sys.exit(main())

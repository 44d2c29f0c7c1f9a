"""Run a sweep file's grid locally, one ``lightning-seg`` process per point.

Reads the same YAML as a W&B sweep (``parameters`` with ``values`` lists, or a single
``value``; ``command`` with ``${program}`` and ``${args}``), expands the Cartesian product and
runs each point in turn, so a grid needs no W&B server. Points already finished (a marker file
in ``--state-dir``) are skipped when the grid is run again.

    python scripts/sweep_grid.py scripts/sweeps/quickstart_queries.yaml [--dry-run]
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml


def grid_points(sweep: dict[str, Any]) -> list[dict[str, Any]]:
    """The Cartesian product of the sweep's parameters, in file order."""
    params = sweep.get("parameters") or {}
    names, choices = [], []
    for name, spec in params.items():
        if "values" in spec:
            values = list(spec["values"])
        elif "value" in spec:
            values = [spec["value"]]
        else:
            raise ValueError(f"parameter {name!r}: a local grid needs 'values' or 'value', got {sorted(spec)}")
        names.append(name)
        choices.append(values)
    return [dict(zip(names, combo)) for combo in itertools.product(*choices)]


def point_command(sweep: dict[str, Any], point: dict[str, Any]) -> list[str]:
    """The command line of one point: the sweep's ``command`` with ``${args}`` expanded."""
    args = [f"--{k}={json.dumps(v) if isinstance(v, (list, dict)) else v}" for k, v in point.items()]
    template = sweep.get("command") or ["${program}", "fit", "${args}"]
    cmd: list[str] = []
    for part in template:
        if part == "${args}":
            cmd += args
        elif part == "${program}":
            cmd.append(sweep.get("program", "lightning-seg"))
        else:
            cmd.append(str(part))
    return cmd


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep", help="sweep YAML")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    parser.add_argument("--state-dir", default="outputs/sweeps", help="where finished points are recorded")
    args = parser.parse_args(argv)
    sweep = yaml.safe_load(Path(args.sweep).read_text())
    points = grid_points(sweep)
    state = Path(args.state_dir) / Path(args.sweep).stem
    failures = 0
    for i, point in enumerate(points):
        cmd = point_command(sweep, point)
        key = hashlib.sha1(json.dumps(point, sort_keys=True).encode()).hexdigest()[:12]
        marker = state / f"{key}.done"
        print(f"[{i + 1}/{len(points)}] {shlex.join(cmd)}", flush=True)
        if args.dry_run:
            continue
        if marker.is_file():
            print("  already done, skipped", flush=True)
            continue
        rc = subprocess.call(cmd)
        if rc == 0:
            state.mkdir(parents=True, exist_ok=True)
            marker.write_text(json.dumps(point))
        else:
            failures += 1
            print(f"  failed with exit code {rc}", file=sys.stderr, flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())

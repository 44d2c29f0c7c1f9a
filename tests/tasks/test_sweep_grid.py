"""The local sweep runner expands a W&B sweep file into the CLI commands it runs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("sweep_grid", REPO / "scripts" / "sweep_grid.py")
sweep_grid = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sweep_grid)


def test_grid_expands_to_cli_commands():
    sweep = yaml.safe_load((REPO / "scripts" / "sweeps" / "quickstart_queries.yaml").read_text())
    points = sweep_grid.grid_points(sweep)
    assert points == [
        {"model.num_queries": 8, "model.lr": 0.0005},
        {"model.num_queries": 8, "model.lr": 0.001},
        {"model.num_queries": 16, "model.lr": 0.0005},
        {"model.num_queries": 16, "model.lr": 0.001},
    ]
    cmd = sweep_grid.point_command(sweep, points[1])
    assert cmd[:4] == ["lightning-seg", "fit", "--config", "experiments/quickstart.yaml"]
    assert cmd[-2:] == ["--model.num_queries=8", "--model.lr=0.001"]


def test_sweep_point_is_a_valid_cli_call(tmp_path, capsys):
    """Every point's overrides parse through the real CLI (checked with --print_config)."""
    import pytest

    from lightning_seg.cli import main

    sweep = yaml.safe_load((REPO / "scripts" / "sweeps" / "quickstart_queries.yaml").read_text())
    cmd = sweep_grid.point_command(sweep, sweep_grid.grid_points(sweep)[3])
    args = [a for a in cmd[1:] if "WandbLogger" not in a and "logger.project" not in a]
    with pytest.raises(SystemExit) as e:
        main([*args[:1], *[a.replace("experiments/", str(REPO / "experiments") + "/") for a in args[1:]], "--print_config"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "num_queries: 16" in out and "lr: 0.001" in out

"""The dependency rules of ``../shared/DESIGN.md``: ops, losses, metrics, models, data (datasets
and transforms) and evaluation import without Lightning; tasks and callbacks are where it enters."""

from __future__ import annotations

import subprocess
import sys

import pytest

LIGHTNING_FREE = [
    "lightning_seg.structures", "lightning_seg.ops", "lightning_seg.losses", "lightning_seg.metrics",
    "lightning_seg.models", "lightning_seg.data", "lightning_seg.evaluation", "lightning_seg.evaluation.cli",
    "lightning_seg.classic",
]
PROBE = (
    "import importlib, sys; importlib.import_module(sys.argv[1]); "
    "print(sorted(k for k in sys.modules if k.split('.')[0] in ('lightning', 'pytorch_lightning')))"
)


@pytest.mark.parametrize("module", LIGHTNING_FREE)
def test_module_imports_without_lightning(module):
    out = subprocess.run([sys.executable, "-c", PROBE, module], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", f"{module} pulls in {out.stdout.strip()}"


def test_the_probe_detects_lightning():
    out = subprocess.run([sys.executable, "-c", PROBE, "lightning_seg.tasks"], capture_output=True, text=True,
                         check=True)
    assert "lightning" in out.stdout


def test_datamodules_still_load_from_the_package():
    from lightning_seg.data import SegDataModule, SyntheticShapesDataModule

    assert issubclass(SyntheticShapesDataModule, SegDataModule)
    with pytest.raises(AttributeError, match="NoSuchModule"):
        from lightning_seg import data

        data.NoSuchModule  # noqa: B018

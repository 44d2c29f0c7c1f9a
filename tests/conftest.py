"""Shared pytest fixtures: the real third-party sample data and offline settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# No network in tests: hub look-ups, albumentations' update check and W&B uploads stay off.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_ENV = "LIGHTNING_SEG_TEST_DATA"


def shared_data_root() -> Path:
    """Folder with the real sample data (``$LIGHTNING_SEG_TEST_DATA`` or ``../shared/data``)."""
    return Path(os.environ.get(DATA_ENV, REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to the real sample data; skips the test with the reason when it is absent."""
    root = shared_data_root()
    if not (root / "MANIFEST.md").is_file():
        pytest.skip(f"real sample data not found at {root} (set {DATA_ENV} to its folder)")
    return root

"""The ``lightning-seg`` CLI runs fit / validate / predict on every tiny config (fast_dev_run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_seg.cli import main

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
CONFIGS = sorted(p.name for p in CONF_DIR.glob("*.yaml"))


@pytest.fixture(autouse=True)
def synthetic_cache(tmp_path_factory, monkeypatch):
    """Generate the synthetic set once per session, in a temporary cache."""
    cache = tmp_path_factory.getbasetemp() / "synthetic_cache"
    monkeypatch.setenv("LIGHTNING_SEG_CACHE", str(cache))
    return cache


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("command", ["fit", "validate", "predict"])
def test_cli_fast_dev_run(config, command, tmp_path):
    args = [command, "--config", str(CONF_DIR / config), f"--trainer.default_root_dir={tmp_path}"]
    if config.startswith("classic_") and command == "fit":  # no parameters: fit says so and stops
        with pytest.raises(RuntimeError, match="no trainable parameters: there is nothing to fit"):
            main(args)
        assert not list(tmp_path.rglob("*.ckpt"))
        return
    if command == "predict":
        args.append(f"--model.predict_dir={tmp_path / 'pred'}")
    main(args)
    if command in ("fit", "validate"):
        assert list((tmp_path / "overlays").rglob("*.png")), "no validation overlays written"
    if command == "predict":
        written = {p.relative_to(tmp_path / "pred").parts[0] for p in (tmp_path / "pred").rglob("*")}
        assert list((tmp_path / "pred" / "overlays").glob("*.png")), "predict wrote no overlays"
        assert written & {"panoptic", "semantic", "instances_results.json", "segments"}


def test_print_config_shows_hyperparameters(capsys):
    with pytest.raises(SystemExit) as e:
        main(["fit", "--config", str(CONF_DIR / "panoptic_mask2former.yaml"), "--model.num_queries", "12", "--print_config"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "num_queries: 12" in out and "eos_coef: 0.1" in out and "SyntheticShapesDataModule" in out


def test_wrong_key_fails_before_work(capsys):
    with pytest.raises(SystemExit) as e:
        main(["fit", "--config", str(CONF_DIR / "panoptic_mask2former.yaml"), "--model.num_querys", "12"])
    assert e.value.code != 0
    assert "num_querys" in capsys.readouterr().err


def _cli() -> list[str]:
    exe = Path(sys.executable).parent / "lightning-seg"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "lightning_seg.cli"]


@pytest.mark.ddp
@pytest.mark.parametrize("config", ["panoptic_mask2former.yaml", "semantic_deeplabv3plus.yaml"])
def test_cli_ddp_two_processes(config, tmp_path, synthetic_cache):
    env = dict(os.environ, LIGHTNING_SEG_CACHE=str(synthetic_cache), OMP_NUM_THREADS="1")
    for command in ("fit", "validate"):
        proc = subprocess.run(
            _cli() + [command, "--config", str(CONF_DIR / config), f"--trainer.default_root_dir={tmp_path}",
                      "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu"],
            env=env, capture_output=True, text=True, timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert "distributed_backend=gloo" in proc.stderr + proc.stdout


@pytest.mark.parametrize("config", ["panoptic_mask2former.yaml", "semantic_fcn.yaml"])
def test_evaluation_at_original_resolution(config, tmp_path):
    """A resizing evaluation transform shrinks the image; metrics and predictions stay at full size."""
    args = ["--config", str(CONF_DIR / config), f"--trainer.default_root_dir={tmp_path}",
            "--data.eval_augmentation=resize", "--data.image_size=40"]
    main(["validate", *args])
    main(["predict", *args, f"--model.predict_dir={tmp_path / 'pred'}"])
    from PIL import Image

    written = sorted((tmp_path / "pred" / ("panoptic" if "panoptic" in config else "semantic")).glob("*.png"))
    assert written and all(Image.open(p).size == (64, 64) for p in written)  # the synthetic images are 64x64
    overlays = sorted((tmp_path / "overlays").rglob("*.png"))
    assert overlays and all(Image.open(p).size == (64, 64) for p in overlays)

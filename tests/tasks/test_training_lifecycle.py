"""Resuming a killed fit, fine-tuning with another class count, W&B offline logging."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_seg.cli import SegCLI, main

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "tests" / "conf" / "panoptic_mask2former.yaml"
TINY_FIT = ["--trainer.fast_dev_run=false", "--trainer.limit_val_batches=0", "--trainer.logger=false"]


@pytest.fixture(autouse=True)
def synthetic_cache(tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.getbasetemp() / "synthetic_cache"
    monkeypatch.setenv("LIGHTNING_SEG_CACHE", str(cache))
    return cache


def _state(ckpt: Path) -> dict:
    c = torch.load(ckpt, map_location="cpu", weights_only=True)
    opt = c["optimizer_states"][0]["state"]
    return {
        "global_step": c["global_step"],
        "sched_last_epoch": c["lr_schedulers"][0]["last_epoch"],
        "adam_steps": {int(v["step"]) for v in opt.values()},
        "lr": c["lr_schedulers"][0]["_last_lr"],
    }


def test_killed_fit_resumes_from_last_checkpoint(tmp_path, synthetic_cache):
    ckpt_dir = tmp_path / "ckpt"
    common = [
        sys.executable, "-m", "lightning_seg.cli", "fit", "--config", str(CONF),
        f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_checkpointing=true", *TINY_FIT,
        "--trainer.max_steps=8", "--trainer.max_epochs=100",
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        f"--trainer.callbacks.dirpath={ckpt_dir}", "--trainer.callbacks.every_n_train_steps=2",
        "--trainer.callbacks.save_last=true", "--trainer.callbacks.save_top_k=-1",
    ]
    env = dict(os.environ, LIGHTNING_SEG_CACHE=str(synthetic_cache), PYTHONPATH=str(REPO))
    killed = subprocess.run(
        common + ["--trainer.callbacks+=tests.tasks.interrupt.KillAtStep", "--trainer.callbacks.step=5"],
        env=env, capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert killed.returncode == -9, killed.stderr[-3000:]  # SIGKILL, no clean shutdown
    before = _state(ckpt_dir / "last.ckpt")
    assert before["global_step"] == 4 and before["sched_last_epoch"] == 4 and before["adam_steps"] == {4}

    resumed = subprocess.run(common + ["--ckpt_path=last"], env=env, capture_output=True, text=True,
                             timeout=600, cwd=REPO)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restoring states from the checkpoint" in resumed.stderr + resumed.stdout
    after = _state(ckpt_dir / "last.ckpt")
    # continued from step 4 with the saved optimiser and schedule, not from scratch
    assert after["global_step"] == 8 and after["sched_last_epoch"] == 8 and after["adam_steps"] == {8}
    assert after["lr"][0] < before["lr"][0]


def _folder_dataset(root: Path, num_classes: int = 3) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(root / "images" / split / f"{i}.png")
            m = np.zeros((48, 64), np.uint8)
            m[:, 20:40] = 1
            m[30:, :] = 2
            Image.fromarray(m % num_classes).save(root / "masks" / split / f"{i}.png")


def test_finetune_from_checkpoint_with_other_class_count(tmp_path, caplog):
    # 1. a panoptic model on the synthetic set (6 classes), one step, checkpoint saved
    main(["fit", "--config", str(CONF), f"--trainer.default_root_dir={tmp_path}", *TINY_FIT,
          "--trainer.max_steps=1", "--trainer.enable_checkpointing=true"])
    ckpt = next(tmp_path.rglob("*.ckpt"))
    source = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert source["model.transformer_decoder.class_embed.weight"].shape[0] == 7

    # 2. fine-tune on a 3-class folder dataset in semantic mode, backbone frozen
    data_root = tmp_path / "custom"
    _folder_dataset(data_root)
    with caplog.at_level(logging.WARNING):
        cli = SegCLI(args=[
            "--config", str(CONF), "--model.task=semantic", f"--model.init_from={ckpt}",
            "--model.freeze_backbone=true", "--data=lightning_seg.data.SemanticFolderDataModule",
            f"--data.root={data_root}", "--data.num_classes=3", "--data.batch_size=2",
            f"--trainer.default_root_dir={tmp_path / 'ft'}",
        ], run=False)
    model = cli.model
    assert model.num_classes == 3
    report = model.init_report
    assert any(r.startswith("model.transformer_decoder.class_embed.weight (7, 32) -> (4, 32)") for r in report["reinitialised"])
    assert report["missing"] == [] and report["unexpected"] == []
    assert "re-initialised 2 with a new shape" in caplog.text  # class head weight and bias, reported
    own = model.state_dict()
    for k, v in source.items():
        if "class_embed" not in k:
            assert torch.equal(own[k], v), k
    frozen = [p.requires_grad for p in model.model.backbone.parameters()]
    assert frozen and not any(frozen)
    cli.trainer.fit(cli.model, cli.datamodule)
    for k, v in source.items():  # the frozen backbone did not move
        if k.startswith("model.backbone.") and v.dtype.is_floating_point and "running" not in k:
            assert torch.equal(model.state_dict()[k], v), k


def test_wandb_logger_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    main(["fit", "--config", str(CONF), f"--trainer.default_root_dir={tmp_path}",
          "--trainer.logger=lightning.pytorch.loggers.WandbLogger", f"--trainer.logger.save_dir={tmp_path}",
          "--trainer.logger.project=lightning-seg-test", "--trainer.fast_dev_run=false", "--trainer.max_steps=1",
          "--trainer.limit_val_batches=1", "--trainer.enable_checkpointing=false"])
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert runs, "no offline W&B run written"

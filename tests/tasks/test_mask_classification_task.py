"""MaskClassificationModule: images without targets, optimiser groups, schedules."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_seg.cli import SegCLI
from lightning_seg.structures import collate, empty_sample

CONF = Path(__file__).resolve().parents[1] / "conf" / "panoptic_mask2former.yaml"


@pytest.fixture(autouse=True)
def synthetic_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("LIGHTNING_SEG_CACHE", str(tmp_path_factory.getbasetemp() / "synthetic_cache"))


def _module(tmp_path: Path, *extra: str):
    cli = SegCLI(args=["--config", str(CONF), f"--trainer.default_root_dir={tmp_path}", *extra], run=False)
    cli.datamodule.setup("fit")
    return cli.model, cli.datamodule


@pytest.mark.parametrize("task", ["panoptic", "instance", "semantic"])
def test_batch_with_an_image_without_targets(tmp_path, task):
    model, dm = _module(tmp_path, f"--model.task={task}")
    sample = dm.datasets["train"][0]
    stuff_only = dict(sample)
    keep = ~sample["is_thing"]  # in instance mode this image has no target at all
    for key in ("masks", "labels", "iscrowd", "is_thing", "boxes"):
        stuff_only[key] = sample[key][keep]
    h, w = sample["image"].shape[1:]
    batch = collate([sample, empty_sample(h, w, image_id=99), stuff_only])
    assert batch["targets"][1]["labels"].numel() == 0
    loss = model.training_step(batch, 0)
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_parameter_groups_and_schedule(tmp_path):
    model, _ = _module(tmp_path, "--model.lr=0.001", "--model.backbone_lr_multiplier=0.1",
                       "--model.weight_decay=0.05", "--model.warmup_steps=10", "--model.max_steps=100")
    groups = model.configure_optimizers()["optimizer"].param_groups
    by_name = {id(p): n for n, p in model.named_parameters()}
    for g in groups:
        names = [by_name[id(p)] for p in g["params"]]
        backbone = names[0].startswith("model.backbone.")
        assert all(n.startswith("model.backbone.") == backbone for n in names)
        assert g["initial_lr"] == pytest.approx(1e-4 if backbone else 1e-3)
        if g["weight_decay"] > 0:  # only weights of linear/conv layers decay
            assert all(model.get_parameter(n).ndim > 1 for n in names)
            assert not any("query_feat" in n or "level_embed" in n or "norm" in n for n in names)
    assert sum(len(g["params"]) for g in groups) == sum(1 for p in model.parameters() if p.requires_grad)
    decayed = {by_name[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    # the model's own norm / embedding names get no decay (Mask2Former's rule)
    assert not decayed & {f"model.{n}" for n in model.model.no_weight_decay_parameter_names()}
    assert "model.transformer_decoder.class_embed.weight" in decayed
    # linear warm-up from 1e-3 x lr, then poly 0.9 decay to 0
    assert model.lr_factor(0, 100) == pytest.approx(1e-3)
    assert model.lr_factor(5, 100) == pytest.approx((1e-3 * 0.5 + 0.5) * (1 - 0.05) ** 0.9)
    assert model.lr_factor(50, 100) == pytest.approx(0.5 ** 0.9)
    assert model.lr_factor(100, 100) == 0.0


def test_step_schedule_milestones(tmp_path):
    model, _ = _module(tmp_path, "--model.lr_schedule=step", "--model.lr_milestones=[0.5, 0.75]")
    assert [model.lr_factor(s, 100) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx(
        [1.0, 1.0, 0.1, 0.1, 0.01, 0.01]
    )

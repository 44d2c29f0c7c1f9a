"""Every config in ``experiments/`` builds its model and trains one tiny step on CPU: the step's loss is
finite, every trainable parameter gets a gradient and moves where it is non-zero, and the task and DataModule are the ones the config names.

The configs are shrunk through CLI overrides (small heads, 64-pixel images, CPU, one batch),
never through separate copies, and read small dataset trees laid out exactly as the configs
expect, made from the real samples in the shared data folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from lightning import Callback

from lightning_seg.cli import SegCLI

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
CONFIGS = sorted(str(p.relative_to(EXPERIMENTS)) for p in EXPERIMENTS.rglob("*.yaml"))

SHRINK_MASK_CLASSIFICATION = [
    "--model.hidden_dim=32", "--model.conv_dim=32", "--model.mask_dim=32", "--model.enc_layers=1",
    "--model.num_queries=8", "--model.nheads=2", "--model.dim_feedforward=64", "--model.num_points=256",
]
# the configs' own resizes replaced by a 64-pixel one
SHRINK_RESIZE = [
    '--data.train_augmentation=[{"type": "ResizeShortestEdge", "short_edge_lengths": [64], "max_size": 96}]',
    '--data.eval_augmentation=[{"type": "ResizeShortestEdge", "short_edge_lengths": [64], "max_size": 96}]',
]
SHRINK_RCNN = [
    "--model.roi_heads.batch_size_per_image=64", "--model.roi_heads.box_head_dim=64",
    "--model.roi_heads.mask_head_dims=[32, 32]", "--model.rpn.pre_nms_topk_train=200",
    "--model.rpn.post_nms_topk_train=100", *SHRINK_RESIZE,
]
SHRINK_DENSE = {
    "solo": ["--model.solo.head_channels=32", "--model.solo.head_convs=2", "--model.solo.kernel_channels=32",
             "--model.solo.mask_feature_channels=16", *SHRINK_RESIZE],
    "yolact": ["--model.yolact.head_channels=32", "--model.yolact.proto_channels=32", "--model.yolact.num_prototypes=8",
               *SHRINK_RESIZE],
}
SHRINK_DETR = ["--model.hidden_dim=32", "--model.dim_feedforward=64", "--model.enc_layers=1", "--model.dec_layers=1",
               "--model.num_queries=8", *SHRINK_RESIZE]
SHRINK_MAX_DEEPLAB = ["--model.num_slots=8", "--model.memory_dim=32", "--model.pixel_dims=[32, 16, 16]",
                      "--model.num_heads=2", "--model.dim_feedforward=64", "--model.embed_dim=16",
                      "--model.head_channels=16", "--model.sample_k=256", *SHRINK_RESIZE]
SHRINK_TRAINER = [
    # the first step at the full learning rate, so that every update exceeds float32 spacing
    "--model.warmup_steps=0",
    "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto",
    "--trainer.precision=32-true", "--trainer.fast_dev_run=1", "--trainer.logger=false",
    "--data.image_size=64", "--data.num_workers=0",
    # two images: DeepLab's image-pooling branch normalises over the batch, as in the papers
    "--data.batch_size=2",
]


def _link(dst: Path, src: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.symlink_to(src)


@pytest.fixture(scope="module")
def dataset_roots(shared_data, tmp_path_factory) -> dict[str, Path]:
    """COCO and ADE20K trees in their standard layouts, built from the real samples."""
    base = tmp_path_factory.mktemp("datasets")
    pan = shared_data / "panopticapi_sample" / "sample_data"
    coco = base / "coco"
    for split in ("train2017", "val2017"):
        _link(coco / split, pan / "input_images")
        _link(coco / "annotations" / f"panoptic_{split}", pan / "panoptic_examples")
        (coco / "annotations" / f"panoptic_{split}.json").write_text((pan / "panoptic_examples.json").read_text())
        det = json.loads((pan / "panoptic_coco_detection_format.json").read_text())
        (coco / "annotations" / f"instances_{split}.json").write_text(json.dumps(det))
    ade_sample = shared_data / "ade20k_sceneparsing_sample" / "sampleData"
    ade = base / "ADEChallengeData2016"
    for sub in ("training", "validation"):
        _link(ade / "images" / sub, ade_sample / "images")
        _link(ade / "annotations" / sub, ade_sample / "annotations")
    # ADE20K panoptic in its prepared layout (COCO panoptic format)
    ade_pan = base / "ade_panoptic"
    for split, sub in (("train", "training"), ("val", "validation")):
        _link(ade_pan / "images" / sub, pan / "input_images")
        _link(ade_pan / f"ade20k_panoptic_{split}", pan / "panoptic_examples")
        (ade_pan / f"ade20k_panoptic_{split}.json").write_text((pan / "panoptic_examples.json").read_text())
    return {"CocoPanopticDataModule": coco, "CocoInstanceDataModule": coco,
            "ADE20KSemanticDataModule": ade, "ADE20KPanopticDataModule": ade_pan}


@pytest.mark.parametrize("config", CONFIGS)
def test_experiment_config_trains_one_step(config, dataset_roots, tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTNING_SEG_CACHE", str(tmp_path / "cache"))
    path = EXPERIMENTS / config
    cfg = yaml.safe_load(path.read_text())
    data_class = cfg["data"]["class_path"].rsplit(".", 1)[-1]
    model_class = cfg["model"]["class_path"].rsplit(".", 1)[-1]
    args = ["--config", str(path), f"--trainer.default_root_dir={tmp_path}"] + SHRINK_TRAINER
    if data_class in dataset_roots:
        args.append(f"--data.root={dataset_roots[data_class]}")
    elif data_class == "SyntheticShapesDataModule":
        args += ["--data.num_train=2", "--data.num_val=1"]
    else:
        pytest.fail(f"{config}: no test dataset for {data_class}")
    if model_class == "MaskClassificationModule":
        args += SHRINK_MASK_CLASSIFICATION
    if model_class == "RCNNModule" and data_class != "SyntheticShapesDataModule":
        args += SHRINK_RCNN
    if model_class == "DETRModule" and data_class != "SyntheticShapesDataModule":
        args += SHRINK_DETR
    if model_class == "MaXDeepLabModule" and data_class != "SyntheticShapesDataModule":
        args += SHRINK_MAX_DEEPLAB
    if model_class == "DenseInstanceModule" and data_class != "SyntheticShapesDataModule":
        args += SHRINK_DENSE["yolact" if cfg["model"]["init_args"]["model"] == "yolact" else "solo"]
    cli = SegCLI(args=args, run=False)
    assert type(cli.datamodule).__name__ == data_class and type(cli.model).__name__ == model_class
    if model_class == "ClassicSegmentationModule":  # nothing to train: one validation batch instead
        assert not list(cli.model.parameters())
        metrics = cli.trainer.validate(cli.model, cli.datamodule)[0]
        assert metrics and all(torch.isfinite(torch.tensor(v)) for v in metrics.values()), metrics
        assert {"val/covering", "val/agnostic_AP"} <= set(metrics)
        return
    before = {n: p.detach().clone() for n, p in cli.model.named_parameters() if p.requires_grad}
    assert before, f"{config}: nothing to train"
    grads = GradientRecorder()
    cli.trainer.callbacks.append(grads)
    cli.trainer.fit(cli.model, cli.datamodule)
    loss = cli.trainer.callback_metrics["train/loss"]
    assert torch.isfinite(loss), f"{config}: loss {loss}"
    assert set(grads.nonzero) | grads.zero == set(before), f"{config}: parameters without gradient"
    # Some parameters get exactly zero gradient in the first step by construction (timm ResNets'
    # zero-initialised residual branches, the zero-initialised deformable offsets ahead of
    # Mask2Former's level embeddings, DETR's first self-attention over zero queries); the rest move.
    assert grads.nonzero, f"{config}: no parameter got a gradient"
    unmoved = [n for n in grads.nonzero if torch.equal(cli.model.get_parameter(n), before[n])]
    assert not unmoved, f"{config}: {len(unmoved)} parameters with a gradient did not move, e.g. {unmoved[:5]}"


class GradientRecorder(Callback):
    """Names of the trainable parameters with a non-zero / an all-zero gradient at the optimiser step."""

    def __init__(self) -> None:
        self.nonzero: list[str] = []
        self.zero: set[str] = set()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        for n, p in pl_module.named_parameters():
            if p.requires_grad and p.grad is not None:
                (self.nonzero.append(n) if bool(p.grad.abs().max() > 0) else self.zero.add(n))

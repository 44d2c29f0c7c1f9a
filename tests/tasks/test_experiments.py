"""Every config in ``experiments/`` builds its model and runs one tiny training step on CPU.

The configs are shrunk through CLI overrides (small heads, 64-pixel images, CPU, one batch),
never through separate copies, and read small dataset trees laid out exactly as the configs
expect, made from the real samples in the shared data folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lightning_seg.cli import main

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
CONFIGS = sorted(str(p.relative_to(EXPERIMENTS)) for p in EXPERIMENTS.rglob("*.yaml"))

SHRINK_MASK_CLASSIFICATION = [
    "--model.hidden_dim=32", "--model.conv_dim=32", "--model.mask_dim=32", "--model.enc_layers=1",
    "--model.num_queries=8", "--model.nheads=2", "--model.dim_feedforward=64", "--model.num_points=256",
]
SHRINK_TRAINER = [
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
    args = ["fit", "--config", str(path), f"--trainer.default_root_dir={tmp_path}"] + SHRINK_TRAINER
    if data_class in dataset_roots:
        args.append(f"--data.root={dataset_roots[data_class]}")
    elif data_class == "SyntheticShapesDataModule":
        args += ["--data.num_train=2", "--data.num_val=1"]
    else:
        pytest.fail(f"{config}: no test dataset for {data_class}")
    if model_class == "MaskClassificationModule":
        args += SHRINK_MASK_CLASSIFICATION
    main(args)

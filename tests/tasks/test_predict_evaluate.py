"""Files written by ``predict`` and re-scored by ``lightning-seg evaluate`` give the in-loop numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from lightning_seg.cli import SegCLI, main

CONF = Path(__file__).resolve().parents[1] / "conf" / "panoptic_mask2former.yaml"


def _instances_json(dataset, path: Path) -> None:
    """COCO instances ground truth (thing segments, crowd kept) of a panoptic dataset."""
    meta = dataset.metadata
    images, anns = [], []
    for i in range(len(dataset)):
        s = dataset[i]
        h, w = s["orig_size"]
        images.append({"id": s["image_id"], "file_name": f"{s['image_id']}.png", "height": h, "width": w})
        for m, lab, crowd, thing in zip(s["masks"], s["labels"], s["iscrowd"], s["is_thing"]):
            if not thing:
                continue
            rle = mask_utils.encode(np.asfortranarray(m.numpy().astype(np.uint8)))
            rle["counts"] = rle["counts"].decode()
            anns.append({
                "id": len(anns) + 1, "image_id": s["image_id"], "category_id": meta.category_ids[int(lab)],
                "segmentation": rle, "area": int(m.sum()), "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                "iscrowd": int(crowd),
            })
    cats = [{"id": c, "name": n} for c, n, t in zip(meta.category_ids, meta.class_names, meta.is_thing) if t]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))


def test_predict_files_rescored_equal_in_loop_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTNING_SEG_CACHE", str(tmp_path / "cache"))
    common = ["--config", str(CONF), f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false",
              # low thresholds so that a briefly trained model predicts segments of every kind
              "--model.object_mask_threshold=0.05", "--data.num_train=4", "--data.num_val=4"]
    main(["fit", *common, "--trainer.fast_dev_run=false", "--trainer.max_steps=30", "--trainer.max_epochs=100",
          "--trainer.limit_val_batches=0", "--trainer.enable_checkpointing=true", "--model.lr=0.001"])
    ckpt = next(tmp_path.rglob("*.ckpt"))
    cli = SegCLI(args=[*common, "--trainer.fast_dev_run=false", f"--model.predict_dir={tmp_path / 'pred'}"], run=False)
    in_loop = cli.trainer.validate(cli.model, cli.datamodule, ckpt_path=str(ckpt))[0]
    cli.trainer.predict(cli.model, cli.datamodule, ckpt_path=str(ckpt))
    assert in_loop["val/mIoU"] > 0

    ds = cli.datamodule.datasets["val"]
    pred = tmp_path / "pred"
    # panoptic: the dataset's own JSON + PNGs vs the written submission
    scores = {}
    for task, extra in (
        ("panoptic", ["--gt-json", str(ds.json_file), "--gt-dir", str(ds.panoptic_dir),
                      "--pred-json", str(pred / "panoptic.json"), "--pred-dir", str(pred / "panoptic")]),
        ("instance", ["--gt-json", str(tmp_path / "inst.json"), "--pred-json", str(pred / "instances_results.json")]),
        ("semantic", ["--gt-dir", str(tmp_path / "sem_gt"), "--pred-dir", str(pred / "semantic"),
                      "--num-classes", str(ds.metadata.num_classes)]),
    ):
        if task == "instance":
            _instances_json(ds, tmp_path / "inst.json")
        if task == "semantic":
            (tmp_path / "sem_gt").mkdir()
            for i in range(len(ds)):
                s = ds[i]
                Image.fromarray(s["semantic"].numpy().astype(np.uint8)).save(tmp_path / "sem_gt" / f"{s['image_id']:012d}.png")
        out = tmp_path / f"{task}.json"
        with pytest.raises(SystemExit) as e:
            main(["evaluate", "--task", task, *extra, "--output", str(out)])
        assert e.value.code == 0
        scores[task] = json.loads(out.read_text())

    assert scores["panoptic"]["All"]["pq"] == pytest.approx(in_loop["val/PQ"], abs=1e-6)
    assert scores["panoptic"]["Things"]["pq"] == pytest.approx(in_loop["val/PQ_th"], abs=1e-6)
    assert scores["panoptic"]["Stuff"]["pq"] == pytest.approx(in_loop["val/PQ_st"], abs=1e-6)
    assert scores["semantic"]["mIoU"] == pytest.approx(in_loop["val/mIoU"], abs=1e-6)
    assert scores["semantic"]["pixel_acc"] == pytest.approx(in_loop["val/pixel_acc"], abs=1e-6)
    assert scores["instance"]["segm"]["AP"] == pytest.approx(in_loop["val/AP"], abs=1e-6)
    assert scores["instance"]["segm"]["AP50"] == pytest.approx(in_loop["val/AP50"], abs=1e-6)
    assert torch.tensor(in_loop["val/PQ"]).isfinite()

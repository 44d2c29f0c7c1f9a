"""The task base: which kinds are scored, extra metrics by name, and the I/O callbacks from YAML."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_seg.cli import SegCLI, main
from lightning_seg.metrics import AverageSurfaceDistance, BoundaryIoU, ParsingCovering, TrimapAccuracy

CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.fixture(autouse=True)
def synthetic_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("LIGHTNING_SEG_CACHE", str(tmp_path_factory.getbasetemp() / "synthetic_cache"))


def _cli(tmp_path: Path, conf: str, *extra: str) -> SegCLI:
    return SegCLI(args=["--config", str(CONF / conf), f"--trainer.default_root_dir={tmp_path}", *extra], run=False)


def test_extra_metrics_are_logged_by_name_and_equal_the_metrics_on_the_predictions(tmp_path):
    cli = _cli(tmp_path, "panoptic_mask2former.yaml", "--model.object_mask_threshold=0.0",
               "--model.extra_metrics=[boundary_iou, trimap_accuracy, surface_distance, parsing_covering]")
    model, dm = cli.model, cli.datamodule
    logged = cli.trainer.validate(model, dm)[0]
    # the same predictions, scored here by the metrics themselves
    refs = {"boundary_iou": BoundaryIoU(model.num_classes), "trimap_accuracy": TrimapAccuracy(),
            "surface_distance": AverageSurfaceDistance(model.num_classes),
            "parsing_covering": ParsingCovering([c in model.thing_classes for c in range(model.num_classes)])}
    model.eval()
    with torch.no_grad():
        for batch in dm.val_dataloader():
            preds = model.predict(batch, at_original_size=False)
            for p, t in zip(preds["semantic"], batch["targets"]):
                h, w = t["target_size"]
                for name in ("boundary_iou", "trimap_accuracy", "surface_distance"):
                    refs[name].update(p[None], t["semantic"][None, :h, :w])
            refs["parsing_covering"].update(preds["panoptic"], batch["targets"])
    want = {"boundary_iou": refs["boundary_iou"].compute()["biou"], "trimap_accuracy": refs["trimap_accuracy"].compute(),
            "surface_distance": refs["surface_distance"].compute()["assd"]}
    pc = refs["parsing_covering"].compute()
    want.update(parsing_covering=pc["pc"], parsing_covering_th=pc["pc_things"], parsing_covering_st=pc["pc_stuff"])
    for name, value in want.items():
        assert logged[f"val/{name}"] == pytest.approx(float(value), nan_ok=True), name
    assert {"val/PQ", "val/SQ_th", "val/RQ_st", "val/mIoU", "val/fwIoU", "val/AP", "val/APl"} <= set(logged)


def test_eval_kinds_choose_what_is_scored_and_written(tmp_path):
    args = ("--model.eval_kinds=[panoptic]",)
    cli = _cli(tmp_path, "panoptic_mask2former.yaml", *args)
    keys = set(cli.trainer.validate(cli.model, cli.datamodule)[0])
    assert "val/PQ" in keys and not keys & {"val/mIoU", "val/AP"}
    main(["predict", "--config", str(CONF / "panoptic_mask2former.yaml"), f"--trainer.default_root_dir={tmp_path}",
          f"--model.predict_dir={tmp_path / 'pred'}", *args])
    written = {p.name for p in (tmp_path / "pred").iterdir()}
    assert {"panoptic", "panoptic.json", "overlays"} == written


@pytest.mark.parametrize("conf,args,match", [
    ("semantic_fcn.yaml", ["--model.eval_kinds=[instance]"], r"model\.eval_kinds: .* predicts \['semantic'\], not \['instance'\]"),
    ("instance_mask2former.yaml", ["--model.eval_kinds=[panoptic]"], r"model\.eval_kinds"),
    ("semantic_fcn.yaml", ["--model.extra_metrics=[parsing_covering]"],
     r"model\.extra_metrics: 'parsing_covering' scores panoptic predictions"),
])
def test_wrong_kinds_and_metrics_fail_before_any_work(tmp_path, conf, args, match):
    with pytest.raises(ValueError, match=match):
        _cli(tmp_path, conf, *args)


def test_callbacks_configured_from_the_yaml(tmp_path):
    """PredictionWriter and ValidationOverlays are plain Lightning callbacks: configured under
    trainer.callbacks they replace the task's own (num_overlays 0 here), like ModelCheckpoint."""
    out = tmp_path / "written"
    common = ["--config", str(CONF / "semantic_fcn.yaml"), f"--trainer.default_root_dir={tmp_path}",
              "--model.num_overlays=0", "--trainer.callbacks+=lightning_seg.callbacks.PredictionWriter",
              f"--trainer.callbacks.output_dir={out}", "--trainer.callbacks+=lightning_seg.callbacks.ValidationOverlays",
              "--trainer.callbacks.num_images=1"]
    main(["predict", *common])
    assert list((out / "semantic").glob("*.png")) and list((out / "overlays").glob("*.png"))
    main(["validate", *common])
    assert len(list((tmp_path / "overlays").rglob("*.png"))) == 1

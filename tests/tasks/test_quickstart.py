"""The quickstarts learn: a short training run lifts PQ (mask AP) far above an untrained model's (slow)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_seg.cli import SegCLI

QUICKSTART = Path(__file__).resolve().parents[2] / "experiments" / "quickstart.yaml"


def short_run(config: Path, schedule_steps: int, metric: str, tmp_path, monkeypatch) -> tuple[float, dict]:
    """``metric`` before training, and every validation metric after the first 4 epochs of the
    quickstart's own ``schedule_steps``-step schedule."""
    monkeypatch.setenv("LIGHTNING_SEG_CACHE", str(tmp_path / "cache"))
    cli = SegCLI(args=[
        "--config", str(config), f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false",
        "--trainer.max_epochs=4", f"--model.max_steps={schedule_steps}", "--trainer.check_val_every_n_epoch=4",
        "--trainer.callbacks=[]", "--trainer.enable_checkpointing=false",
    ], run=False)
    untrained = cli.trainer.validate(cli.model, cli.datamodule)[0][metric]
    cli.trainer.fit(cli.model, cli.datamodule)
    return untrained, cli.trainer.validate(cli.model, cli.datamodule)[0]


@pytest.mark.slow
def test_quickstart_short_budget_learns(tmp_path, monkeypatch):
    untrained, trained = short_run(QUICKSTART, 500, "val/PQ", tmp_path, monkeypatch)
    assert untrained < 0.1
    assert trained["val/PQ"] > untrained + 0.4, (untrained, trained)
    assert trained["val/mIoU"] > 0.8


@pytest.mark.slow
def test_instance_quickstart_short_budget_learns(tmp_path, monkeypatch):
    untrained, trained = short_run(QUICKSTART.with_name("quickstart_instance.yaml"), 900, "val/AP", tmp_path,
                                   monkeypatch)
    assert untrained < 0.05
    assert trained["val/AP"] > untrained + 0.3, (untrained, trained)
    assert trained["val/bbox_AP"] > 0.2


@pytest.mark.slow
@pytest.mark.parametrize("config", ["quickstart_panoptic_fpn.yaml", "quickstart_upsnet.yaml"])
def test_panoptic_rcnn_quickstarts_short_budget_learn(config, tmp_path, monkeypatch):
    untrained, trained = short_run(QUICKSTART.with_name(config), 600, "val/PQ", tmp_path, monkeypatch)
    assert untrained < 0.2
    assert trained["val/PQ"] > untrained + 0.3, (untrained, trained)
    assert trained["val/PQ_th"] > 0.3 and trained["val/PQ_st"] > 0.3

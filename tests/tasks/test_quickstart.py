"""The quickstarts learn: a short training run lifts PQ (mask AP) far above an untrained model's (slow)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_seg.cli import SegCLI

QUICKSTART = Path(__file__).resolve().parents[2] / "experiments" / "quickstart.yaml"


@pytest.mark.slow
def test_quickstart_short_budget_learns(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTNING_SEG_CACHE", str(tmp_path / "cache"))
    cli = SegCLI(args=[
        "--config", str(QUICKSTART), f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false",
        # the first 4 epochs of the quickstart's own 500-step schedule
        "--trainer.max_epochs=4", "--model.max_steps=500", "--trainer.check_val_every_n_epoch=4", "--trainer.callbacks=[]",
        "--trainer.enable_checkpointing=false",
    ], run=False)
    untrained = cli.trainer.validate(cli.model, cli.datamodule)[0]["val/PQ"]
    cli.trainer.fit(cli.model, cli.datamodule)
    trained = cli.trainer.validate(cli.model, cli.datamodule)[0]
    assert untrained < 0.1
    assert trained["val/PQ"] > untrained + 0.4, (untrained, trained)
    assert trained["val/mIoU"] > 0.8


@pytest.mark.slow
def test_instance_quickstart_short_budget_learns(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTNING_SEG_CACHE", str(tmp_path / "cache"))
    cli = SegCLI(args=[
        "--config", str(QUICKSTART.with_name("quickstart_instance.yaml")), f"--trainer.default_root_dir={tmp_path}",
        "--trainer.logger=false",
        # the first 4 epochs of the quickstart's own 900-step schedule
        "--trainer.max_epochs=4", "--model.max_steps=900", "--trainer.check_val_every_n_epoch=4", "--trainer.callbacks=[]",
        "--trainer.enable_checkpointing=false",
    ], run=False)
    untrained = cli.trainer.validate(cli.model, cli.datamodule)[0]["val/AP"]
    cli.trainer.fit(cli.model, cli.datamodule)
    trained = cli.trainer.validate(cli.model, cli.datamodule)[0]
    assert untrained < 0.05
    assert trained["val/AP"] > untrained + 0.3, (untrained, trained)
    assert trained["val/bbox_AP"] > 0.2

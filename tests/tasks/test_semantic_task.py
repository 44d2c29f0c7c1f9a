"""SemanticSegmentationModule: dataset class weights, auxiliary head, the base's non-finite loss guard."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_seg.cli import SegCLI

CONF = Path(__file__).resolve().parents[1] / "conf" / "semantic_deeplabv3plus.yaml"


@pytest.fixture(autouse=True)
def synthetic_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("LIGHTNING_SEG_CACHE", str(tmp_path_factory.getbasetemp() / "synthetic_cache"))


def _cli(tmp_path: Path, *extra: str) -> SegCLI:
    return SegCLI(args=["--config", str(CONF), f"--trainer.default_root_dir={tmp_path}",
                        "--trainer.logger=false", *extra], run=False)


def test_median_frequency_weights_from_training_set(tmp_path):
    cli = _cli(tmp_path, "--model.class_weighting=median_frequency", "--model.aux_weight=0.4")
    cli.trainer.fit(cli.model, cli.datamodule)
    got = cli.model.criterion.class_weights
    # reference: Eigen & Fergus median-frequency balancing, written out over the raw maps
    ds = cli.datamodule.datasets["train"]
    k = cli.model.num_classes
    counts = np.zeros(k)
    image_totals = np.zeros(k)
    for i in range(len(ds)):
        sem = ds.load_record(i)["semantic"]
        labelled = sem[sem != 255]
        for c in range(k):
            n = (labelled == c).sum()
            counts[c] += n
            if n:
                image_totals[c] += labelled.size
    seen = counts > 0
    freq = np.where(seen, counts / np.maximum(image_totals, 1), 0)
    expected = np.where(seen, np.median(freq[seen]) / np.where(seen, freq, 1), 0)
    assert torch.allclose(got.cpu(), torch.tensor(expected, dtype=torch.float32), rtol=1e-5)
    assert (tmp_path / "class_pixel_counts.json").is_file()


def test_auxiliary_head_is_weighted_and_trained(tmp_path):
    cli = _cli(tmp_path, "--model.aux_weight=0.4")
    model, dm = cli.model, cli.datamodule
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    model.eval()  # no dropout: the two forward passes below agree
    terms = model.compute_losses(batch)
    out = model.model(batch["images"])
    target = torch.stack([t["semantic"] for t in batch["targets"]])
    ce = torch.nn.functional.cross_entropy
    torch.testing.assert_close(terms["loss_main"], ce(out["out"], target, ignore_index=255))
    torch.testing.assert_close(terms["loss_aux"], 0.4 * ce(out["aux"], target, ignore_index=255))
    before = {n: p.detach().clone() for n, p in model.model.aux_head.named_parameters()}
    cli.trainer.fit(model, dm)
    changed = [n for n, p in model.model.aux_head.named_parameters() if not torch.equal(p, before[n])]
    assert changed == list(before)  # every auxiliary-head parameter moved


def test_non_finite_loss_names_the_step_and_the_term(tmp_path, monkeypatch):
    cli = _cli(tmp_path, "--model.aux_weight=0.4")
    model, dm = cli.model, cli.datamodule
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    real = model.compute_losses

    def nan_aux(b):
        terms = real(b)
        return {**terms, "loss_aux": terms["loss_aux"] * float("nan")}

    monkeypatch.setattr(model, "compute_losses", nan_aux)
    with pytest.raises(FloatingPointError, match=r"global step 0.*non-finite terms: \{'loss_aux': nan\}"):
        model.training_step(batch, 0)

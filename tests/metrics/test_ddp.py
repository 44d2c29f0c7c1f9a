"""Two CPU processes (gloo), each updating on half the data, compute exactly the single-process result."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_seg.metrics import (
    AverageSurfaceDistance,
    BoundaryIoU,
    ClusterMatchedIoU,
    MaskAP,
    PanopticQuality,
    ParsingCovering,
    SemanticSegmentationMetrics,
    TrimapAccuracy,
)

K = 4
IS_THING = [True, True, False, False]


def _make_metrics():
    return {
        "semantic": SemanticSegmentationMetrics(K),
        "pq": PanopticQuality(IS_THING),
        "pc": ParsingCovering(IS_THING),
        "ap": MaskAP(K),
        "ap_bbox": MaskAP(K, iou_types=("segm", "bbox")),
        "biou": BoundaryIoU(K),
        "trimap": TrimapAccuracy(2),
        "assd": AverageSurfaceDistance(K),
        # the Hungarian matching runs on the confusion summed over both ranks
        "cluster_hungarian": ClusterMatchedIoU(K, num_clusters=K + 1),
        "cluster_majority": ClusterMatchedIoU(K),
        "pc_agnostic": ParsingCovering(IS_THING, class_agnostic=True),
    }


def _batches():
    """Two batches of synthetic (semantic, panoptic, instance) data, fixed by the seed."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(2):
        cat = torch.from_numpy(rng.integers(0, K, (2, 6, 6))).repeat_interleave(4, 1).repeat_interleave(4, 2)
        inst = torch.from_numpy(rng.integers(0, 2, (2, 6, 6))).repeat_interleave(4, 1).repeat_interleave(4, 2)
        noise = torch.from_numpy(rng.random((2, 24, 24)) < 0.1)
        pcat = torch.where(noise, torch.from_numpy(rng.integers(0, K, (2, 24, 24))), cat)
        masks = torch.stack([torch.stack([(cat[i] == c) & (inst[i] == j) for c in range(K) for j in range(2)]) for i in range(2)])
        labels = torch.arange(K).repeat_interleave(2)
        preds_inst = [
            {"masks": (pcat[i] == c).unsqueeze(0).repeat(2, 1, 1) & masks[i].any(0), "labels": torch.tensor([c, c]), "scores": torch.tensor([0.9, 0.3])}
            for i, c in enumerate(rng.integers(0, K, 2).tolist())
        ]
        # the first image predicts boxes, the second is scored with its masks' boxes
        preds_inst[0]["boxes"] = torch.tensor([[0.0, 0.0, 12.0, 12.0], [4.0, 4.0, 24.0, 20.0]])
        targets_inst = [{"masks": masks[i], "labels": labels} for i in range(2)]
        out.append((cat, inst, pcat, preds_inst, targets_inst))
    return out


def _update(metrics, batch):
    cat, inst, pcat, preds_inst, targets_inst = batch
    metrics["semantic"].update(pcat, cat)
    metrics["pq"].update(torch.stack([pcat, inst], -1), torch.stack([cat, inst], -1))
    metrics["pc"].update(torch.stack([pcat, inst], -1), torch.stack([cat, inst], -1))
    metrics["ap"].update(preds_inst, targets_inst)
    metrics["ap_bbox"].update(preds_inst, targets_inst)
    metrics["biou"].update(pcat, cat)
    metrics["trimap"].update(pcat, cat)
    metrics["assd"].update(pcat, cat)
    # cluster ids: the predicted classes renamed (and one more cluster), per image segments: (class, instance)
    clusters = (pcat + 1) % (K + 1)
    metrics["cluster_hungarian"].update(list(clusters), list(cat))
    metrics["cluster_majority"].update(list(pcat * 2 + inst), list(cat))
    metrics["pc_agnostic"].update(torch.stack([(pcat + 1) % K, inst], -1), torch.stack([cat, inst], -1))


def _results(metrics):
    out = {}
    for name, m in metrics.items():
        value = m.compute()
        out[name] = value if isinstance(value, dict) else {"value": value}
    return out


def _worker(rank, world, init_file, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        metrics = _make_metrics()
        _update(metrics, _batches()[rank])
        results = _results(metrics)
        if rank == 0:
            torch.save(results, out_file)
    finally:
        dist.destroy_process_group()


@pytest.mark.ddp
def test_two_process_gloo_equals_single_process(tmp_path):
    single = _make_metrics()
    for batch in _batches():
        _update(single, batch)
    expected = _results(single)
    out_file = tmp_path / "ddp.pt"
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(out_file)), nprocs=2, join=True)
    got = torch.load(out_file, weights_only=False)
    assert set(got) == set(expected)
    for name, values in expected.items():
        for key, value in values.items():
            assert torch.equal(torch.as_tensor(got[name][key]).nan_to_num(-7), torch.as_tensor(value).nan_to_num(-7)), (name, key)

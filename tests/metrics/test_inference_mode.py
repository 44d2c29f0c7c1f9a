"""Metrics reset inside inference mode (Trainer.validate) keep working outside it (a later fit)."""

from __future__ import annotations

import torch

from lightning_seg.metrics import BoundaryIoU, PanopticQuality, SemanticSegmentationMetrics


def test_states_reset_in_inference_mode_update_afterwards():
    sem = SemanticSegmentationMetrics(3)
    pq = PanopticQuality([True, False, False])
    biou = BoundaryIoU(3)
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[:, 4:] = 1
    panoptic = torch.stack([target, (target == 0).long()], dim=-1)  # (category, instance)
    with torch.inference_mode():
        for m, args in ((sem, (target, target)), (pq, (panoptic, panoptic)), (biou, (target, target))):
            m.update(*args)
            m.compute()
            m.reset()
    with torch.no_grad():
        sem.update(target, target)
        pq.update(panoptic, panoptic)
        biou.update(target, target)
    assert sem.compute()["mIoU"] == 1.0
    assert pq.compute()["pq"] == 1.0
    assert torch.isfinite(torch.as_tensor(list(biou.compute().values())[0])).all()

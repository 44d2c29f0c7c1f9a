"""Batched mask matching costs and assignments against per-image references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from lightning_seg.ops.matching import hungarian_match, mask_matching_costs, match_masks
from lightning_seg.ops.point_sampling import point_sample, point_sample_binary


def _batch(seed: int, counts=(3, 0, 6), q=7, k=4, h=10, hp=40):
    g = torch.Generator().manual_seed(seed)
    b, t = len(counts), max(counts)
    logits = torch.randn(b, q, k + 1, generator=g)
    masks = torch.randn(b, q, h, h, generator=g) * 2
    labels = torch.zeros(b, t, dtype=torch.long)
    tmasks = torch.zeros(b, t, hp, hp, dtype=torch.bool)
    valid = torch.zeros(b, t, dtype=torch.bool)
    for i, n in enumerate(counts):
        labels[i, :n] = torch.randint(0, k, (n,), generator=g)
        tmasks[i, :n] = torch.rand(n, hp, hp, generator=g) > 0.5
        valid[i, :n] = True
    return logits, masks, labels, tmasks, valid


@pytest.mark.parametrize("chunk_elements", [None, 1, 7 * 50 * 2])
def test_costs_equal_a_per_image_loop(chunk_elements):
    logits, masks, labels, tmasks, valid = _batch(0)
    pts = torch.rand(3, 50, 2, generator=torch.Generator().manual_seed(9))
    cost = mask_matching_costs(logits, masks, labels, tmasks, pts, 2.0, 5.0, 5.0, chunk_elements=chunk_elements)
    # Targets sampled beforehand (as the set criterion does once per batch) give the same costs.
    pre = point_sample_binary(tmasks, pts)
    torch.testing.assert_close(
        mask_matching_costs(logits, masks, labels, None, pts, 2.0, 5.0, 5.0, target_samples=pre), cost
    )
    for b in range(3):
        prob = logits[b].softmax(-1)
        pm = point_sample(masks[b][:, None], pts[b][None].expand(7, -1, -1))[:, 0]  # [Q, P]
        for t in range(int(valid[b].sum())):
            tm = point_sample(tmasks[b, t][None, None].float(), pts[b][None])[0, 0]  # [P]
            for q in range(7):
                bce = F.binary_cross_entropy_with_logits(pm[q], tm)
                s = pm[q].sigmoid()
                dice = 1 - (2 * (s * tm).sum() + 1) / (s.sum() + tm.sum() + 1)
                ref = -2.0 * prob[q, labels[b, t]] + 5.0 * bce + 5.0 * dice
                assert cost[b, q, t].item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-5)


def test_match_masks_equals_hf_matcher(monkeypatch):
    m2f = pytest.importorskip("transformers.models.mask2former.modeling_mask2former")
    logits, masks, labels, tmasks, valid = _batch(1, counts=(3, 0, 6, 7))
    pts = torch.rand(1, 64, 2, generator=torch.Generator().manual_seed(5))
    import lightning_seg.ops.matching as matching

    # HF draws its points with torch.rand, ours with rand_points_row_major: both get ``pts``.
    monkeypatch.setattr(torch, "rand", lambda *size, **kw: pts.expand(size[0], -1, -1).clone())
    monkeypatch.setattr(
        matching, "rand_points_row_major", lambda b, n, device=None, generator=None: pts.expand(b, -1, -1).clone()
    )
    ours = match_masks(logits, masks, labels, tmasks, valid, num_points=64)
    hf = m2f.Mask2FormerHungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=64)
    counts = valid.sum(1).tolist()
    ref = hf(masks, logits, [tmasks[b, :n].float() for b, n in enumerate(counts)],
             [labels[b, :n] for b, n in enumerate(counts)])
    for b, (src, tgt) in enumerate(ref):
        sel = ours.target_for_pred[b] >= 0
        assert torch.equal(torch.nonzero(sel)[:, 0], src)
        assert torch.equal(ours.target_for_pred[b][sel], tgt)
        assert torch.equal(ours.pred_for_target[b][tgt], src)


@pytest.mark.parametrize("solver", ["scipy", "torch"])
def test_generic_box_style_costs_and_pairs(solver):
    g = torch.Generator().manual_seed(2)
    cost = torch.rand(3, 5, 8, generator=g)  # more targets than predictions
    tv = torch.tensor([[True] * 8, [True] * 2 + [False] * 6, [False] * 8])
    m = hungarian_match(cost, target_valid=tv, solver=solver)
    assert (m.pred_for_target[~tv] == -1).all()
    b_idx, p_idx, t_idx = m.pairs()
    assert torch.equal(m.target_for_pred[b_idx, p_idx], t_idx)
    for b in range(3):
        n = int(tv[b].sum())
        if n == 0:
            assert (m.target_for_pred[b] == -1).all()
            continue
        r, c = linear_sum_assignment(cost[b, :, :n].numpy())
        got = cost[b][b_idx[b_idx == b] * 0 + p_idx[b_idx == b], t_idx[b_idx == b]].sum()
        assert got.item() == pytest.approx(cost[b, :, :n].numpy()[r, c].sum(), abs=1e-6)

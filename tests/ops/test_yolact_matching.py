"""YOLACT's prior matching against a transcription of its ``match`` (``layers/box_utils.py``),
image by image."""

from __future__ import annotations

import pytest
import torch

from lightning_seg.ops.yolact_matching import yolact_match


def jaccard(a, b, iscrowd=False):
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]))[:, None]
    area_b = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[None, :]
    return inter / area_a if iscrowd else inter / (area_a + area_b - inter)


def yolact_reference(truths, priors, crowd, pos, neg, crowd_thr):
    overlaps = jaccard(truths, priors)
    best_truth_overlap, best_truth_idx = overlaps.max(0)
    for _ in range(overlaps.size(0)):
        best_prior_overlap, best_prior_idx = overlaps.max(1)
        j = best_prior_overlap.max(0)[1]
        i = best_prior_idx[j]
        overlaps[:, i] = -1
        overlaps[j, :] = -1
        best_truth_overlap[i] = 2
        best_truth_idx[i] = j
    conf = torch.ones_like(best_truth_idx)
    conf[best_truth_overlap < pos] = -1
    conf[best_truth_overlap < neg] = 0
    if crowd is not None and len(crowd) and crowd_thr < 1:
        best_crowd_overlap, _ = jaccard(priors, crowd, iscrowd=True).max(1)
        conf[(conf <= 0) & (best_crowd_overlap > crowd_thr)] = -1
    return best_truth_idx, conf


def priors_grid():
    """Square and elongated priors on a small grid (YOLACT's ratios 1, 1/2, 2)."""
    out = []
    for size, step in ((12, 8), (24, 16), (48, 32)):
        for cy in range(step // 2, 96, step):
            for cx in range(step // 2, 96, step):
                for r in (1.0, 0.5, 2.0):
                    w, h = size * r ** 0.5, size / r ** 0.5
                    out.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    return torch.tensor(out)


@pytest.mark.parametrize("seed", range(4))
def test_yolact_match_equals_reference(seed):
    g = torch.Generator().manual_seed(seed)
    priors = priors_grid()
    counts, crowds = [6, 1, 12], [1, 0, 2]
    b, gmax, cmax = 3, max(counts), max(crowds)
    gt = torch.zeros(b, gmax, 4)
    valid = torch.zeros(b, gmax, dtype=torch.bool)
    crowd = torch.zeros(b, cmax, 4)
    crowd_valid = torch.zeros(b, cmax, dtype=torch.bool)
    for i in range(b):
        xy = torch.rand(counts[i], 2, generator=g) * 70
        gt[i, : counts[i]] = torch.cat([xy, xy + torch.rand(counts[i], 2, generator=g) * 30 + 4], 1)
        valid[i, : counts[i]] = True
        cxy = torch.rand(crowds[i], 2, generator=g) * 50
        crowd[i, : crowds[i]] = torch.cat([cxy, cxy + 40], 1)
        crowd_valid[i, : crowds[i]] = True
    gt[2, 5] = gt[2, 4] + 0.5  # two ground truths wanting the same prior
    out = yolact_match(gt, valid, priors, crowd, crowd_valid, 0.5, 0.4, 0.7)
    for i in range(b):
        idx, conf = yolact_reference(gt[i, : counts[i]], priors, crowd[i, : crowds[i]], 0.5, 0.4, 0.7)
        assert torch.equal(out.state[i], conf)
        assert torch.equal(out.gt_index[i], idx)
    assert (out.state == 1).any() and (out.state == -1).any() and (out.state == 0).any()
    # every ground truth has a positive prior (the forced matches)
    for i in range(b):
        assert set(out.gt_index[i][out.state[i] == 1].tolist()) == set(range(counts[i]))


def test_no_ground_truth_is_background_or_crowd_neutral():
    priors = priors_grid()
    crowd = torch.tensor([[[0.0, 0.0, 40.0, 40.0]]])
    out = yolact_match(torch.zeros(1, 0, 4), torch.zeros(1, 0, dtype=torch.bool), priors, crowd,
                       torch.ones(1, 1, dtype=torch.bool))
    neutral = jaccard(priors, crowd[0], iscrowd=True).max(1).values > 0.7
    assert torch.equal(out.state[0], torch.where(neutral, -1, 0))
    assert neutral.any() and not neutral.all() and (out.gt_index == 0).all()
    # crowd regions without a validity mask are all real
    again = yolact_match(torch.zeros(1, 0, 4), torch.zeros(1, 0, dtype=torch.bool), priors, crowd)
    assert torch.equal(again.state, out.state)


def test_padding_columns_anywhere_and_more_ground_truth_than_priors():
    """Padding may sit before real columns; with more ground truths than priors the forced loop
    runs out of priors and must still never match a padding column."""
    priors = torch.tensor([[0.0, 0, 10, 10], [20, 0, 30, 10], [0, 20, 10, 30]])
    real = torch.tensor([[0.0, 0, 9, 9], [21, 0, 30, 9], [0, 21, 9, 30], [1, 1, 10, 10], [19, 1, 29, 10]])
    gt = torch.cat([torch.zeros(1, 4), real])[None]  # column 0 is padding
    valid = torch.tensor([[False, True, True, True, True, True]])
    out = yolact_match(gt, valid, priors)
    idx, conf = yolact_reference(real.clone(), priors, None, 0.5, 0.4, 0.7)
    assert torch.equal(out.gt_index[0], idx + 1) and torch.equal(out.state[0], conf)
    assert (out.gt_index[0] > 0).all()


def log_sum_exp(x):
    """YOLACT's ``log_sum_exp``: one maximum over the whole input."""
    x_max = x.max()
    return torch.log(torch.sum(torch.exp(x - x_max), 1)) + x_max


def yolact_ohem(conf_data, conf_t, negpos_ratio=3):
    """YOLACT's ``ohem_conf_loss`` selection of negatives (background = class 0)."""
    num, _, num_classes = conf_data.shape
    batch_conf = conf_data.view(-1, num_classes)
    loss_c = log_sum_exp(batch_conf) - batch_conf[:, 0]
    loss_c = loss_c.view(num, -1)
    pos = conf_t > 0
    loss_c[pos] = 0
    loss_c[conf_t < 0] = 0
    _, loss_idx = loss_c.sort(1, descending=True)
    _, idx_rank = loss_idx.sort(1)
    num_pos = pos.long().sum(1, keepdim=True)
    num_neg = torch.clamp(negpos_ratio * num_pos, max=pos.size(1) - 1)
    neg = idx_rank < num_neg.expand_as(idx_rank)
    neg[pos] = 0
    neg[conf_t < 0] = 0
    return neg


def test_ohem_negatives_equal_reference():
    from lightning_seg.ops.yolact_matching import ohem_negatives

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 200, 5, generator=g)
    state = torch.zeros(3, 200, dtype=torch.int64)
    state[0, :10] = 1
    state[0, 10:30] = -1
    state[1, :70] = 1  # 210 negatives wanted, capped by the 199 cap and the 130 available
    got = ohem_negatives(logits, state, 3)
    want = yolact_ohem(logits, state, 3)
    assert torch.equal(got, want)
    assert got[0].sum() == 30 and got[1].sum() == 130 and got[2].sum() == 0


def test_ohem_min_negatives_mines_images_without_positives():
    from lightning_seg.ops.yolact_matching import ohem_negatives

    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 50, 4, generator=g)
    state = torch.zeros(2, 50, dtype=torch.int64)
    state[0, :10] = 1  # 30 negatives from the ratio; image 1 has no positive
    got = ohem_negatives(logits, state, 3, min_negatives=8)
    assert got[0].sum() == 30 and got[1].sum() == 8
    # the 8 of image 1 are its 8 highest background losses
    loss = torch.logsumexp(logits[1], -1) - logits[1, :, 0]
    assert set(torch.nonzero(got[1]).squeeze(1).tolist()) == set(loss.topk(8).indices.tolist())

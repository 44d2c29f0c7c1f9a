"""Matrix NMS against a direct transcription of the SOLOv2 decay formula."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_seg.ops.matrix_nms import mask_iou_matrix, matrix_nms


def _paper_decay(masks, scores, labels, kernel, sigma):
    """Decayed scores, one mask at a time, in descending score order (SOLOv2, Eq. 4)."""
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    n = len(order)
    m = [masks[i].flatten().float() for i in order]

    def iou(i, j):
        inter = float((m[i] * m[j]).sum())
        union = float(m[i].sum() + m[j].sum()) - inter
        return inter / union if union > 0 else 0.0

    def f(x):
        return math.exp(-sigma * x * x) if kernel == "gaussian" else 1.0 - x

    lab = [int(labels[i]) for i in order]
    d = [[iou(i, j) if i < j and lab[i] == lab[j] else 0.0 for j in range(n)] for i in range(n)]
    comp = [max([d[k][i] for k in range(n)] + [0.0]) for i in range(n)]
    out = {}
    for j in range(n):
        decay = min(f(d[i][j]) / f(comp[i]) for i in range(n))
        out[order[j]] = float(scores[order[j]]) * decay
    return out


def _problem(seed, b=2, n=12, size=16):
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(b, n, size, size, dtype=torch.bool)
    for i in range(b):
        for j in range(n):
            y, x = torch.randint(0, size - 6, (2,), generator=g).tolist()
            hh, ww = torch.randint(3, 7, (2,), generator=g).tolist()
            masks[i, j, y : y + hh, x : x + ww] = True
    scores = torch.rand(b, n, generator=g)
    labels = torch.randint(0, 3, (b, n), generator=g)
    return masks, scores, labels


@pytest.mark.parametrize("kernel", ["gaussian", "linear"])
def test_decayed_scores_equal_paper_formula(kernel):
    masks, scores, labels = _problem(0)
    valid = torch.ones(2, 12, dtype=torch.bool)
    valid[1, 9:] = False  # padding in the second image
    res = matrix_nms(masks, scores, labels, valid, kernel=kernel, sigma=2.0, chunk_pixels=37)
    for b in range(2):
        n = int(valid[b].sum())
        ref = _paper_decay(masks[b, :n], scores[b, :n], labels[b, :n], kernel, 2.0)
        got = {int(i): float(s) for i, s, v in zip(res.indices[b], res.scores[b], res.valid[b]) if v}
        assert got.keys() == ref.keys()
        for i, s in ref.items():
            assert got[i] == pytest.approx(s, abs=1e-6)
        assert res.scores[b][res.valid[b]].diff().le(0).all()  # sorted
        assert torch.equal(res.labels[b][res.valid[b]], labels[b][res.indices[b][res.valid[b]]])


def test_topk_threshold_and_max_detections():
    masks, scores, labels = _problem(1)
    res = matrix_nms(masks, scores, labels, pre_nms_topk=8, score_threshold=0.2, max_detections=5)
    assert res.scores.shape == (2, 5)
    for b in range(2):
        top8 = scores[b].argsort(descending=True)[:8]
        ref = _paper_decay(masks[b, top8], scores[b, top8], labels[b, top8], "gaussian", 2.0)
        ref = sorted(((s, int(top8[i])) for i, s in ref.items() if s >= 0.2), reverse=True)[:5]
        got = [(float(s), int(i)) for s, i, v in zip(res.scores[b], res.indices[b], res.valid[b]) if v]
        assert [i for _, i in got] == [i for _, i in ref]
        assert [s for s, _ in got] == pytest.approx([s for s, _ in ref], abs=1e-6)
        assert (res.indices[b][~res.valid[b]] == -1).all()


def test_iou_matrix_chunks_equal_direct():
    masks, _, _ = _problem(2)
    flat = masks.flatten(2).float()
    inter = flat @ flat.transpose(1, 2)
    area = flat.sum(-1)
    ref = inter / (area[:, :, None] + area[:, None, :] - inter)
    torch.testing.assert_close(mask_iou_matrix(masks, chunk_pixels=50), ref)


def test_duplicates_and_bad_input():
    m = torch.zeros(1, 2, 4, 4, dtype=torch.bool)
    m[..., :2, :2] = True
    res = matrix_nms(m, torch.tensor([[0.9, 0.8]]), torch.tensor([[1, 1]]), kernel="linear")
    assert torch.isfinite(res.scores).all() and res.scores[0, 1] == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(ValueError, match="kernel"):
        matrix_nms(m, torch.ones(1, 2), torch.ones(1, 2, dtype=torch.long), kernel="box")
    with pytest.raises(ValueError, match=r"\[B,N,H,W\]"):
        matrix_nms(m[0], torch.ones(1, 2), torch.ones(1, 2, dtype=torch.long))

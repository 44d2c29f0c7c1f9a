"""Point sampling against a bilinear formula written out per point."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_seg.ops.point_sampling import (
    most_uncertain_candidates,
    point_sample,
    point_sample_binary,
    point_sample_channels_last,
    sample_points_by_uncertainty,
    rand_points_row_major,
    sort_points_row_major,
    uncertainty_from_logits,
)


def _bilinear_loop(img: torch.Tensor, x: float, y: float) -> float:
    """Value of ``img [H, W]`` at normalised (x, y), pixel centres at (i + 0.5) / size, zeros outside."""
    h, w = img.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    total = 0.0
    for yy, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
        for xx, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
            if 0 <= xx < w and 0 <= yy < h:
                total += wy * wx * float(img[yy, xx])
    return total


def test_point_sample_matches_bilinear_formula():
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(2, 3, 5, 7, generator=g)
    pts = torch.rand(2, 11, 2, generator=g) * 1.2 - 0.1  # some points fall outside
    out = point_sample(maps, pts)
    assert out.shape == (2, 3, 11)
    for n in range(2):
        for c in range(3):
            for p in range(11):
                ref = _bilinear_loop(maps[n, c], float(pts[n, p, 0]), float(pts[n, p, 1]))
                assert out[n, c, p].item() == pytest.approx(ref, abs=1e-5)
    assert point_sample(maps[:, 0], pts).shape == (2, 11)


def test_point_sample_binary_equals_float_sampling():
    g = torch.Generator().manual_seed(1)
    masks = torch.rand(6, 9, 13, generator=g) > 0.5
    pts = torch.rand(3, 40, 2, generator=g) * 1.1 - 0.05
    rows = torch.tensor([[0, 1], [2, 5], [4, 4]])
    out = point_sample_binary(masks, pts, rows)
    for gi in range(3):
        for ri in range(2):
            ref = point_sample(masks[rows[gi, ri]][None].float(), pts[gi : gi + 1])[0]
            torch.testing.assert_close(out[gi, ri], ref, rtol=0, atol=1e-6)
    # Grouped layout: every mask of group g read at point set g.
    grouped = point_sample_binary(masks.view(3, 2, 9, 13), pts)
    for gi in range(3):
        ref = point_sample(masks.view(3, 2, 9, 13)[gi : gi + 1].float(), pts[gi : gi + 1])[0]
        torch.testing.assert_close(grouped[gi], ref, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="rows"):
        point_sample_binary(masks, pts, rows[:2])
    with pytest.raises(ValueError, match=r"\[G,R,H,W\]"):
        point_sample_binary(masks, pts)


def test_importance_sampling_picks_most_uncertain_candidates(monkeypatch):
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 10, 10, generator=g)
    cand = torch.rand(4, 30, 2, generator=g)
    fresh = torch.rand(4, 3, 2, generator=g)
    draws = iter([cand, fresh])
    monkeypatch.setattr(torch, "rand", lambda *a, **k: next(draws))
    pts = sample_points_by_uncertainty(logits, num_points=10, oversample_ratio=3, importance_sample_ratio=0.75)
    assert pts.shape == (4, 10, 2)
    for n in range(4):
        vals = [abs(_bilinear_loop(logits[n], float(x), float(y))) for x, y in cand[n]]
        best = sorted(range(30), key=lambda i: vals[i])[:7]
        assert {tuple(cand[n, i].tolist()) for i in best} == {tuple(p) for p in pts[n, :7].tolist()}
        torch.testing.assert_close(pts[n, 7:], fresh[n])


def test_grouped_uncertain_candidates_come_from_the_group_draw():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 10, 10, generator=g)  # 2 groups (images) x 3 slots
    rows = torch.tensor([[0, 0], [0, 2], [1, 1]])
    cand = torch.rand(2, 30, 2, generator=g)  # one draw per group
    idx = most_uncertain_candidates(logits, cand, 7, rows)
    assert idx.shape == (3, 7)
    for n, (gi, si) in enumerate(rows.tolist()):
        vals = [abs(_bilinear_loop(logits[gi, si], float(x), float(y))) for x, y in cand[gi]]
        assert set(idx[n].tolist()) == set(sorted(range(30), key=lambda i: vals[i])[:7])
    # Ungrouped: each mask its own candidates, as sample_points_by_uncertainty uses it.
    per_mask = most_uncertain_candidates(logits[0], cand[:1].expand(3, -1, -1), 7)
    assert set(per_mask[2].tolist()) == set(idx[1].tolist())


@pytest.mark.parametrize("groups", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_channels_last_sampling_equals_point_sample(groups, dtype):
    g = torch.Generator().manual_seed(4)
    maps = torch.randn(groups, 5, 9, 13, generator=g).to(dtype)
    pts = torch.rand(groups, 40, 2, generator=g) * 1.2 - 0.1  # some points outside the map
    out = point_sample_channels_last(maps, pts)
    assert out.shape == (groups, 40, 5)
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    ref = point_sample(maps.to(out.dtype), pts.to(out.dtype)).transpose(1, 2)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"\[G,C,H,W\]"):
        point_sample_channels_last(maps[0], pts)


def test_sort_points_row_major_is_a_per_group_permutation_in_pixel_order():
    pts = torch.rand(3, 200, 2, generator=torch.Generator().manual_seed(5))
    out = sort_points_row_major(pts, 7, 11)
    for g in range(3):
        assert sorted(map(tuple, out[g].tolist())) == sorted(map(tuple, pts[g].tolist()))
        pixel = (out[g, :, 1] * 7).floor() * 11 + (out[g, :, 0] * 11).floor()
        assert (pixel.diff() >= 0).all()


def test_sort_points_row_major_keeps_out_of_range_and_nan_points_in_their_group():
    pts = torch.rand(2, 50, 2, generator=torch.Generator().manual_seed(6))
    pts[0, :5] = torch.tensor([1.0, 1.0])  # exactly on the far edge
    pts[0, 5:8] = torch.tensor([-0.3, 1.7])
    pts[1, 0] = float("nan")
    out = sort_points_row_major(pts, 4, 4)
    for g in range(2):
        got = sorted(map(tuple, out[g].nan_to_num(9.0).tolist()))
        assert got == sorted(map(tuple, pts[g].nan_to_num(9.0).tolist()))


def test_rand_points_row_major_is_uniform_and_ordered_by_row():
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(7)
    pts = rand_points_row_major(4, 5000, generator=g)
    assert pts.shape == (4, 5000, 2) and pts.dtype == torch.float32
    assert ((pts >= 0) & (pts < 1)).all()
    assert (pts[..., 1].diff(dim=1) >= 0).all()
    # Pooled over a set, sorted uniforms are uniform again; x is an independent uniform.
    for coord in (0, 1):
        assert stats.kstest(pts[..., coord].flatten().double().numpy(), "uniform").pvalue > 1e-3
    # Independence of x and y: x in the lower and upper half of y looks alike.
    low, high = pts[:, :2500, 0].flatten(), pts[:, 2500:, 0].flatten()
    assert stats.ks_2samp(low.numpy(), high.numpy()).pvalue > 1e-3
    again = rand_points_row_major(4, 5000, generator=torch.Generator().manual_seed(7))
    assert torch.equal(pts, again)


def test_most_uncertain_candidates_grouped_rows_equal_a_loop():
    g = torch.Generator().manual_seed(8)
    logits = torch.randn(2, 3, 6, 6, generator=g) * 4
    logits[0, 1, :2] = 0.0  # exact zeros (and -0.0) are the most uncertain
    logits[1, 2, 3] = -0.0
    cand = torch.rand(2, 40, 2, generator=g)
    rows = torch.tensor([[1, 2], [0, 0], [0, 1]])  # any order, a subset of the slots
    idx = most_uncertain_candidates(logits, cand, 9, rows)
    assert idx.shape == (3, 9)
    for n, (grp, slot) in enumerate(rows.tolist()):
        vals = [abs(_bilinear_loop(logits[grp, slot], float(x), float(y))) for x, y in cand[grp]]
        kth = sorted(vals)[8]
        chosen = set(idx[n].tolist())
        assert len(chosen) == 9
        assert all(vals[i] <= kth + 1e-6 for i in chosen)


def test_most_uncertain_candidates_follow_uncertainty_from_logits():
    g = torch.Generator().manual_seed(9)
    logits = torch.randn(5, 8, 8, generator=g) * 3
    cand = torch.rand(5, 64, 2, generator=g)
    idx = most_uncertain_candidates(logits, cand, 16)
    u = uncertainty_from_logits(point_sample(logits, cand))
    ref = torch.topk(u, 16, dim=1).indices
    assert torch.equal(idx.sort(1).values, ref.sort(1).values)
    x = torch.tensor([-2.0, 0.5, -0.0])
    torch.testing.assert_close(uncertainty_from_logits(x), torch.tensor([-2.0, -0.5, 0.0]))
    assert uncertainty_from_logits(x, inplace=True) is x

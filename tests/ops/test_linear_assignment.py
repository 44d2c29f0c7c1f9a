"""Batched assignment solvers against scipy's linear_sum_assignment."""

from __future__ import annotations

import pytest
import torch
from scipy.optimize import linear_sum_assignment

from lightning_seg.ops.linear_assignment import sanitize_costs, solve_assignment


def _total(cost: torch.Tensor, col_for_row: torch.Tensor) -> torch.Tensor:
    hit = col_for_row >= 0
    picked = torch.gather(cost.double(), 2, col_for_row.clamp(min=0)[..., None])[..., 0]
    return torch.where(hit, picked, torch.zeros_like(picked)).sum(1)


def _check_is_assignment(col_for_row, row_valid, col_valid):
    for b in range(col_for_row.shape[0]):
        a = col_for_row[b]
        cols = a[a >= 0]
        assert cols.unique().numel() == cols.numel(), "a column is used twice"
        assert bool(row_valid[b][a >= 0].all()) and bool(col_valid[b][cols].all())
        assert cols.numel() == min(int(row_valid[b].sum()), int(col_valid[b].sum()))


def _scipy_optimum(cost, row_valid, col_valid):
    out = []
    for b in range(cost.shape[0]):
        sub = cost[b][row_valid[b]][:, col_valid[b]].double().numpy()
        if sub.size == 0:
            out.append(0.0)
            continue
        r, c = linear_sum_assignment(sub)
        out.append(sub[r, c].sum())
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("solver", ["scipy", "torch"])
@pytest.mark.parametrize("shape", [(20, 9, 4), (20, 4, 9), (20, 7, 7), (5, 1, 6)])
def test_random_padded_problems_reach_scipy_optimum(solver, shape):
    g = torch.Generator().manual_seed(sum(shape))
    b, r, c = shape
    cost = torch.randn(b, r, c, generator=g)
    row_valid = torch.rand(b, r, generator=g) > 0.2
    col_valid = torch.rand(b, c, generator=g) > 0.2
    row_valid[0] = False  # an image with no predictions
    col_valid[1] = False  # an image with no targets
    got = solve_assignment(cost, row_valid, col_valid, solver=solver)
    _check_is_assignment(got, row_valid, col_valid)
    safe = torch.where(row_valid[:, :, None] & col_valid[:, None, :], cost, torch.zeros_like(cost))
    torch.testing.assert_close(_total(safe, got), _scipy_optimum(cost, row_valid, col_valid), rtol=0, atol=1e-9)


@pytest.mark.parametrize("solver", ["scipy", "torch"])
def test_ties_and_integer_costs(solver):
    g = torch.Generator().manual_seed(3)
    cost = torch.randint(0, 3, (50, 6, 8), generator=g).float()
    cost[0] = 1.0  # all equal
    got = solve_assignment(cost, solver=solver)
    ones = torch.ones(50, 6, dtype=torch.bool), torch.ones(50, 8, dtype=torch.bool)
    _check_is_assignment(got, *ones)
    torch.testing.assert_close(_total(cost, got), _scipy_optimum(cost, *ones), rtol=0, atol=0)


@pytest.mark.parametrize("solver", ["scipy", "torch"])
def test_non_finite_costs_are_avoided(solver):
    g = torch.Generator().manual_seed(4)
    cost = torch.rand(30, 6, 4, generator=g)
    bad = torch.rand(30, 6, 4, generator=g) < 0.4
    values = torch.tensor([float("nan"), float("inf"), float("-inf")])
    cost[bad] = values[torch.randint(0, 3, (int(bad.sum()),), generator=g)]
    cost[0, :, 0] = float("nan")  # a target only reachable through a non-finite cost
    got = solve_assignment(cost, solver=solver)
    ones = torch.ones(30, 6, dtype=torch.bool), torch.ones(30, 4, dtype=torch.bool)
    _check_is_assignment(got, *ones)
    # Reference 1: scipy on HF's sanitisation (non-finite -> float32 max) uses as few
    # non-finite entries as possible; so must we.
    hf = torch.nan_to_num(cost, nan=torch.finfo(torch.float32).max, posinf=torch.finfo(torch.float32).max,
                          neginf=torch.finfo(torch.float32).max)
    picked_bad = (torch.gather(~torch.isfinite(cost), 2, got.clamp(min=0)[..., None])[..., 0] & (got >= 0)).sum(1)
    for b in range(30):
        r, c = linear_sum_assignment(hf[b].double().numpy())
        assert int(picked_bad[b]) == int((~torch.isfinite(cost[b][r, c])).sum())
    # Reference 2: on our sanitised matrix the total equals scipy's optimum exactly.
    safe = sanitize_costs(cost, torch.ones_like(cost, dtype=torch.bool))
    assert torch.isfinite(safe).all()
    torch.testing.assert_close(_total(safe, got), _scipy_optimum(safe, *ones), rtol=1e-12, atol=1e-9)


def test_torch_solver_equals_scipy_on_1000_problems():
    """1000 random problems up to 200 x 100 (both orientations), solved as a few batches."""
    g = torch.Generator().manual_seed(0)
    checked = 0
    for b, r, c in [(400, 30, 12), (300, 12, 30), (200, 100, 50), (60, 200, 100), (40, 100, 200)]:
        cost = torch.rand(b, r, c, generator=g)
        row_valid = torch.rand(b, r, generator=g) > 0.1
        col_valid = torch.rand(b, c, generator=g) > 0.1
        got = solve_assignment(cost, row_valid, col_valid, solver="torch")
        safe = torch.where(row_valid[:, :, None] & col_valid[:, None, :], cost, torch.zeros_like(cost))
        ref = _scipy_optimum(cost, row_valid, col_valid)
        torch.testing.assert_close(_total(safe, got), ref, rtol=1e-12, atol=1e-9)
        checked += b
    assert checked == 1000


def test_empty_and_bad_input():
    assert solve_assignment(torch.zeros(2, 3, 0)).shape == (2, 3)
    assert (solve_assignment(torch.zeros(2, 3, 0)) == -1).all()
    with pytest.raises(ValueError, match="solver"):
        solve_assignment(torch.zeros(1, 2, 2), solver="magic")
    with pytest.raises(ValueError, match=r"cost \[B,R,C\]"):
        solve_assignment(torch.zeros(2, 2))

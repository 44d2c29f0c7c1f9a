"""Exact minimum-cost bipartite assignment for a batch of padded cost matrices.

Two solvers return the same optimal total cost:

* ``"scipy"`` – :func:`scipy.optimize.linear_sum_assignment` per problem, with one
  device-to-host copy of the whole batch and one copy of the answer back.
* ``"torch"`` – a batched shortest-augmenting-path Hungarian algorithm (the Jonker–Volgenant
  / Kuhn–Munkres scheme with row and column potentials) written in tensor operations, so it
  runs on whatever device the costs live on and never copies them to the host. All problems of
  the batch advance in lock-step; a problem whose current row is padding idles.

Both work in float64 so that large (sanitised non-finite) costs cannot swamp the finite ones.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

__all__ = ["solve_assignment", "sanitize_costs", "SOLVERS"]

SOLVERS = ("auto", "scipy", "torch")


def sanitize_costs(cost: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Replace non-finite entries of each problem by one large finite cost.

    The replacement exceeds ``(2r + 1) * (max|finite| + 1)`` with ``r`` the problem's
    assignment size, so an assignment that uses one more non-finite entry always costs more
    than any that uses fewer: such pairs are matched only when nothing else is possible,
    and among those assignments the finite part is still minimised.

    Args:
        cost: float ``[B, R, C]``.
        valid: bool ``[B, R, C]`` entries that take part (padding excluded).

    Returns:
        float64 ``[B, R, C]``; invalid entries are 0.
    """
    c = cost.double()
    finite = torch.isfinite(c) & valid
    max_abs = torch.where(finite, c.abs(), torch.zeros_like(c)).amax(dim=(1, 2))
    r = torch.minimum(valid.any(2).sum(1), valid.any(1).sum(1)).double()
    big = (2.0 * r + 1.0) * (max_abs + 1.0)
    c = torch.where(finite, c, big[:, None, None].expand_as(c))
    return torch.where(valid, c, torch.zeros_like(c))


def _solve_scipy(
    cost: torch.Tensor, row_valid: torch.Tensor, col_valid: torch.Tensor
) -> torch.Tensor:
    """Per-problem scipy solve; exactly one host copy in and one device copy out."""
    b, r, c = cost.shape
    # Validity rides along as NaN so that the batch crosses to the host as a single tensor.
    packed = cost.masked_fill(~(row_valid[:, :, None] & col_valid[:, None, :]), float("nan"))
    host = packed.cpu().numpy()
    out = np.full((b, r), -1, dtype=np.int64)
    for i in range(b):
        ok = ~np.isnan(host[i])
        rows = np.flatnonzero(ok.any(1))
        cols = np.flatnonzero(ok.any(0))
        if rows.size == 0 or cols.size == 0:
            continue
        ri, ci = linear_sum_assignment(host[i][np.ix_(rows, cols)])
        out[i, rows[ri]] = cols[ci]
    return torch.from_numpy(out).to(cost.device)


def _solve_torch_rows_le_cols(
    cost: torch.Tensor, row_valid: torch.Tensor, col_valid: torch.Tensor
) -> torch.Tensor:
    """Batched Hungarian algorithm for problems with no more valid rows than valid columns.

    Index 0 of the column axis is the virtual column of the textbook formulation; real
    columns are ``1..C`` and real rows ``1..R``.
    """
    b, n, m = cost.shape
    dev = cost.device
    inf = torch.tensor(float("inf"), dtype=torch.float64, device=dev)
    a = torch.zeros(b, n + 1, m + 1, dtype=torch.float64, device=dev)
    a[:, 1:, 1:] = cost
    u = torch.zeros(b, n + 1, dtype=torch.float64, device=dev)
    v = torch.zeros(b, m + 1, dtype=torch.float64, device=dev)
    p = torch.zeros(b, m + 1, dtype=torch.long, device=dev)  # row owning each column, 0 = free
    way = torch.zeros(b, m + 1, dtype=torch.long, device=dev)
    never = torch.cat([torch.zeros(b, 1, dtype=torch.bool, device=dev), ~col_valid], dim=1)
    bidx = torch.arange(b, device=dev)
    for i in range(1, n + 1):
        active = row_valid[:, i - 1]
        if not bool(active.any()):
            continue
        p[:, 0] = torch.where(active, torch.full_like(p[:, 0], i), p[:, 0])
        j0 = torch.zeros(b, dtype=torch.long, device=dev)
        minv = torch.full((b, m + 1), float("inf"), dtype=torch.float64, device=dev)
        used = never.clone()
        running = active.clone()
        # Dijkstra-like search for the cheapest augmenting path from row i to a free column.
        while bool(running.any()):
            used[bidx, j0] |= running
            i0 = p[bidx, j0]
            cur = a[bidx, i0] - u[bidx, i0][:, None] - v
            better = running[:, None] & ~used & (cur < minv)
            minv = torch.where(better, cur, minv)
            way = torch.where(better, j0[:, None], way)
            delta, j1 = torch.where(used, inf, minv).min(dim=1)
            delta = torch.where(running, delta, torch.zeros_like(delta))
            step_used = used & running[:, None]
            u.scatter_add_(1, p * step_used, delta[:, None] * step_used)
            u[:, 0] = 0.0
            v = v - delta[:, None] * step_used
            minv = torch.where(running[:, None] & ~used, minv - delta[:, None], minv)
            j0 = torch.where(running, j1, j0)
            running = running & (p[bidx, j0] != 0)
        # Flip the path back to the virtual column.
        moving = active.clone()
        while bool(moving.any()):
            j1 = way[bidx, j0]
            p[bidx, j0] = torch.where(moving, p[bidx, j1], p[bidx, j0])
            j0 = torch.where(moving, j1, j0)
            moving = moving & (j0 != 0)
    col_for_row = torch.full((b, n + 1), -1, dtype=torch.long, device=dev)
    cols = torch.arange(-1, m, device=dev).expand(b, m + 1)
    owned = p > 0
    col_for_row.scatter_(
        1, torch.where(owned, p, torch.zeros_like(p)), torch.where(owned, cols, -1)
    )
    return col_for_row[:, 1:]


def _solve_torch(
    cost: torch.Tensor, row_valid: torch.Tensor, col_valid: torch.Tensor
) -> torch.Tensor:
    """On-device solve; problems with more rows than columns are solved transposed."""
    b, r, c = cost.shape
    out = torch.full((b, r), -1, dtype=torch.long, device=cost.device)
    tall = row_valid.sum(1) > col_valid.sum(1)
    wide = ~tall
    if bool(wide.any()):
        out[wide] = _solve_torch_rows_le_cols(cost[wide], row_valid[wide], col_valid[wide])
    if bool(tall.any()):
        row_for_col = _solve_torch_rows_le_cols(
            cost[tall].transpose(1, 2), col_valid[tall], row_valid[tall]
        )
        sub = torch.full((int(tall.sum()), r + 1), -1, dtype=torch.long, device=cost.device)
        cols = torch.arange(c, device=cost.device).expand_as(row_for_col)
        hit = row_for_col >= 0
        sub.scatter_(1, torch.where(hit, row_for_col, r), torch.where(hit, cols, -1))
        out[tall] = sub[:, :r]
    return out


def solve_assignment(
    cost: torch.Tensor,
    row_valid: torch.Tensor | None = None,
    col_valid: torch.Tensor | None = None,
    solver: str = "auto",
) -> torch.Tensor:
    """Minimum-cost assignment of each problem in a padded batch.

    Each problem ``b`` uses rows ``row_valid[b]`` and columns ``col_valid[b]`` and assigns
    ``min(#rows, #cols)`` pairs, every row and column at most once. Non-finite costs are made
    safe with :func:`sanitize_costs`.

    Args:
        cost: float ``[B, R, C]`` (any float dtype; solved in float64).
        row_valid: bool ``[B, R]`` or ``None`` (all rows).
        col_valid: bool ``[B, C]`` or ``None`` (all columns).
        solver: ``"scipy"`` (host, one copy per batch), ``"torch"`` (on the cost's device) or
            ``"auto"`` = scipy on every device. Measured on CPU (``docs/benchmarks.md``, ops
            section) scipy is hundreds of times faster at matcher sizes, because the tensor
            solver pays per-operation overhead for each augmenting-path step; on GPU the same
            step count makes it slower than one copy to the host at these sizes too (not yet
            measured on a GPU). Choose ``"torch"`` where a host synchronisation must be avoided.

    Returns:
        int64 ``[B, R]`` column assigned to each row, ``-1`` for unassigned or padding rows.
    """
    if cost.ndim != 3:
        raise ValueError(f"solve_assignment expects cost [B,R,C], got {tuple(cost.shape)}")
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    b, r, c = cost.shape
    if row_valid is None:
        row_valid = torch.ones(b, r, dtype=torch.bool, device=cost.device)
    if col_valid is None:
        col_valid = torch.ones(b, c, dtype=torch.bool, device=cost.device)
    if tuple(row_valid.shape) != (b, r) or tuple(col_valid.shape) != (b, c):
        raise ValueError(
            f"row_valid {tuple(row_valid.shape)} / col_valid {tuple(col_valid.shape)} do not "
            f"match cost {tuple(cost.shape)}"
        )
    if b == 0 or r == 0 or c == 0:
        return torch.full((b, r), -1, dtype=torch.long, device=cost.device)
    row_valid = row_valid.bool()
    col_valid = col_valid.bool()
    safe = sanitize_costs(cost, row_valid[:, :, None] & col_valid[:, None, :])
    if solver == "torch":
        return _solve_torch(safe, row_valid, col_valid)
    return _solve_scipy(safe, row_valid, col_valid)

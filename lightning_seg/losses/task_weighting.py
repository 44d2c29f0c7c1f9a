"""Weights of the tasks of a multi-task loss: fixed, or learned by homoscedastic uncertainty.

Kendall, Gal and Cipolla (2018) weight each task's loss by a learned precision:
``L = sum_t exp(-s_t) L_t + s_t`` with ``s_t`` the log-variance of task ``t``. Its gradient on
``s_t`` is ``1 - exp(-s_t) L_t``: a task's weight settles where ``exp(-s_t) L_t = 1``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import torch
from torch import Tensor, nn

__all__ = ["TaskWeighting"]

Weighting = Literal["fixed", "uncertainty"]


class TaskWeighting(nn.Module):
    """Weight named loss terms by the task they belong to.

    Args:
        weights: fixed weight of each task, e.g. ``{"instance": 1.0, "semantic": 0.5}``.
        mode: ``fixed`` multiplies every term by its task's weight; ``uncertainty`` learns one
            log-variance ``s_t`` per task (started at ``-log(weight)``, so training starts at the
            fixed weights), multiplies the task's terms by ``exp(-s_t)`` and adds the term
            ``loss_uncertainty = sum_t s_t``.
    """

    def __init__(self, weights: Mapping[str, float], mode: Weighting = "fixed") -> None:
        super().__init__()
        if mode not in ("fixed", "uncertainty"):
            raise ValueError(f"loss weighting must be 'fixed' or 'uncertainty', got {mode!r}")
        self.tasks = list(weights)
        self.mode = mode
        self.register_buffer("fixed", torch.tensor([float(weights[t]) for t in self.tasks]), persistent=False)
        if mode == "uncertainty":
            bad = {t: w for t, w in weights.items() if w <= 0}
            if bad:
                raise ValueError(f"uncertainty weighting starts at -log(weight): weights must be > 0, got {bad}")
            self.log_variance = nn.Parameter(torch.tensor([-math.log(weights[t]) for t in self.tasks]))

    def forward(self, terms: Mapping[str, Tensor], task_of: Mapping[str, str]) -> dict[str, Tensor]:
        """Weighted terms (float scalars), and ``loss_uncertainty`` in ``uncertainty`` mode.

        Args:
            terms: named float scalar losses.
            task_of: the task of every term name.
        """
        missing = sorted(set(terms) - set(task_of))
        if missing:
            raise KeyError(f"loss terms {missing} belong to no task of {self.tasks}")
        index = {t: i for i, t in enumerate(self.tasks)}
        if self.mode == "fixed":
            return {k: v * self.fixed[index[task_of[k]]] for k, v in terms.items()}
        precision = torch.exp(-self.log_variance)
        out = {k: v * precision[index[task_of[k]]] for k, v in terms.items()}
        out["loss_uncertainty"] = self.log_variance.sum()
        return out

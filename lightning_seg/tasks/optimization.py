"""The optimiser and learning-rate policy every task uses (no Lightning here).

* Parameter groups: (backbone | rest) × (decay | no decay). The backbone learns at
  ``lr * backbone_lr_multiplier``; norm weights, biases, embeddings and position tables get no
  weight decay, as Mask2Former and mmsegmentation train.
* Schedule: linear warm-up from ``warmup_factor * lr``, then ``poly``, ``cosine``, ``step`` or
  ``constant``, stepped every optimiser step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

NO_DECAY_KEYWORDS = ("query_feat", "query_embed", "level_embed", "pos_embed", "cls_token", "relative_position")
"""Parameter-name parts that mark embeddings (no weight decay) whatever module holds them."""

Schedule = Literal["poly", "cosine", "step", "constant"]


def parameter_groups(
    module: nn.Module,
    lr: float,
    weight_decay: float,
    backbone_lr_multiplier: float = 1.0,
    backbone_prefix: str = "model.backbone.",
    no_decay_names: set[str] | None = None,
) -> list[dict[str, Any]]:
    """Optimiser groups of ``module``'s trainable parameters: (backbone | rest) × (decay | none).

    Args:
        module: the task (or any module).
        lr: base learning rate.
        weight_decay: decay of weights; parameters with ``ndim <= 1``, names in
            ``no_decay_names`` or containing a :data:`NO_DECAY_KEYWORDS` entry get none.
        backbone_lr_multiplier: learning-rate factor of parameters under ``backbone_prefix``.
        backbone_prefix: name prefix of the backbone's parameters.
        no_decay_names: full parameter names with no weight decay (a model's norms/embeddings).

    Returns:
        dicts with ``params``, ``lr`` and ``weight_decay``; empty groups are left out.
    """
    no_decay_names = no_decay_names or set()
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        backbone = name.startswith(backbone_prefix)
        no_decay = p.ndim <= 1 or name in no_decay_names or any(k in name for k in NO_DECAY_KEYWORDS)
        groups.setdefault((backbone, no_decay), []).append(p)
    return [
        {
            "params": params,
            "lr": lr * (backbone_lr_multiplier if backbone else 1.0),
            "weight_decay": 0.0 if no_decay else weight_decay,
        }
        for (backbone, no_decay), params in groups.items()
    ]


def lr_factor(
    step: int,
    total: int,
    schedule: Schedule = "poly",
    warmup_steps: int = 0,
    warmup_factor: float = 1e-3,
    poly_power: float = 0.9,
    milestones: Sequence[float] | None = None,
    gamma: float = 0.1,
) -> float:
    """Multiplier of the base learning rate at ``step`` of ``total``: warm-up, then the schedule.

    Args:
        step: optimiser step (0-based).
        total: schedule length ``T``.
        schedule: ``poly`` (``(1 - t/T)^power``), ``cosine``, ``step`` (×``gamma`` at each
            milestone, a fraction of ``T``; default ``[0.9, 0.95]``, Mask2Former's COCO
            schedule) or ``constant``.
        warmup_steps: linear warm-up from ``warmup_factor`` over this many steps.
        warmup_factor: starting fraction of the warm-up.
        poly_power: exponent of the poly schedule.
        milestones: fractions of ``T`` of the ``step`` schedule.
        gamma: decay factor of the ``step`` schedule.
    """
    if step < warmup_steps:
        alpha = step / max(1, warmup_steps)
        warm = warmup_factor * (1 - alpha) + alpha
    else:
        warm = 1.0
    t = min(step, total) / max(1, total)
    if schedule == "poly":
        sched = (1.0 - t) ** poly_power
    elif schedule == "cosine":
        sched = 0.5 * (1.0 + math.cos(math.pi * t))
    elif schedule == "step":
        sched = gamma ** sum(t >= m for m in (milestones if milestones is not None else [0.9, 0.95]))
    elif schedule == "constant":
        sched = 1.0
    else:
        raise ValueError(f"lr_schedule must be poly, cosine, step or constant, got {schedule!r}")
    return warm * sched


def build_optimizer(
    groups: list[dict[str, Any]], name: Literal["adamw", "sgd"], lr: float, weight_decay: float, momentum: float
) -> torch.optim.Optimizer:
    """AdamW (Mask2Former) or SGD with momentum (DeepLab / FCN) over ``groups``."""
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {name!r}")

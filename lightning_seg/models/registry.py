"""Models by name, timm style, each entry declaring the family (the task) it belongs to.

A task builds its model with :func:`create_model` and its own ``family``; a name of another
family, or an unknown name, fails when the task is constructed (before any data is read) with
the names the task accepts. A new architecture joins with one :func:`register_model` line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

Family = Literal["per_pixel", "mask_classification", "rcnn", "dense_instance", "detr", "max_deeplab"]
"""What a model outputs, hence which task trains it: ``per_pixel`` (class logits ``[B,K,H,W]``,
:class:`~lightning_seg.tasks.SemanticSegmentationModule`), ``mask_classification``
(``pred_logits``/``pred_masks``, :class:`~lightning_seg.tasks.MaskClassificationModule`) or
``rcnn`` (losses in training, box detections with masks in eval,
:class:`~lightning_seg.tasks.RCNNModule`) or ``dense_instance`` (grid or prototype outputs
in both modes, :class:`~lightning_seg.tasks.DenseInstanceModule`) or ``detr`` (``pred_logits``,
``pred_boxes``, ``pred_masks``, box-only ``aux_outputs``, :class:`~lightning_seg.tasks.DETRModule`) or
``max_deeplab`` (``pred_logits``, ``pred_masks`` with a softmax over slots, ``pixel_features``,
``semantic_logits``, :class:`~lightning_seg.tasks.MaXDeepLabModule`)."""


@dataclass(frozen=True)
class ModelEntry:
    """One registered architecture: its constructor and its family."""

    name: str
    cls: type[nn.Module]
    family: Family


MODEL_REGISTRY: dict[str, ModelEntry] = {}


def _key(name: str) -> str:
    return name.lower().replace("-", "_")


def register_model(name: str, cls: type[nn.Module], family: Family) -> None:
    """Make ``cls`` available to :func:`create_model` as ``name`` in ``family``."""
    key = _key(name)
    if key in MODEL_REGISTRY and MODEL_REGISTRY[key].cls is not cls:
        raise ValueError(f"model name {name!r} is already registered for {MODEL_REGISTRY[key].cls.__name__}")
    MODEL_REGISTRY[key] = ModelEntry(key, cls, family)


def list_models(family: Family | None = None) -> list[str]:
    """Registered names (of one ``family`` when given), sorted."""
    return sorted(k for k, e in MODEL_REGISTRY.items() if family is None or e.family == family)


def model_entry(name: str, family: Family | None = None, key: str = "model") -> ModelEntry:
    """The entry of ``name``; ``ValueError`` naming the config ``key`` and the valid names when
    ``name`` is unknown or of another family than ``family``."""
    entry = MODEL_REGISTRY.get(_key(name))
    valid = list_models(family)
    if entry is None:
        raise ValueError(f"{key}: unknown model {name!r}; available: {valid}")
    if family is not None and entry.family != family:
        raise ValueError(
            f"{key}: {name!r} is a {entry.family} model; this task takes {family} models: {valid}"
        )
    return entry


def create_model(name: str, family: Family | None = None, **kwargs: Any) -> nn.Module:
    """Build the architecture ``name`` (see :func:`list_models`) with its constructor ``kwargs``.

    Example: ``create_model("deeplabv3plus", "per_pixel", num_classes=150, backbone="resnet50")``.

    Args:
        name: registered name (case-insensitive, ``-`` = ``_``).
        family: when given, ``name`` must belong to it (see :func:`model_entry`).
        **kwargs: the class's constructor arguments.
    """
    return model_entry(name, family).cls(**kwargs)

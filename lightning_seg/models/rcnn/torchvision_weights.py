"""torchvision ``maskrcnn_resnet50_fpn`` / ``_v2`` state dicts -> :class:`MaskRCNN` weights.

Renames the modules and moves the background class: torchvision's class 0 is background and
classes are ``1..K``; here classes are ``0..K-1`` and the box classifier's background is last,
while box regression and masks have no background row at all.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lightning_seg.models.rcnn.mask_rcnn import MaskRCNN
from lightning_seg.models.rcnn.settings import TorchvisionVersion, torchvision_settings

_RENAMES = [
    # checkpoints written before torchvision's module versions 2 (e.g. its published COCO file)
    (r"^rpn\.head\.conv\.(weight|bias)$", r"rpn.head.conv.0.0.\1"),
    (r"^backbone\.fpn\.(inner|layer)_blocks\.(\d+)\.(weight|bias)$", r"backbone.fpn.\1_blocks.\2.0.\3"),
    (r"^roi_heads\.mask_head\.mask_fcn(\d+)\.(weight|bias)$", lambda m: f"roi_heads.mask_head.{int(m.group(1)) - 1}.0.{m.group(2)}"),
    (r"^backbone\.body\.", "backbone.model."),
    (r"^backbone\.fpn\.inner_blocks\.", "fpn.lateral."),
    (r"^backbone\.fpn\.layer_blocks\.", "fpn.output."),
    (r"^roi_heads\.box_head\.(\d+)\.", r"roi_heads.box_head.layers.\1."),
    (r"^roi_heads\.mask_head\.(\d+)\.", r"roi_heads.mask_head.convs.\1."),
    (r"^roi_heads\.mask_predictor\.conv5_mask\.", "roi_heads.mask_head.deconv."),
    (r"^roi_heads\.mask_predictor\.mask_fcn_logits\.", "roi_heads.mask_head.predictor."),
]


def _select_classes(key: str, value: Tensor, rows: Tensor) -> Tensor:
    """Keep background and the rows of ``rows`` (torchvision labels) of the class-sized tensors."""
    keep = torch.cat([torch.zeros(1, dtype=torch.int64), rows])
    if key.startswith(("roi_heads.box_predictor.cls_score.", "roi_heads.mask_predictor.mask_fcn_logits.")):
        return value[keep] if value.shape[0] > 1 else value
    if key.startswith("roi_heads.box_predictor.bbox_pred."):  # torchvision's regression is per class
        return value.view(-1, 4, *value.shape[1:])[keep].flatten(0, 1)
    return value


def torchvision_num_classes(state: dict[str, Tensor]) -> int:
    """``K`` of a torchvision Mask R-CNN state dict (its classifier has ``K + 1`` rows)."""
    key = "roi_heads.box_predictor.cls_score.weight"
    if key not in state:
        raise ValueError(f"not a torchvision Mask R-CNN state dict: no {key!r}")
    return int(state[key].shape[0]) - 1


def convert_torchvision_mask_rcnn(state: dict[str, Tensor], class_ids: Sequence[int] | None = None) -> dict[str, Tensor]:
    """Our keys and class layout for a torchvision Mask R-CNN (v1 or v2) state dict.

    Args:
        state: torchvision's state dict.
        class_ids: torchvision label (row, 1-based) of each of our classes, to keep a subset
            or reorder (COCO: torchvision's labels are the 91 COCO category ids, ours the 80
            contiguous ids, so ``class_ids`` = the dataset's category id of each class);
            None keeps labels ``1..K`` as classes ``0..K-1``.
    """
    if class_ids is not None:
        rows = torch.as_tensor(list(class_ids), dtype=torch.int64)
        state = {k: _select_classes(k, v, rows) for k, v in state.items()}
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        new = key
        for pattern, repl in _RENAMES:
            new = re.sub(pattern, repl, new)
        if new.startswith("roi_heads.box_predictor.cls_score."):
            value = torch.cat([value[1:], value[:1]])  # background first -> last
        elif new.startswith("roi_heads.box_predictor.bbox_pred."):
            value = value[4:]  # torchvision regresses every class, background included: drop it
        elif new.startswith("roi_heads.mask_head.predictor.") and value.shape[0] > 1:
            value = value[1:]
        out[new] = value
    return out


def load_torchvision_weights(model: MaskRCNN, weights: str | Path | dict[str, Tensor],
                             class_ids: Sequence[int] | None = None) -> MaskRCNN:
    """Load a torchvision Mask R-CNN state dict (a local file or a dict) into ``model``.

    ``class_ids``: torchvision label of each of the model's classes (see
    :func:`convert_torchvision_mask_rcnn`); needed when the numbers of classes differ.

    Raises ``ValueError`` naming the file and the keys when the state dict does not fit (wrong
    architecture or number of classes). ``num_batches_tracked`` counters are ignored where the
    model has frozen norms.
    """
    weights, name = _read_state(weights)
    return _load_state(model, weights, name, class_ids)


def _read_state(weights: str | Path | dict[str, Tensor]) -> tuple[dict[str, Tensor], str]:
    """The state dict of a local file (or the dict itself) and a name for error messages."""
    if isinstance(weights, dict):
        return weights, "state dict"
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"torchvision Mask R-CNN weights not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    return state, str(path)


def _load_state(model: MaskRCNN, weights: dict[str, Tensor], name: str,
                class_ids: Sequence[int] | None) -> MaskRCNN:
    k = torchvision_num_classes(weights)
    if class_ids is not None:
        bad = [c for c in class_ids if not 1 <= int(c) <= k]
        if len(class_ids) != model.num_classes or bad:
            raise ValueError(f"{name}: class_ids must give one torchvision label in 1..{k} per class "
                             f"({model.num_classes}); got {len(class_ids)} ids, out of range: {bad[:5]}")
    elif k != model.num_classes:
        raise ValueError(f"{name}: torchvision model has {k} classes (+ background); the model has "
                         f"{model.num_classes} (pass class_ids to pick them)")
    converted = convert_torchvision_mask_rcnn(weights, class_ids)
    own = model.state_dict()
    converted = {key: v for key, v in converted.items() if key in own or not key.endswith("num_batches_tracked")}
    missing = sorted(set(own) - set(converted))
    unexpected = sorted(set(converted) - set(own))
    wrong = sorted(key for key in set(own) & set(converted) if own[key].shape != converted[key].shape)
    if missing or unexpected or wrong:
        raise ValueError(f"{name}: does not fit this Mask R-CNN (missing {missing[:6]}, unexpected "
                         f"{unexpected[:6]}, wrong shape {wrong[:6]}); for a v2 checkpoint use "
                         "torchvision_settings('v2')")
    model.load_state_dict(converted)
    return model


def mask_rcnn_from_torchvision(weights: str | Path | dict[str, Tensor], version: TorchvisionVersion = "v1",
                               **overrides: Any) -> MaskRCNN:
    """A :class:`MaskRCNN` with torchvision's settings (:func:`torchvision_settings`) and its weights.

    Args:
        weights: local state-dict file of ``maskrcnn_resnet50_fpn`` (``v1``) or ``_v2``, or the dict.
        version: ``v1`` or ``v2``.
        **overrides: constructor arguments to change (e.g. ``roi_heads``).
    """
    state, name = _read_state(weights)
    kwargs = {**torchvision_settings(version), **overrides}
    return _load_state(MaskRCNN(torchvision_num_classes(state), **kwargs), state, name, None)

"""Start a model from a checkpoint whose layers may not all fit (fine-tuning on new classes)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)


FORMATS = ("ours", "hf", "torchvision", "detectron2")
"""Checkpoint formats ``init_from`` reads, named by a ``<format>:`` prefix (none: ``ours``)."""


def _read_state(path: Path, fmt: str) -> dict[str, torch.Tensor]:
    if fmt == "detectron2":
        from lightning_seg.models.mask_classification.detectron2_weights import (
            read_detectron2_checkpoint,
        )

        return read_detectron2_checkpoint(path)  # type: ignore[return-value]
    from lightning_seg.models.weight_files import read_weights

    ckpt, _ = read_weights(path)
    return ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt


def _converted(state: dict[str, torch.Tensor], fmt: str, model: nn.Module | None, key: str) -> dict[str, torch.Tensor]:
    """A foreign state dict in the task's names (``model.`` + the model's own)."""
    from lightning_seg.models.detr import DETR
    from lightning_seg.models.mask_classification import Mask2Former, MaskFormer

    name = type(model).__name__
    if fmt == "hf" and isinstance(model, (Mask2Former, MaskFormer)):
        from lightning_seg.models.mask_classification.hf_weights import (
            convert_hf_mask2former_state_dict,
            convert_hf_maskformer_state_dict,
        )

        convert = convert_hf_maskformer_state_dict if isinstance(model, MaskFormer) else convert_hf_mask2former_state_dict
    elif fmt == "hf" and isinstance(model, DETR):
        from lightning_seg.models.detr.hf_weights import (
            convert_hf_detr_state_dict as convert,
        )
    elif fmt == "detectron2" and isinstance(model, Mask2Former):
        from lightning_seg.models.mask_classification.detectron2_weights import (
            convert_detectron2_mask2former_state_dict as convert,
        )
    elif fmt == "torchvision" and name in ("FCN", "DeepLabV3"):
        from lightning_seg.models.per_pixel.torchvision_weights import (
            convert_torchvision_state_dict as convert,
        )
    else:
        raise ValueError(f"{key}: {fmt!r} checkpoints have no conversion into {name} (hf: Mask2Former, MaskFormer, "
                         "DETR; detectron2: Mask2Former; torchvision: FCN, DeepLabV3; Mask R-CNN takes torchvision "
                         "weights through model.torchvision_weights)")
    return {f"model.{k}": v for k, v in convert(state).items()}


def load_matching_weights(module: nn.Module, path: str | Path, key: str = "model.init_from") -> dict[str, list[str]]:
    """Load the tensors of a checkpoint whose names and shapes match ``module``'s state dict.

    ``path`` may start with a format, ``{ours|hf|detectron2|torchvision}:PATH`` (default
    ``ours``): ours is a Lightning checkpoint's ``state_dict`` or a plain state dict of the task;
    ``hf`` an HF transformers state dict (``.bin``, ``.pth`` or ``.safetensors``) of Mask2Former,
    MaskFormer or DETR, converted to the task's model
    (:mod:`lightning_seg.models.mask_classification.hf_weights`,
    :mod:`lightning_seg.models.detr.hf_weights`); ``detectron2`` a Mask2Former model-zoo ``.pkl``
    (:mod:`lightning_seg.models.mask_classification.detectron2_weights`); ``torchvision``
    torchvision's FCN / DeepLabV3 weights. Files are read with ``weights_only=True``. Tensors of another shape (the class head
    after a change of class count) and tensors missing from the file keep their fresh
    initialisation; both are logged, with the file's tensors that nothing took.

    Args:
        module: the task to fill (in place; foreign formats fill its ``model``).
        path: checkpoint file, optionally ``<format>:``-prefixed.
        key: the config key that named ``path``, for the error message.

    Returns:
        ``{"reinitialised": ["name (old shape) -> (new shape)", ...], "missing": [...],
        "unexpected": [...]}``.
    """
    text = str(path)
    fmt, sep, rest = text.partition(":")
    if sep and fmt in FORMATS:
        text = rest
    elif sep and fmt.isidentifier() and fmt not in FORMATS and not Path(text).exists():
        raise ValueError(f"{key}: unknown checkpoint format {fmt!r} in {str(path)!r}; use one of "
                         f"{', '.join(f'{f}:PATH' for f in FORMATS)}")
    else:
        fmt = "ours"
    path = Path(text)
    if not path.is_file():
        raise FileNotFoundError(f"{key}: checkpoint not found: {path}")
    state = _read_state(path, fmt)
    if fmt != "ours":
        state = _converted(state, fmt, getattr(module, "model", None), key)
    own = module.state_dict()
    loadable, reshaped = {}, []
    for k, v in state.items():
        if k in own and own[k].shape != v.shape:
            reshaped.append(f"{k} {tuple(v.shape)} -> {tuple(own[k].shape)}")
        elif k in own:
            loadable[k] = v
    # BatchNorm's step counter is not a weight: formats without it (HF, detectron2) miss nothing
    missing = sorted(k for k in set(own) - set(loadable) - {r.split(" ")[0] for r in reshaped}
                     if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(own))
    module.load_state_dict(loadable, strict=False)
    log.warning(
        "%s %s: loaded %d tensors; re-initialised %d with a new shape%s; %d missing; %d unused",
        key, path, len(loadable), len(reshaped), f" ({'; '.join(reshaped)})" if reshaped else "",
        len(missing), len(unexpected),
    )
    return {"reinitialised": reshaped, "missing": missing, "unexpected": unexpected}

"""Reading a foreign weights file and loading its converted tensors all-or-nothing, shared by the
HF (DETR, Mask2Former, MaskFormer) converters and ``init_from``."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn


def read_weights(source: str | Path | dict[str, Tensor]) -> tuple[dict[str, Tensor], str]:
    """The state dict of a local ``.bin`` / ``.pth`` / ``.safetensors`` file (read with
    ``weights_only=True``), or the dict itself, and a name for error messages."""
    if isinstance(source, dict):
        return source, "the given state dict"
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path)), str(path)
    return torch.load(path, map_location="cpu", weights_only=True), str(path)


def load_converted(model: nn.Module, converted: dict[str, Tensor], name: str) -> None:
    """Load ``converted`` (already in ``model``'s names) only if it fits exactly; otherwise raise
    ``ValueError`` naming ``name`` and the mis-shaped / missing / unexpected keys, loading nothing.
    BatchNorm step counters may be absent."""
    own = model.state_dict()
    bad = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in converted.items()
           if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in converted and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in converted if k not in own]
    if bad or missing or unexpected:
        raise ValueError(f"{name}: does not fit this {type(model).__name__}: mis-shaped {bad[:5]}, missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    model.load_state_dict(converted, strict=False)

"""Load torchvision ``fcn_resnet*`` / ``deeplabv3_resnet*`` weights into :class:`FCN` / :class:`DeepLabV3`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from lightning_seg.models.per_pixel.deeplabv3 import DeepLabV3
from lightning_seg.models.per_pixel.fcn import FCN

# torchvision prefix -> ours. The heads have identical layouts, only the names differ.
_PREFIXES = (("backbone.", "backbone.model."), ("classifier.", "head."), ("aux_classifier.", "aux_head."))


def convert_torchvision_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a torchvision FCN / DeepLabV3 state dict's keys to this package's module names.

    Args:
        state_dict: ``torchvision.models.segmentation.fcn_resnet50(...).state_dict()`` (or the
            DeepLabV3 / ResNet-101 equivalents).

    Returns:
        The same tensors under our keys (``backbone.model.*``, ``head.*``, ``aux_head.*``).
    """
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        for old, new in _PREFIXES:
            if key.startswith(old):
                out[new + key[len(old):]] = value
                break
        else:
            raise KeyError(f"unexpected key {key!r} in a torchvision segmentation state dict")
    return out


def load_torchvision_weights(model: nn.Module, state_dict: Mapping[str, Tensor] | str | Path) -> nn.Module:
    """Load torchvision FCN / DeepLabV3 weights into ``model`` (in place) and return it.

    ``model`` must be an :class:`FCN` or :class:`DeepLabV3` built with
    ``backbone_source="torchvision"``, the same ResNet, ``output_stride=8`` and, when the
    state dict has an auxiliary classifier, ``aux_head=True``; mismatches raise naming the
    keys. Images are normalised inside our models, so feed them ``[0, 1]`` images where
    torchvision's model took ImageNet-normalised ones.

    Args:
        model: the model to fill.
        state_dict: a torchvision state dict or a path to one saved with ``torch.save``.
    """
    if not isinstance(model, (FCN, DeepLabV3)):
        raise TypeError(f"torchvision segmentation weights load into FCN or DeepLabV3, not {type(model).__name__}")
    if getattr(model.backbone, "source", None) != "torchvision":
        raise ValueError("torchvision weights need a model built with backbone_source='torchvision'")
    if isinstance(state_dict, (str, Path)):
        path = Path(state_dict)
        if not path.is_file():
            raise FileNotFoundError(f"torchvision weights file not found: {path}")
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    converted = convert_torchvision_state_dict(state_dict)
    missing, unexpected = model.load_state_dict(converted, strict=False)
    if missing or unexpected:
        raise ValueError(f"torchvision weights do not match {type(model).__name__}: missing {missing[:8]}, "
                         f"unexpected {unexpected[:8]} (check backbone, aux_head, skip_stages, num_classes)")
    return model

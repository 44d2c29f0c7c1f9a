"""Start a model from a checkpoint whose layers may not all fit (fine-tuning on new classes)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)


def load_matching_weights(module: nn.Module, path: str | Path, key: str = "model.init_from") -> dict[str, list[str]]:
    """Load the tensors of a checkpoint whose names and shapes match ``module``'s state dict.

    The file is read with ``weights_only=True`` (a Lightning checkpoint's ``state_dict`` or a
    plain state dict). Tensors of another shape (the class head after a change of class count)
    and tensors missing from the file keep their fresh initialisation; both are logged.

    Args:
        module: the module to fill (in place).
        path: checkpoint file.
        key: the config key that named ``path``, for the error message.

    Returns:
        ``{"reinitialised": ["name (old shape) -> (new shape)", ...], "missing": [...],
        "unexpected": [...]}``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{key}: checkpoint not found: {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
    own = module.state_dict()
    loadable, reshaped = {}, []
    for k, v in state.items():
        if k in own and own[k].shape != v.shape:
            reshaped.append(f"{k} {tuple(v.shape)} -> {tuple(own[k].shape)}")
        elif k in own:
            loadable[k] = v
    missing = sorted(set(own) - set(loadable) - {r.split(" ")[0] for r in reshaped})
    unexpected = sorted(set(state) - set(own))
    module.load_state_dict(loadable, strict=False)
    log.warning(
        "%s %s: loaded %d tensors; re-initialised %d with a new shape%s; %d missing; %d unused",
        key, path, len(loadable), len(reshaped), f" ({'; '.join(reshaped)})" if reshaped else "",
        len(missing), len(unexpected),
    )
    return {"reinitialised": reshaped, "missing": missing, "unexpected": unexpected}

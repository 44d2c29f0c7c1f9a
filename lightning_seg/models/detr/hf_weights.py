"""HF transformers' ``DetrForSegmentation`` / ``DetrForObjectDetection`` weights -> :class:`DETR`.

The two models hold the same tensors under other names; the conversion is a renaming, so a
converted state dict gives HF's ``logits``, ``pred_boxes`` and ``pred_masks`` on the same
(normalised) input (``tests/models/test_detr.py``).
"""

from __future__ import annotations

import re
from pathlib import Path

from torch import Tensor, nn

from lightning_seg.models.weight_files import load_converted, read_weights

_LAYER = {
    "self_attn.o_proj": "self_attn.out_proj",
    "encoder_attn.o_proj": "cross_attn.out_proj",
    "encoder_attn.": "cross_attn.",
    "mlp.fc1": "ffn.linear1",
    "mlp.fc2": "ffn.linear2",
    "self_attn_layer_norm": "norm1",
}
_RULES: list[tuple[str, str]] = [
    (r"^(?:detr\.)?model\.backbone\.model\.", "backbone.model."),
    (r"^(?:detr\.)?model\.input_projection\.", "input_proj."),
    (r"^(?:detr\.)?model\.query_position_embeddings\.", "query_embed."),
    (r"^(?:detr\.)?model\.decoder\.layernorm\.", "decoder_norm."),
    (r"^(?:detr\.)?class_labels_classifier\.", "class_embed."),
    (r"^(?:detr\.)?bbox_predictor\.", "bbox_embed."),
    (r"^bbox_attention\.", "attention_map."),
    (r"^mask_head\.(conv[12])\.conv\.", r"mask_head.\1.0."),
    (r"^mask_head\.(conv[12])\.norm\.", r"mask_head.\1.1."),
    (r"^mask_head\.fpn_stages\.(\d+)\.fpn_adapter\.", r"mask_head.adapters.\1."),
    (r"^mask_head\.fpn_stages\.(\d+)\.refine\.conv\.", r"mask_head.refine.\1.0."),
    (r"^mask_head\.fpn_stages\.(\d+)\.refine\.norm\.", r"mask_head.refine.\1.1."),
    (r"^mask_head\.output_conv\.", "mask_head.out."),
]


def detr_layer_suffix(rest: str, part: str) -> str:
    """Our name of an HF DETR-style ``encoder`` / ``decoder`` layer tensor (the part after
    ``layers.<i>.``), shared by DETR and MaskFormer."""
    for old, new in _LAYER.items():
        if rest.startswith(old):
            rest = new + rest[len(old):]
            break
    if rest.startswith("final_layer_norm"):
        rest = ("norm2" if part == "encoder" else "norm3") + rest[len("final_layer_norm"):]
    elif rest.startswith("encoder_attn_layer_norm"):
        rest = "norm2" + rest[len("encoder_attn_layer_norm"):]
    return rest


def _layer_key(key: str) -> str | None:
    m = re.match(r"^(?:detr\.)?model\.(encoder|decoder)\.layers\.(\d+)\.(.*)$", key)
    if m is None:
        return None
    part, index, rest = m.groups()
    return f"{part}.{index}.{detr_layer_suffix(rest, part)}"


def convert_hf_detr_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename an HF ``DetrForSegmentation`` (or ``DetrForObjectDetection``) state dict to ours.

    Raises ``ValueError`` naming the keys no rule covers (an architecture this DETR does not
    have, e.g. a learned position embedding or another backbone layout).
    """
    out, unknown = {}, []
    for key, value in state_dict.items():
        new = _layer_key(key)
        if new is None:
            for pattern, repl in _RULES:
                if re.match(pattern, key):
                    new = re.sub(pattern, repl, key)
                    break
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise ValueError(f"HF DETR keys with no counterpart here: {unknown[:8]}{' ...' if len(unknown) > 8 else ''}")
    return out


def load_hf_detr_weights(model: nn.Module, path: str | Path | dict[str, Tensor]) -> None:
    """Load an HF DETR state dict (a local ``.bin`` / ``.pth`` / ``.safetensors`` file, or the dict)
    into ``model`` (a :class:`~lightning_seg.models.detr.DETR` built with the same sizes).

    Raises ``ValueError`` naming the file and the missing / unexpected / mis-shaped keys.
    """
    state, name = read_weights(path)
    load_converted(model, convert_hf_detr_state_dict(state), name)

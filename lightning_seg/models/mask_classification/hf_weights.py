"""HF transformers' ``Mask2FormerForUniversalSegmentation`` / ``MaskFormerForInstanceSegmentation``
weights -> :class:`Mask2Former` / :class:`MaskFormer`.

The two models hold the same tensors under other names, except the decoder's cross-attention,
which HF keeps as one fused ``in_proj`` (split here into ``q``, ``k``, ``v``). With a timm
backbone (HF's ``TimmBackbone``) the conversion gives HF's ``class_queries_logits``,
``masks_queries_logits`` and auxiliary logits on the same input (HF takes normalised pixels,
ours normalises inside; ``tests/models/test_mask2former_hf.py``). An HF decoder of
``decoder_layers = L`` builds ``L - 1`` layers: ours takes ``num_decoder_layers = L - 1``.

MaskFormer's tensors are DETR's decoder (the same renaming as
:mod:`lightning_seg.models.detr.hf_weights`) over an FPN; the converted model gives HF's final
logits. Its auxiliary outputs are the original model's (each earlier layer's output through the
decoder norm); HF's own ``auxiliary_logits`` are taken from un-normed layer outputs and differ
(``tests/models/test_mask2former_hf.py`` checks ours against HF's hidden states instead).
"""

from __future__ import annotations

import re
from pathlib import Path

from torch import Tensor, nn

from lightning_seg.models.weight_files import load_converted, read_weights


_ENCODER_LAYER = {"self_attn_layer_norm": "norm1", "fc1": "ffn.linear1", "fc2": "ffn.linear2",
                  "final_layer_norm": "norm2"}
_DECODER_LAYER = {"self_attn_layer_norm": "norm_self", "cross_attn_layer_norm": "norm_cross",
                  "fc1": "ffn.linear1", "fc2": "ffn.linear2", "final_layer_norm": "norm_ffn"}
_RULES: list[tuple[str, str]] = [
    (r"^model\.pixel_level_module\.encoder\._backbone\.", "backbone.model."),
    (r"^model\.pixel_level_module\.decoder\.level_embed$", "pixel_decoder.level_embed"),
    (r"^model\.pixel_level_module\.decoder\.input_projections\.", "pixel_decoder.input_proj."),
    (r"^model\.pixel_level_module\.decoder\.mask_projection\.", "pixel_decoder.mask_features."),
    (r"^model\.transformer_module\.queries_embedder\.", "transformer_decoder.query_embed."),
    (r"^model\.transformer_module\.queries_features\.", "transformer_decoder.query_feat."),
    (r"^model\.transformer_module\.level_embed\.", "transformer_decoder.level_embed."),
    (r"^model\.transformer_module\.input_projections\.", "transformer_decoder.input_proj."),
    (r"^model\.transformer_module\.decoder\.layernorm\.", "transformer_decoder.decoder_norm."),
    (r"^model\.transformer_module\.decoder\.mask_predictor\.mask_embedder\.(\d+)\.0\.",
     r"transformer_decoder.mask_embed.layers.\1."),
    (r"^class_predictor\.", "transformer_decoder.class_embed."),
]
_DROPPED = (r"^criterion\.",)


def _rename_layer(rest: str, table: dict[str, str]) -> str:
    for old, new in table.items():
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old):]
    return rest


def convert_hf_mask2former_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename (and split the fused cross-attention of) an HF ``Mask2FormerForUniversalSegmentation``
    state dict to ours.

    Raises ``ValueError`` naming the keys no rule covers (e.g. an HF Swin or ResNet backbone,
    whose layouts are not timm's).
    """
    adapters = {int(m.group(1)) for k in state_dict if (m := re.match(r"^model\.pixel_level_module\.decoder\."
                                                                       r"adapter_(\d+)\.", k))}
    out: dict[str, Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        if any(re.match(p, key) for p in _DROPPED):
            continue
        m = re.match(r"^model\.pixel_level_module\.decoder\.encoder\.layers\.(\d+)\.(.*)$", key)
        if m:
            out[f"pixel_decoder.encoder_layers.{m.group(1)}.{_rename_layer(m.group(2), _ENCODER_LAYER)}"] = value
            continue
        m = re.match(r"^model\.pixel_level_module\.decoder\.(adapter|layer)_(\d+)\.(.*)$", key)
        if m:
            # HF numbers the FPN levels finest last from 1, ours coarsest first from 0
            index = len(adapters) - int(m.group(2))
            out[f"pixel_decoder.{'lateral_convs' if m.group(1) == 'adapter' else 'output_convs'}.{index}.{m.group(3)}"] = value
            continue
        m = re.match(r"^model\.transformer_module\.decoder\.layers\.(\d+)\.(.*)$", key)
        if m:
            prefix, rest = f"transformer_decoder.layers.{m.group(1)}.", m.group(2)
            fused = re.match(r"^cross_attn\.in_proj_(weight|bias)$", rest)
            if fused:
                for name, part in zip(("q", "k", "v"), value.chunk(3, 0)):
                    out[f"{prefix}cross_attn.{name}_proj.{fused.group(1)}"] = part.clone()
            else:
                out[prefix + _rename_layer(rest, _DECODER_LAYER)] = value
            continue
        for pattern, repl in _RULES:
            if re.match(pattern, key):
                out[re.sub(pattern, repl, key)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"HF Mask2Former keys with no counterpart here: {unknown[:8]}"
                         f"{' ...' if len(unknown) > 8 else ''}")
    return out


def convert_hf_maskformer_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename an HF ``MaskFormerForInstanceSegmentation`` state dict (timm backbone) to ours.

    Raises ``ValueError`` naming the keys no rule covers.
    """
    from lightning_seg.models.detr.hf_weights import detr_layer_suffix

    levels = {int(m.group(1)) for k in state_dict
              if (m := re.match(r"^model\.pixel_level_module\.decoder\.fpn\.layers\.(\d+)\.", k))}
    rules = [
        (r"^model\.pixel_level_module\.encoder\._backbone\.", "backbone.model."),
        (r"^model\.pixel_level_module\.decoder\.fpn\.stem\.", f"pixel_decoder.fpn.output.{len(levels)}."),
        (r"^model\.pixel_level_module\.decoder\.mask_projection\.", "pixel_decoder.mask_features."),
        (r"^model\.transformer_module\.queries_embedder\.", "transformer_decoder.query_embed."),
        (r"^model\.transformer_module\.input_projection\.", "transformer_decoder.input_proj."),
        (r"^model\.transformer_module\.decoder\.layernorm\.", "transformer_decoder.decoder_norm."),
        (r"^mask_embedder\.(\d+)\.0\.", r"transformer_decoder.mask_embed.layers.\1."),
        (r"^class_predictor\.", "transformer_decoder.class_embed."),
    ]
    out: dict[str, Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        if any(re.match(p, key) for p in _DROPPED):
            continue
        m = re.match(r"^model\.pixel_level_module\.decoder\.fpn\.layers\.(\d+)\.(proj|block)\.(.*)$", key)
        if m:
            # HF runs its FPN layers coarse to fine, ours holds them fine to coarse
            index = len(levels) - 1 - int(m.group(1))
            out[f"pixel_decoder.fpn.{'lateral' if m.group(2) == 'proj' else 'output'}.{index}.{m.group(3)}"] = value
            continue
        m = re.match(r"^model\.transformer_module\.decoder\.layers\.(\d+)\.(.*)$", key)
        if m:
            out[f"transformer_decoder.layers.{m.group(1)}.{detr_layer_suffix(m.group(2), 'decoder')}"] = value
            continue
        for pattern, repl in rules:
            if re.match(pattern, key):
                out[re.sub(pattern, repl, key)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"HF MaskFormer keys with no counterpart here: {unknown[:8]}{' ...' if len(unknown) > 8 else ''}")
    return out


def load_hf_mask2former_weights(model: nn.Module, path: str | Path | dict[str, Tensor]) -> None:
    """Load an HF Mask2Former or MaskFormer state dict (a local ``.bin`` / ``.pth`` /
    ``.safetensors`` file, or the dict; the kind is told by its keys) into ``model`` (a
    :class:`~lightning_seg.models.mask_classification.Mask2Former` / ``MaskFormer`` built with
    the same sizes and a timm backbone).

    Raises ``ValueError`` naming the file and the missing / unexpected / mis-shaped keys; nothing
    is loaded then.
    """
    state, name = read_weights(path)
    maskformer = any(k.startswith("model.pixel_level_module.decoder.fpn.") for k in state)
    load_converted(model, (convert_hf_maskformer_state_dict if maskformer else convert_hf_mask2former_state_dict)(state),
                   name)

"""detectron2-format Mask2Former checkpoints (the official model zoo's ``.pkl``) <-> :class:`Mask2Former`.

A model-zoo file is a pickle of ``{"model": {name: numpy array}, ...}`` (or a ``.pth`` with the
same dict). The names map one to one onto ours (ResNet backbones; detectron2's ``FrozenBN``
holds the same four tensors as ``BatchNorm2d``, whose ``num_batches_tracked`` is left as is):

=============================================================  ====================================================
detectron2                                                     ours
=============================================================  ====================================================
``backbone.stem.conv1.{weight,norm.*}``                        ``backbone.model.{conv1,bn1}.*``
``backbone.res{s}.{b}.conv{k}.{weight,norm.*}``                ``backbone.model.layer{s-1}.{b}.{conv,bn}{k}.*``
``backbone.res{s}.{b}.shortcut.{weight,norm.*}``               ``backbone.model.layer{s-1}.{b}.downsample.{0,1}.*``
``sem_seg_head.pixel_decoder.input_proj.{l}.{0,1}.*``          ``pixel_decoder.input_proj.{l}.{0,1}.*``
``sem_seg_head.pixel_decoder.transformer.level_embed``         ``pixel_decoder.level_embed``
``…pixel_decoder.transformer.encoder.layers.{i}.self_attn.*``  ``pixel_decoder.encoder_layers.{i}.self_attn.*``
``…encoder.layers.{i}.{norm1,norm2,linear1,linear2}.*``        ``…encoder_layers.{i}.{norm1,norm2,ffn.linear1,ffn.linear2}.*``
``sem_seg_head.pixel_decoder.mask_features.*``                 ``pixel_decoder.mask_features.*``
``sem_seg_head.pixel_decoder.adapter_{k}.{weight,norm.*}``     ``pixel_decoder.lateral_convs.{n-k}.{0,1}.*``
``sem_seg_head.pixel_decoder.layer_{k}.{weight,norm.*}``       ``pixel_decoder.output_convs.{n-k}.{0,1}.*``
``…predictor.transformer_self_attention_layers.{i}.self_attn``  ``transformer_decoder.layers.{i}.self_attn``
``…predictor.transformer_cross_attention_layers.{i}.multihead_attn``  ``transformer_decoder.layers.{i}.cross_attn``
``…_self_attention_layers.{i}.norm`` / ``_cross_…norm``         ``…layers.{i}.norm_self`` / ``norm_cross``
``…predictor.transformer_ffn_layers.{i}.{linear1,linear2,norm}``  ``…layers.{i}.{ffn.linear1,ffn.linear2,norm_ffn}``
``…predictor.{decoder_norm,query_feat,query_embed,level_embed,class_embed}``  ``transformer_decoder.<same>``
``…predictor.mask_embed.layers.{k}``                           ``transformer_decoder.mask_embed.layers.{k}``
``…predictor.input_proj.{l}``                                  ``transformer_decoder.input_proj.{l}``
=============================================================  ====================================================

(``…`` = ``sem_seg_head.``; ``n`` = the number of FPN levels.) detectron2's attention layers are
``nn.MultiheadAttention`` with one fused ``in_proj_{weight,bias}`` (q, k, v stacked), split here
into our ``{q,k,v}_proj``. ``criterion.*`` and ``pixel_mean`` / ``pixel_std`` are dropped.
:func:`to_detectron2_state_dict` is the inverse.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

_D2_HEAD = "sem_seg_head."
_FLAT_RULES: list[tuple[str, str]] = [
    (r"^backbone\.stem\.conv1\.weight$", "backbone.model.conv1.weight"),
    (r"^backbone\.stem\.conv1\.norm\.(.+)$", r"backbone.model.bn1.\1"),
    (r"^backbone\.res(\d)\.(\d+)\.conv(\d)\.weight$", "LAYER_CONV"),
    (r"^backbone\.res(\d)\.(\d+)\.conv(\d)\.norm\.(.+)$", "LAYER_BN"),
    (r"^backbone\.res(\d)\.(\d+)\.shortcut\.weight$", "LAYER_SC"),
    (r"^backbone\.res(\d)\.(\d+)\.shortcut\.norm\.(.+)$", "LAYER_SC_BN"),
    (r"^sem_seg_head\.pixel_decoder\.input_proj\.(.+)$", r"pixel_decoder.input_proj.\1"),
    (r"^sem_seg_head\.pixel_decoder\.transformer\.level_embed$", "pixel_decoder.level_embed"),
    (r"^sem_seg_head\.pixel_decoder\.transformer\.encoder\.layers\.(\d+)\.self_attn\.(.+)$",
     r"pixel_decoder.encoder_layers.\1.self_attn.\2"),
    (r"^sem_seg_head\.pixel_decoder\.transformer\.encoder\.layers\.(\d+)\.(norm1|norm2)\.(.+)$",
     r"pixel_decoder.encoder_layers.\1.\2.\3"),
    (r"^sem_seg_head\.pixel_decoder\.transformer\.encoder\.layers\.(\d+)\.(linear1|linear2)\.(.+)$",
     r"pixel_decoder.encoder_layers.\1.ffn.\2.\3"),
    (r"^sem_seg_head\.pixel_decoder\.mask_features\.(.+)$", r"pixel_decoder.mask_features.\1"),
    (r"^sem_seg_head\.predictor\.transformer_self_attention_layers\.(\d+)\.self_attn\.out_proj\.(.+)$",
     r"transformer_decoder.layers.\1.self_attn.out_proj.\2"),
    (r"^sem_seg_head\.predictor\.transformer_cross_attention_layers\.(\d+)\.multihead_attn\.out_proj\.(.+)$",
     r"transformer_decoder.layers.\1.cross_attn.out_proj.\2"),
    (r"^sem_seg_head\.predictor\.transformer_self_attention_layers\.(\d+)\.norm\.(.+)$",
     r"transformer_decoder.layers.\1.norm_self.\2"),
    (r"^sem_seg_head\.predictor\.transformer_cross_attention_layers\.(\d+)\.norm\.(.+)$",
     r"transformer_decoder.layers.\1.norm_cross.\2"),
    (r"^sem_seg_head\.predictor\.transformer_ffn_layers\.(\d+)\.(linear1|linear2)\.(.+)$",
     r"transformer_decoder.layers.\1.ffn.\2.\3"),
    (r"^sem_seg_head\.predictor\.transformer_ffn_layers\.(\d+)\.norm\.(.+)$", r"transformer_decoder.layers.\1.norm_ffn.\2"),
    (r"^sem_seg_head\.predictor\.(decoder_norm|query_feat|query_embed|level_embed|class_embed|mask_embed|input_proj)"
     r"\.(.+)$", r"transformer_decoder.\1.\2"),
]
_FUSED = (r"^sem_seg_head\.predictor\.transformer_(self|cross)_attention_layers\.(\d+)\."
          r"(?:self_attn|multihead_attn)\.in_proj_(weight|bias)$")
_FPN = r"^sem_seg_head\.pixel_decoder\.(adapter|layer)_(\d+)\.(weight|bias|norm\.(.+))$"
_DROPPED = (r"^criterion\.", r"^pixel_(mean|std)$")


def _rename(key: str) -> str | None:
    for pattern, repl in _FLAT_RULES:
        m = re.match(pattern, key)
        if not m:
            continue
        if repl == "LAYER_CONV":
            return f"backbone.model.layer{int(m.group(1)) - 1}.{m.group(2)}.conv{m.group(3)}.weight"
        if repl == "LAYER_BN":
            return f"backbone.model.layer{int(m.group(1)) - 1}.{m.group(2)}.bn{m.group(3)}.{m.group(4)}"
        if repl == "LAYER_SC":
            return f"backbone.model.layer{int(m.group(1)) - 1}.{m.group(2)}.downsample.0.weight"
        if repl == "LAYER_SC_BN":
            return f"backbone.model.layer{int(m.group(1)) - 1}.{m.group(2)}.downsample.1.{m.group(3)}"
        return re.sub(pattern, repl, key)
    return None


def convert_detectron2_mask2former_state_dict(state_dict: dict[str, Tensor | np.ndarray]) -> dict[str, Tensor]:
    """detectron2 Mask2Former names (the module docstring's table) -> ours, tensors as torch.

    Raises ``ValueError`` naming the keys no rule covers (e.g. a Swin backbone).
    """
    levels = {int(m.group(2)) for k in state_dict if (m := re.match(_FPN, k))}
    out: dict[str, Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        t = torch.as_tensor(np.asarray(value)) if not isinstance(value, Tensor) else value
        if any(re.match(p, key) for p in _DROPPED):
            continue
        m = re.match(_FUSED, key)
        if m:
            kind, index, what = m.groups()
            for name, part in zip(("q", "k", "v"), t.chunk(3, 0)):
                out[f"transformer_decoder.layers.{index}.{kind}_attn.{name}_proj.{what}"] = part.clone()
            continue
        m = re.match(_FPN, key)
        if m:
            which, k, leaf, norm_leaf = m.groups()
            module = "lateral_convs" if which == "adapter" else "output_convs"
            sub = f"1.{norm_leaf}" if norm_leaf else f"0.{leaf}"
            out[f"pixel_decoder.{module}.{len(levels) - int(k)}.{sub}"] = t
            continue
        new = _rename(key)
        if new is None:
            unknown.append(key)
        else:
            out[new] = t
    if unknown:
        raise ValueError(f"detectron2 Mask2Former keys with no counterpart here: {unknown[:8]}"
                         f"{' ...' if len(unknown) > 8 else ''}")
    return out


def to_detectron2_state_dict(state_dict: dict[str, Tensor]) -> dict[str, np.ndarray]:
    """Ours -> detectron2 names (the inverse of :func:`convert_detectron2_mask2former_state_dict`),
    as numpy arrays, the fused attention projections stacked back."""
    levels = {int(m.group(1)) for k in state_dict if (m := re.match(r"^pixel_decoder\.lateral_convs\.(\d+)\.", k))}
    out: dict[str, np.ndarray] = {}
    unknown = []
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        arr = value.detach().cpu().numpy()
        m = re.match(r"^transformer_decoder\.layers\.(\d+)\.(self|cross)_attn\.([qkv])_proj\.(weight|bias)$", key)
        if m:
            index, kind, which, what = m.groups()
            if which != "q":
                continue
            parts = [state_dict[f"transformer_decoder.layers.{index}.{kind}_attn.{n}_proj.{what}"] for n in "qkv"]
            attn = "self_attn" if kind == "self" else "multihead_attn"
            out[f"{_D2_HEAD}predictor.transformer_{kind}_attention_layers.{index}.{attn}.in_proj_{what}"] = \
                torch.cat(parts).detach().cpu().numpy()
            continue
        m = re.match(r"^pixel_decoder\.(lateral_convs|output_convs)\.(\d+)\.([01])\.(.+)$", key)
        if m:
            module, index, part, leaf = m.groups()
            name = f"{'adapter' if module == 'lateral_convs' else 'layer'}_{len(levels) - int(index)}"
            out[f"{_D2_HEAD}pixel_decoder.{name}.{leaf if part == '0' else 'norm.' + leaf}"] = arr
            continue
        d2 = _inverse_rename(key)
        if d2 is None:
            unknown.append(key)
        else:
            out[d2] = arr
    if unknown:
        raise ValueError(f"keys with no detectron2 counterpart: {unknown[:8]}")
    return out


def _inverse_rename(key: str) -> str | None:
    rules = [
        (r"^backbone\.model\.conv1\.weight$", "backbone.stem.conv1.weight"),
        (r"^backbone\.model\.bn1\.(.+)$", r"backbone.stem.conv1.norm.\1"),
        (r"^backbone\.model\.layer(\d)\.(\d+)\.conv(\d)\.weight$", None),
        (r"^backbone\.model\.layer(\d)\.(\d+)\.bn(\d)\.(.+)$", None),
        (r"^backbone\.model\.layer(\d)\.(\d+)\.downsample\.0\.weight$", None),
        (r"^backbone\.model\.layer(\d)\.(\d+)\.downsample\.1\.(.+)$", None),
        (r"^pixel_decoder\.input_proj\.(.+)$", r"sem_seg_head.pixel_decoder.input_proj.\1"),
        (r"^pixel_decoder\.level_embed$", "sem_seg_head.pixel_decoder.transformer.level_embed"),
        (r"^pixel_decoder\.encoder_layers\.(\d+)\.self_attn\.(.+)$",
         r"sem_seg_head.pixel_decoder.transformer.encoder.layers.\1.self_attn.\2"),
        (r"^pixel_decoder\.encoder_layers\.(\d+)\.(norm1|norm2)\.(.+)$",
         r"sem_seg_head.pixel_decoder.transformer.encoder.layers.\1.\2.\3"),
        (r"^pixel_decoder\.encoder_layers\.(\d+)\.ffn\.(linear1|linear2)\.(.+)$",
         r"sem_seg_head.pixel_decoder.transformer.encoder.layers.\1.\2.\3"),
        (r"^pixel_decoder\.mask_features\.(.+)$", r"sem_seg_head.pixel_decoder.mask_features.\1"),
        (r"^transformer_decoder\.layers\.(\d+)\.self_attn\.out_proj\.(.+)$",
         r"sem_seg_head.predictor.transformer_self_attention_layers.\1.self_attn.out_proj.\2"),
        (r"^transformer_decoder\.layers\.(\d+)\.cross_attn\.out_proj\.(.+)$",
         r"sem_seg_head.predictor.transformer_cross_attention_layers.\1.multihead_attn.out_proj.\2"),
        (r"^transformer_decoder\.layers\.(\d+)\.norm_self\.(.+)$",
         r"sem_seg_head.predictor.transformer_self_attention_layers.\1.norm.\2"),
        (r"^transformer_decoder\.layers\.(\d+)\.norm_cross\.(.+)$",
         r"sem_seg_head.predictor.transformer_cross_attention_layers.\1.norm.\2"),
        (r"^transformer_decoder\.layers\.(\d+)\.ffn\.(linear1|linear2)\.(.+)$",
         r"sem_seg_head.predictor.transformer_ffn_layers.\1.\2.\3"),
        (r"^transformer_decoder\.layers\.(\d+)\.norm_ffn\.(.+)$", r"sem_seg_head.predictor.transformer_ffn_layers.\1.norm.\2"),
        (r"^transformer_decoder\.(decoder_norm|query_feat|query_embed|level_embed|class_embed|mask_embed|input_proj)"
         r"\.(.+)$", r"sem_seg_head.predictor.\1.\2"),
    ]
    for pattern, repl in rules:
        m = re.match(pattern, key)
        if not m:
            continue
        if repl is not None:
            return re.sub(pattern, repl, key)
        stage, block = int(m.group(1)) + 1, m.group(2)
        if ".conv" in key:
            return f"backbone.res{stage}.{block}.conv{m.group(3)}.weight"
        if ".bn" in key:
            return f"backbone.res{stage}.{block}.conv{m.group(3)}.norm.{m.group(4)}"
        if ".downsample.0." in key:
            return f"backbone.res{stage}.{block}.shortcut.weight"
        return f"backbone.res{stage}.{block}.shortcut.norm.{m.group(3)}"
    return None


class _ArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays, dicts and plain values only: a checkpoint cannot run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle's signature
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a checkpoint")
        return super().find_class(module, name)


def read_detectron2_checkpoint(path: str | Path) -> dict[str, np.ndarray | Tensor]:
    """The ``model`` dict of a detectron2 checkpoint (``.pkl`` pickle of numpy arrays, read
    without running code, or ``.pth``)."""
    path = Path(path)
    if path.suffix == ".pkl":
        with path.open("rb") as f:
            data = _ArraysOnly(f, encoding="latin1").load()
    else:
        data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a detectron2 checkpoint (a {type(data).__name__}, not a dict)")
    return data.get("model", data)

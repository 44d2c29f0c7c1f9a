"""The feature pyramid network every model family uses (Semantic FPN, MaskFormer, R-CNN, dense heads).

One :class:`FPN` covers the variants the families need:

* ``top_down="laterals"`` — Lin et al. (torchvision's ``FeaturePyramidNetwork``, detectron2's
  ``FPN``): the top-down pathway adds the upsampled sums of 1x1 laterals, and a 3x3 output conv
  reads each sum;
* ``top_down="outputs"`` — MaskFormer's pixel decoder: each level's output conv reads its lateral
  plus the upsampled *output* of the coarser level, and the coarsest level has no lateral;
* extra coarser levels: ``"maxpool"`` (P6 as a stride-2 subsampling of P5, Mask R-CNN) or
  ``"conv"`` (strided 3x3 convs, P6/P7 of RetinaNet from C5 or of YOLACT from P5).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from lightning_seg.models.layers import ConvInit, ConvNormAct, Norm, c2_xavier_fill


class FPN(nn.Module):
    """Feature pyramid over backbone features ``[B, C_i, h_i, w_i]`` (finest first).

    Returns ``len(in_channels) + num_extra_levels`` maps ``[B, out_channels, h, w]``, finest
    first; the extra levels halve the size (rounding up) at each step.

    Args:
        in_channels: channels of each input feature, finest first.
        out_channels: channels of every pyramid level.
        norm: normalisation after the lateral and output convs.
        top_down: ``"laterals"`` or ``"outputs"`` (see the module docstring).
        coarsest_lateral: give the coarsest level a 1x1 lateral (``False``, with
            ``top_down="outputs"``: its output conv reads the backbone feature, as MaskFormer).
        output_activation: ReLU after each output conv (MaskFormer).
        extra_levels: ``"none"``, ``"maxpool"`` or ``"conv"`` coarser levels after the last.
        num_extra_levels: how many extra levels (default 1 for ``maxpool``, 2 for ``conv``).
        extra_input: the first extra level reads the coarsest ``"output"`` (P5) or the coarsest
            backbone ``"input"`` (C5, RetinaNet).
        extra_relu: ReLU before every strided conv but the first (RetinaNet's
            ``P7 = conv(relu(P6))``); YOLACT chains them without.
        in_strides: strides of the inputs, to fill :attr:`strides` (optional).
        init: weight initialisation of every conv (see :data:`~lightning_seg.models.layers.ConvInit`).

    Attributes:
        strides: stride of each output level (when ``in_strides`` was given, else ``None``).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int = 256,
        norm: Norm = "none",
        top_down: Literal["laterals", "outputs"] = "laterals",
        coarsest_lateral: bool = True,
        output_activation: bool = False,
        extra_levels: Literal["none", "maxpool", "conv"] = "none",
        num_extra_levels: int | None = None,
        extra_input: Literal["output", "input"] = "output",
        extra_relu: bool = True,
        in_strides: Sequence[int] | None = None,
        init: ConvInit = "default",
    ) -> None:
        super().__init__()
        if len(in_channels) == 0:
            raise ValueError("FPN needs at least one input feature")
        if top_down not in ("laterals", "outputs"):
            raise ValueError(f"FPN top_down must be 'laterals' or 'outputs', got {top_down!r}")
        if not coarsest_lateral and top_down != "outputs":
            raise ValueError("FPN coarsest_lateral=False needs top_down='outputs' (the sums need equal widths)")
        if extra_levels not in ("none", "maxpool", "conv"):
            raise ValueError(f"FPN extra_levels must be 'none', 'maxpool' or 'conv', got {extra_levels!r}")
        if extra_levels == "maxpool" and extra_input != "output":
            raise ValueError("FPN extra_levels='maxpool' subsamples the coarsest output (extra_input='output')")
        self.top_down = top_down
        self.extra_levels = extra_levels
        self.extra_input = extra_input
        self.extra_relu = extra_relu
        if num_extra_levels is None:
            num_extra_levels = {"none": 0, "maxpool": 1, "conv": 2}[extra_levels]
        if num_extra_levels < 0 or (extra_levels == "none" and num_extra_levels):
            raise ValueError(f"FPN num_extra_levels={num_extra_levels} does not fit extra_levels={extra_levels!r}")
        self.num_extra_levels = num_extra_levels
        n = len(in_channels)
        self.lateral = nn.ModuleList(
            ConvNormAct(c, out_channels, 1, norm=norm, activation=False, init=init)
            if coarsest_lateral or i < n - 1 else nn.Identity()
            for i, c in enumerate(in_channels)
        )
        self.output = nn.ModuleList(
            ConvNormAct(out_channels if coarsest_lateral or i < n - 1 else c, out_channels, 3, norm=norm,
                        activation=output_activation, init=init)
            for i, c in enumerate(in_channels)
        )
        self.extra = nn.ModuleList()
        if extra_levels == "conv":
            for k in range(num_extra_levels):
                c_in = in_channels[-1] if k == 0 and extra_input == "input" else out_channels
                conv = nn.Conv2d(c_in, out_channels, 3, stride=2, padding=1)
                c2_xavier_fill(conv)
                self.extra.append(conv)
        self.strides: list[int] | None = None
        if in_strides is not None:
            if len(in_strides) != n:
                raise ValueError(f"FPN got {len(in_strides)} strides for {n} inputs")
            self.strides = [int(s) for s in in_strides] + [int(in_strides[-1]) * 2 ** (k + 1)
                                                           for k in range(num_extra_levels)]

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        """Features finest first -> pyramid levels finest first, all ``out_channels`` wide."""
        if len(features) != len(self.lateral):
            raise ValueError(f"FPN expects {len(self.lateral)} features, got {len(features)}")
        laterals = [conv(f) for conv, f in zip(self.lateral, features)]
        if self.top_down == "laterals":
            for i in range(len(laterals) - 1, 0, -1):
                laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:],
                                                                  mode="nearest")
            outs = [conv(x) for conv, x in zip(self.output, laterals)]
        else:
            y = self.output[-1](laterals[-1])
            outs = [y]
            for i in range(len(laterals) - 2, -1, -1):
                y = self.output[i](laterals[i] + F.interpolate(y, size=laterals[i].shape[-2:], mode="nearest"))
                outs.insert(0, y)
        if self.extra_levels == "maxpool":
            for _ in range(self.num_extra_levels):
                outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        elif self.extra_levels == "conv":
            x = features[-1] if self.extra_input == "input" else outs[-1]
            for k, conv in enumerate(self.extra):
                x = conv(F.relu(x) if k > 0 and self.extra_relu else x)
                outs.append(x)
        return outs

"""MaX-DeepLab (Wang et al., CVPR 2021): a mask transformer with a dual-path pixel/memory design.

Any backbone gives features at strides 4, 8 and 16 (a ResNet's res2..res4; a stride-32 feature,
if present, is upsampled and added to the stride-16 one). The pixel path starts at 1/16 with
``encoder_blocks`` dual-path blocks (:class:`~lightning_seg.models.mask_classification.dual_path.DualPathBlock`)
against ``N`` learned memory slots, then the decoder goes up to 1/8 and 1/4, each stage adding a
projected backbone feature to the upsampled pixels and running ``decoder_blocks`` dual-path
blocks. After each stage the heads predict (deeplab2's MaX-DeepLab heads):

* per slot, class logits ``K + 1`` (last = void / no object, its bias set for a 0.9 prior) and a
  mask embedding of ``D`` channels (a linear layer with BatchNorm);
* per pixel (upsampled to 1/4), a ``D``-channel embedding (conv head, BatchNorm, L2
  normalisation): the pixel features of the instance-discrimination loss;
* mask logits, the product of the two embeddings through one BatchNorm shared by all slots
  (scale 0.1 at the start); masks are a softmax over the slots at each pixel.

The last stage also feeds an auxiliary semantic head (``K`` classes at 1/4).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_seg.models.backbone import build_backbone
from lightning_seg.models.mask_classification.dual_path import DualPathBlock


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 1, relu: bool = True) -> nn.Sequential:
    """Conv (no bias) → BatchNorm (→ ReLU), ``[B, C_in, H, W]`` → ``[B, C_out, H, W]``."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
                               nn.BatchNorm2d(out_channels)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class PixelSpaceHead(nn.Module):
    """Per-pixel mask embedding: 3x3 conv-BN-ReLU, 1x1 conv to ``D``, BatchNorm, L2 normalisation.

    Maps float ``[B, C, H, W]`` to unit-norm float ``[B, D, H, W]``.
    """

    def __init__(self, in_channels: int, head_channels: int, embed_dim: int) -> None:
        super().__init__()
        self.conv = conv_bn_relu(in_channels, head_channels, 3)
        self.proj = nn.Conv2d(head_channels, embed_dim, 1)
        self.norm = nn.BatchNorm2d(embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        """Float ``[B, C, H, W]`` → L2-normalised float ``[B, D, H, W]``."""
        return F.normalize(self.norm(self.proj(self.conv(x))), dim=1)


class MaXDeepLab(nn.Module):
    """MaX-DeepLab: backbone → dual-path transformer at 1/16 → dual-path decoder to 1/4 → heads.

    Args:
        num_classes: ``K`` (the class head has ``K + 1`` outputs, last = void).
        num_slots: memory slots ``N`` (128 in the paper).
        memory_dim: memory-path width ``Cm``.
        pixel_dims: pixel-path widths at strides 16, 8 and 4.
        encoder_blocks: dual-path blocks at 1/16 before the decoder.
        decoder_blocks: dual-path blocks in each decoder stage (1/16, 1/8, 1/4).
        num_heads: attention heads.
        dim_feedforward: memory feed-forward width.
        embed_dim: mask embedding channels ``D``.
        head_channels: hidden channels of the pixel and semantic heads.
        void_prior: void-class probability of the class head at initialisation (0.9).
        dropout: attention / residual dropout.
        aux_heads: build the earlier stages' pixel heads (deep supervision); without them
            ``aux_outputs`` is always empty.
        **backbone_args: ``backbone``, ``backbone_source``, ``pretrained``, ``frozen_stages``,
            ``freeze_bn``, ``backbone_kwargs``, ``output_stride``: see
            :func:`~lightning_seg.models.backbone.build_backbone` (features at strides 4..16
            are used; 32, when present, joins the 1/16 feature).

    ``forward(images)`` takes float ``[B, 3, H, W]`` in ``[0, 1]`` (``H``, ``W`` multiples of 16
    keep the stages aligned) and returns ``pred_logits`` float ``[B, N, K+1]``, ``pred_masks``
    float ``[B, N, H/4, W/4]`` mask logits (softmax over ``N``), ``pixel_features`` unit-norm
    float ``[B, D, H/4, W/4]``, ``semantic_logits`` float ``[B, K, H/4, W/4]`` and
    ``aux_outputs``: one dict of the first three keys per earlier stage (1/16 and 1/8).
    """

    def __init__(
        self,
        num_classes: int,
        num_slots: int = 128,
        memory_dim: int = 256,
        pixel_dims: Sequence[int] = (256, 128, 64),
        encoder_blocks: int = 2,
        decoder_blocks: int = 1,
        num_heads: int = 8,
        dim_feedforward: int = 2048,
        embed_dim: int = 128,
        head_channels: int = 256,
        void_prior: float = 0.9,
        dropout: float = 0.0,
        aux_heads: bool = True,
        **backbone_args: Any,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"MaXDeepLab: num_classes must be >= 1, got {num_classes}")
        if len(pixel_dims) != 3:
            raise ValueError(f"MaXDeepLab: pixel_dims needs widths at strides 16, 8, 4, got {list(pixel_dims)}")
        if not 0.0 < void_prior < 1.0:
            raise ValueError(f"MaXDeepLab: void_prior must be in (0, 1), got {void_prior}")
        self.num_classes = num_classes
        self.backbone = build_backbone(**backbone_args)
        strides = list(self.backbone.strides)
        self._levels = []
        for s in (4, 8, 16):
            if s not in strides:
                raise ValueError(f"MaXDeepLab: the backbone must give a stride-{s} feature; it gives strides {strides}")
            self._levels.append(strides.index(s))
        self._coarse = [i for i, s in enumerate(strides) if s > 16 or (s == 16 and i != self._levels[2])]
        ch = self.backbone.channels
        p16, p8, p4 = pixel_dims
        self.input_proj = conv_bn_relu(ch[self._levels[2]], p16)
        self.coarse_proj = nn.ModuleList(conv_bn_relu(ch[i], p16, relu=False) for i in self._coarse)
        self.lateral = nn.ModuleList([conv_bn_relu(ch[self._levels[1]], p8, relu=False),
                                      conv_bn_relu(ch[self._levels[0]], p4, relu=False)])
        self.top_down = nn.ModuleList([conv_bn_relu(p16, p8, relu=False), conv_bn_relu(p8, p4, relu=False)])
        block = lambda c: DualPathBlock(c, memory_dim, num_heads, dim_feedforward, dropout)  # noqa: E731
        self.encoder = nn.ModuleList(block(p16) for _ in range(encoder_blocks))
        self.stages = nn.ModuleList(nn.ModuleList(block(c) for _ in range(decoder_blocks)) for c in pixel_dims)
        self.memory = nn.Embedding(num_slots, memory_dim)
        # heads: the slot heads are shared by the stages, the pixel heads are per stage (widths differ)
        self.class_feature = nn.Sequential(nn.Linear(memory_dim, memory_dim), nn.ReLU(inplace=True))
        self.class_head = nn.Linear(memory_dim, num_classes + 1)
        nn.init.trunc_normal_(self.class_head.weight, std=0.01)
        nn.init.zeros_(self.class_head.bias)
        with torch.no_grad():  # the focal-loss prior: void starts at probability void_prior
            self.class_head.bias[-1] = math.log(num_classes * void_prior / (1 - void_prior))
        self.mask_feature = nn.Sequential(nn.Linear(memory_dim, memory_dim), nn.ReLU(inplace=True))
        self.mask_kernel = nn.Linear(memory_dim, embed_dim, bias=False)
        self.mask_kernel_norm = nn.BatchNorm1d(embed_dim)
        head_dims = list(pixel_dims) if aux_heads else [pixel_dims[-1]]
        self.pixel_heads = nn.ModuleList(PixelSpaceHead(c, head_channels, embed_dim) for c in head_dims)
        self.mask_logit_norms = nn.ModuleList(nn.BatchNorm2d(1) for _ in head_dims)
        for bn in self.mask_logit_norms:  # a low starting temperature of the slot softmax
            nn.init.constant_(bn.weight, 0.1)
        self.semantic_head = nn.Sequential(conv_bn_relu(p4, head_channels, 3), nn.Conv2d(head_channels, num_classes, 1))

    def reset_classifier(self, num_classes: int) -> None:
        """Re-initialise the class and semantic heads for ``num_classes`` classes (fine-tuning)."""
        if num_classes < 1:
            raise ValueError(f"reset_classifier: num_classes must be >= 1, got {num_classes}")
        dim = self.class_head.in_features
        prior = torch.softmax(self.class_head.bias.detach(), 0)[-1].item() if self.class_head.bias is not None else 0.9
        self.class_head = nn.Linear(dim, num_classes + 1).to(self.class_head.weight.device)
        nn.init.trunc_normal_(self.class_head.weight, std=0.01)
        nn.init.zeros_(self.class_head.bias)
        with torch.no_grad():
            self.class_head.bias[-1] = math.log(num_classes * prior / (1 - prior))
        last = self.semantic_head[-1]
        self.semantic_head[-1] = nn.Conv2d(last.in_channels, num_classes, 1).to(last.weight.device)
        self.num_classes = num_classes

    def classifier_parameter_names(self) -> list[str]:
        """Names of the parameters whose shape depends on ``num_classes``."""
        return [n for n, _ in self.named_parameters() if n.startswith(("class_head.", "semantic_head.1."))]

    def _predict(self, stage: int, pixels: Tensor, memory: Tensor, size: tuple[int, int]) -> dict[str, Tensor]:
        stage = stage - (len(self.stages) - len(self.pixel_heads))  # heads of the last stages only
        if pixels.shape[-2:] != size:
            pixels = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False)
        features = self.pixel_heads[stage](pixels)  # [B, D, h, w]
        kernels = self.mask_kernel(self.mask_feature(memory))  # [B, N, D]
        kernels = self.mask_kernel_norm(kernels.transpose(1, 2)).transpose(1, 2)
        logits = torch.einsum("bnd,bdhw->bnhw", kernels, features)
        b, n, h, w = logits.shape
        logits = self.mask_logit_norms[stage](logits.reshape(b, 1, n * h, w)).view(b, n, h, w)
        return {"pred_logits": self.class_head(self.class_feature(memory)), "pred_masks": logits,
                "pixel_features": features}

    def forward(self, images: Tensor, with_aux: bool = True) -> dict[str, Any]:
        """Predict slots' classes and masks (see the class docstring for the outputs); ``with_aux``
        false skips the earlier stages' heads (``aux_outputs`` is then empty)."""
        feats = self.backbone(images)
        f4, f8, f16 = (feats[i] for i in self._levels)
        pixels = self.input_proj(f16)
        for proj, i in zip(self.coarse_proj, self._coarse):
            pixels = pixels + F.interpolate(proj(feats[i]), size=pixels.shape[-2:], mode="bilinear",
                                            align_corners=False)
        memory = self.memory.weight.unsqueeze(0).expand(images.shape[0], -1, -1)
        for blk in self.encoder:
            pixels, memory = blk(pixels, memory)
        size = tuple(f4.shape[-2:])
        outputs = []
        for stage, blocks in enumerate(self.stages):
            if stage > 0:
                lateral = self.lateral[stage - 1](feats[self._levels[2 - stage]])
                up = F.interpolate(self.top_down[stage - 1](pixels), size=lateral.shape[-2:], mode="bilinear",
                                   align_corners=False)
                pixels = F.relu(lateral + up)
            for blk in blocks:
                pixels, memory = blk(pixels, memory)
            if stage == len(self.stages) - 1 or (with_aux and len(self.pixel_heads) == len(self.stages)):
                outputs.append(self._predict(stage, pixels, memory, size))
        out = dict(outputs[-1])
        out["semantic_logits"] = self.semantic_head(pixels)
        out["aux_outputs"] = outputs[:-1]
        return out

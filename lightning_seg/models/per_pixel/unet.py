"""U-Net (Ronneberger et al., 2015) on a timm / torchvision encoder or the original plain encoder."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_seg.models.per_pixel.base import PixelSegmentationModel
from lightning_seg.models.layers import ConvNormAct, Norm


class PlainUNetEncoder(nn.Module):
    """The original U-Net contracting path: two 3x3 conv-norm-ReLU per level, 2x2 max-pool between.

    Same contract as :class:`~lightning_seg.models.backbone.Backbone`: images float
    ``[B, 3, H, W]`` in ``[0, 1]`` (normalised inside) -> features ``[B, widths[i],
    ceil(H / 2**i), ceil(W / 2**i)]``; pooling rounds up so odd sizes keep every pixel.

    Args:
        widths: channels per level (the paper: 64, 128, 256, 512, 1024).
        norm: normalisation after each conv (the paper predates BatchNorm; "BN" trains faster).
        pixel_mean: RGB mean used for normalisation.
        pixel_std: RGB standard deviation used for normalisation.
    """

    def __init__(self, widths: Sequence[int] = (64, 128, 256, 512, 1024), norm: Norm = "BN",
                 pixel_mean: Sequence[float] = (0.485, 0.456, 0.406),
                 pixel_std: Sequence[float] = (0.229, 0.224, 0.225)) -> None:
        super().__init__()
        if len(widths) < 2:
            raise ValueError(f"PlainUNetEncoder needs at least two levels, got widths={list(widths)}")
        mean = torch.tensor(pixel_mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(pixel_std, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("pixel_mean", mean, persistent=False)
        self.register_buffer("pixel_std", std, persistent=False)
        in_chs = [3, *widths[:-1]]
        self.levels = nn.ModuleList(
            nn.Sequential(ConvNormAct(c_in, c_out, 3, norm=norm), ConvNormAct(c_out, c_out, 3, norm=norm))
            for c_in, c_out in zip(in_chs, widths)
        )
        self.channels = [int(w) for w in widths]
        self.strides = [2**i for i in range(len(widths))]

    def forward(self, images: Tensor) -> list[Tensor]:
        """Images float ``[B, 3, H, W]`` in ``[0, 1]`` -> one feature per level (stride ``2**i``)."""
        x = (images - self.pixel_mean.to(images.dtype)) / self.pixel_std.to(images.dtype)
        feats = []
        for i, level in enumerate(self.levels):
            if i:
                x = F.max_pool2d(x, 2, ceil_mode=True)
            x = level(x)
            feats.append(x)
        return feats


class UNetDecoderBlock(nn.Module):
    """Upsample to the skip's size, concatenate the skip, two 3x3 conv-norm-ReLU.

    ``[B, in_channels, h, w]`` (+ skip ``[B, skip_channels, H', W']``) -> ``[B, out_channels, H', W']``.
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int,
                 upsampling: Literal["bilinear", "nearest", "transposed"], norm: Norm) -> None:
        super().__init__()
        self.upsampling = upsampling
        self.up: nn.Module | None = None
        if upsampling == "transposed":
            self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, 2, stride=2)
            in_channels //= 2
        self.convs = nn.Sequential(ConvNormAct(in_channels + skip_channels, out_channels, 3, norm=norm),
                                   ConvNormAct(out_channels, out_channels, 3, norm=norm))

    def forward(self, x: Tensor, size: tuple[int, int], skip: Tensor | None = None) -> Tensor:
        """Upsample ``x`` to ``size`` (the skip's size), fuse ``skip`` when given."""
        if self.up is not None:
            # 2h >= ceil-sized target, so cropping aligns the top-left corner like the encoder.
            x = self.up(x)[..., : size[0], : size[1]]
        elif self.upsampling == "nearest":
            x = F.interpolate(x, size=size, mode="nearest")
        else:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.convs(x)


class UNet(PixelSegmentationModel):
    """U-Net: encoder features at every scale fused by a symmetric decoder.

    One decoder block per encoder level from the deepest up (upsample, concatenate the skip,
    two 3x3 convs), then blocks without skip until stride 1 when the encoder's finest feature is
    coarser (timm ResNets start at stride 2, ConvNeXt at 4), then a ``classifier_kernel_size``
    conv classifier (1x1 by default).

    With ``backbone_source="torchvision"``, ``upsampling="nearest"`` and
    ``classifier_kernel_size=3`` (and the default ``decoder_channels``) the network is
    segmentation_models_pytorch's ``Unet`` on the same ResNet, module for module: smp's weights
    give the same logits (ours takes ``[0, 1]`` images, smp ImageNet-normalised ones).

    Input images float ``[B, 3, H, W]`` in ``[0, 1]``; output logits ``[B, K, H, W]``, or
    ``{"out", "aux"}`` with ``aux_head=True`` (see :mod:`lightning_seg.models.per_pixel.base`).

    Args:
        num_classes: number of classes ``K``.
        backbone: encoder name (ignored with ``backbone_source="plain"``).
        backbone_source: ``"timm"``, ``"torchvision"``, or ``"plain"`` for the original
            U-Net encoder (:class:`PlainUNetEncoder`).
        decoder_channels: output channels of each decoder block, deepest first; default
            halves from 256 (min 16) per block, or mirrors ``plain_widths``.
        upsampling: ``"bilinear"``, ``"nearest"`` or ``"transposed"`` (2x2 transposed conv
            halving the channels, as in the paper).
        plain_widths: level widths of the plain encoder.
        norm: normalisation in the decoder (and plain encoder).
        classifier_kernel_size: odd kernel size of the classifier conv (same padding, with
            bias); 3 reproduces smp's ``SegmentationHead``.
        aux_head, **backbone_args: see
            :class:`~lightning_seg.models.per_pixel.base.PixelSegmentationModel`.
    """

    def __init__(
        self,
        num_classes: int,
        decoder_channels: Sequence[int] | None = None,
        upsampling: Literal["bilinear", "nearest", "transposed"] = "bilinear",
        plain_widths: Sequence[int] = (64, 128, 256, 512, 1024),
        norm: Norm = "BN",
        aux_head: bool = False,
        classifier_kernel_size: int = 1,
        **backbone_args: Any,
    ) -> None:
        if upsampling not in ("bilinear", "nearest", "transposed"):
            raise ValueError(f"upsampling must be 'bilinear', 'nearest' or 'transposed', got {upsampling!r}")
        if classifier_kernel_size < 1 or classifier_kernel_size % 2 == 0:
            raise ValueError(f"classifier_kernel_size must be a positive odd number, got {classifier_kernel_size}")
        self._plain = (tuple(plain_widths), norm)
        super().__init__(num_classes, output_stride=32, aux_head=aux_head, min_stride=1, **backbone_args)
        channels, strides = self.backbone.channels, self.backbone.strides
        if any(b != 2 * a for a, b in zip(strides, strides[1:])) or strides[0] & (strides[0] - 1):
            raise ValueError(f"U-Net needs encoder features whose strides double at every level, got {strides} "
                             f"from backbone {self.backbone_name!r}")
        trailing = int(math.log2(strides[0]))
        n_blocks = len(channels) - 1 + trailing
        if decoder_channels is None:
            if self.backbone_source == "plain":
                decoder_channels = list(reversed(channels[:-1]))
            else:
                decoder_channels = [max(256 >> i, 16) for i in range(n_blocks)]
        if len(decoder_channels) != n_blocks:
            raise ValueError(f"decoder_channels needs {n_blocks} entries for encoder strides {strides}, "
                             f"got {list(decoder_channels)}")
        skips = list(reversed(channels[:-1])) + [0] * trailing
        ins = [channels[-1], *decoder_channels[:-1]]
        self.blocks = nn.ModuleList(
            UNetDecoderBlock(c_in, c_skip, c_out, upsampling, norm)
            for c_in, c_skip, c_out in zip(ins, skips, decoder_channels)
        )
        self.classifier = nn.Conv2d(decoder_channels[-1], num_classes, classifier_kernel_size,
                                    padding=classifier_kernel_size // 2)

    def build_backbone(self, name, source, pretrained, output_stride, out_indices, frozen_stages, freeze_bn,
                       min_stride, backbone_kwargs) -> nn.Module:
        """The plain encoder for ``backbone_source="plain"``, else a :class:`Backbone`."""
        if source == "plain":
            if pretrained or out_indices is not None or frozen_stages >= 0 or freeze_bn or backbone_kwargs:
                raise ValueError("the plain U-Net encoder takes no pretrained / out_indices / frozen_stages / "
                                 "freeze_bn / backbone_kwargs")
            widths, norm = self._plain
            return PlainUNetEncoder(widths, norm)
        return super().build_backbone(name, source, pretrained, output_stride, out_indices, frozen_stages,
                                      freeze_bn, min_stride, backbone_kwargs)

    def decode(self, features: list[Tensor], image_size: tuple[int, int]) -> Tensor:
        """Class logits ``[B, K, H, W]`` at the input resolution."""
        x = features[-1]
        skips = features[-2::-1]
        stride = self.backbone.strides[0]
        h, w = image_size
        for i, block in enumerate(self.blocks):
            if i < len(skips):
                x = block(x, tuple(skips[i].shape[-2:]), skips[i])
            else:
                stride //= 2
                x = block(x, (math.ceil(h / stride), math.ceil(w / stride)))
        return self.classifier(x)

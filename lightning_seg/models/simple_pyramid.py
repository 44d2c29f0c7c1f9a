"""Simple feature pyramid for plain (single-stride) vision transformers, after ViTDet (Li et al., 2022).

A ViT gives every block's output at the patch stride (16). Dense heads built for hierarchical
backbones (Mask2Former's pixel decoder, FPNs) want strides 4/8/16/32, so four chosen blocks are
mapped there: two 2× transposed convolutions (with a channel LayerNorm and GELU between them)
for stride 4, one for stride 8, identity for 16, and a 2× max-pool for 32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of an NCHW map (per pixel), as ViTDet's necks use it."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` float ``[B,C,H,W]`` → same shape."""
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class SimpleFeaturePyramid(nn.Module):
    """Map four stride-``s`` features to strides ``s/4, s/2, s, 2s``.

    Args:
        channels: channels of the four input features.

    Attributes:
        out_channels: ``[C0/4, C1/2, C2, C3]``.
        scales: the stride factor applied to each input (``[1/4, 1/2, 1, 2]``).
    """

    def __init__(self, channels: Sequence[int]) -> None:
        super().__init__()
        if len(channels) != 4:
            raise ValueError(f"SimpleFeaturePyramid needs 4 features, got {len(channels)}")
        c0, c1, c2, c3 = (int(c) for c in channels)
        self.up4 = nn.Sequential(
            nn.ConvTranspose2d(c0, c0 // 2, 2, stride=2), LayerNorm2d(c0 // 2), nn.GELU(),
            nn.ConvTranspose2d(c0 // 2, c0 // 4, 2, stride=2),
        )
        self.up2 = nn.ConvTranspose2d(c1, c1 // 2, 2, stride=2)
        self.out_channels = [c0 // 4, c1 // 2, c2, c3]
        self.scales = [0.25, 0.5, 1.0, 2.0]

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        """Four float ``[B,C_i,h,w]`` maps at one stride → maps at ``4h``, ``2h``, ``h``, ``ceil(h/2)``."""
        f0, f1, f2, f3 = feats
        return [self.up4(f0), self.up2(f1), f2, F.max_pool2d(f3, 2, ceil_mode=True)]

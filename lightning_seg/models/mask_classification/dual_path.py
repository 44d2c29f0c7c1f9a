"""MaX-DeepLab's dual-path transformer block: a pixel path and a memory path that talk both ways."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_seg.models.transformer_layers import FeedForward, MultiheadAttention


class Bottleneck(nn.Module):
    """Residual bottleneck of the pixel path: 1x1 → 3x3 → 1x1 convolutions with BatchNorm.

    Maps float ``[B, C, H, W]`` to ``[B, C, H, W]``; the last BatchNorm starts at zero so the
    block starts as the identity.
    """

    def __init__(self, channels: int, mid_channels: int | None = None) -> None:
        super().__init__()
        mid = mid_channels or max(channels // 2, 1)
        self.conv1 = nn.Conv2d(channels, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels)
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: Tensor) -> Tensor:
        """Float ``[B, C, H, W]`` → ``[B, C, H, W]``."""
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        return F.relu(x + self.bn3(self.conv3(y)))


class DualPathBlock(nn.Module):
    """One dual-path transformer block (Wang et al., MaX-DeepLab, 2021).

    The pixel path runs a convolutional bottleneck (the paper's axial attention is not needed for
    any backbone to work), then pixel-to-memory (P2M) attention: every pixel attends to the
    memory slots. The memory path runs memory-to-pixel and memory-to-memory (M2P & M2M)
    attention in one step, the slots attending to the concatenation of the pixels and the slots,
    then a feed-forward network. Both attentions read the states entering the block, so the two
    paths update in parallel, as in the paper. Attention sub-blocks are pre-norm residuals.

    Args:
        pixel_dim: pixel-path channels ``Cp``.
        memory_dim: memory-path channels ``Cm``.
        num_heads: attention heads (must divide ``Cp`` and ``Cm``).
        dim_feedforward: memory feed-forward width.
        dropout: attention and residual dropout.
    """

    def __init__(self, pixel_dim: int, memory_dim: int, num_heads: int = 8, dim_feedforward: int = 2048,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.pixel_conv = Bottleneck(pixel_dim)
        self.pixel_norm = nn.LayerNorm(pixel_dim)
        self.memory_norm = nn.LayerNorm(memory_dim)
        # P2M: the slots are projected to the pixel width to serve as keys and values
        self.memory_to_pixel_width = nn.Linear(memory_dim, pixel_dim)
        self.p2m = MultiheadAttention(pixel_dim, num_heads, dropout)
        # M2P & M2M: the pixels are projected to the memory width and joined to the slots
        self.pixel_to_memory_width = nn.Linear(pixel_dim, memory_dim)
        self.m2x = MultiheadAttention(memory_dim, num_heads, dropout)
        self.ffn_norm = nn.LayerNorm(memory_dim)
        self.ffn = FeedForward(memory_dim, dim_feedforward, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, pixels: Tensor, memory: Tensor) -> tuple[Tensor, Tensor]:
        """Update both paths.

        Args:
            pixels: float ``[B, Cp, H, W]``.
            memory: float ``[B, N, Cm]``.

        Returns:
            ``(pixels [B, Cp, H, W], memory [B, N, Cm])``.
        """
        pixels = self.pixel_conv(pixels)
        b, c, h, w = pixels.shape
        tokens = pixels.flatten(2).transpose(1, 2)  # [B, HW, Cp]
        t = self.pixel_norm(tokens)
        m = self.memory_norm(memory)
        kv_pixels = self.memory_to_pixel_width(m)
        p2m = self.p2m(t, kv_pixels, kv_pixels)
        keys = torch.cat([self.pixel_to_memory_width(t), m], dim=1)  # [B, HW + N, Cm]
        memory = memory + self.dropout(self.m2x(m, keys, keys))
        memory = memory + self.dropout(self.ffn(self.ffn_norm(memory)))
        tokens = tokens + self.dropout(p2m)
        return tokens.transpose(1, 2).reshape(b, c, h, w), memory

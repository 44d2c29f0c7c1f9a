"""Small building blocks shared by the pixel and transformer decoders."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def group_norm(num_channels: int, max_groups: int = 32) -> nn.GroupNorm:
    """``GroupNorm`` with 32 groups, or the largest divisor of ``num_channels`` below that.

    The papers use 32 groups at width 256; narrow test models still need a valid group count.
    """
    groups = max(g for g in range(1, max_groups + 1) if num_channels % g == 0)
    return nn.GroupNorm(groups, num_channels)


def c2_xavier_fill(module: nn.Module) -> None:
    """Caffe2's "XavierFill" (uniform kaiming with ``a=1``) and zero bias, as detectron2 uses."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)


class ConvNormAct(nn.Sequential):
    """``Conv2d`` (no bias) → ``GroupNorm`` → optional ReLU, initialised like detectron2.

    Maps ``[B, in_channels, H, W]`` to ``[B, out_channels, H, W]`` (same padding).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, activation: bool = False) -> None:
        conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        c2_xavier_fill(conv)
        layers: list[nn.Module] = [conv, group_norm(out_channels)]
        if activation:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class MLP(nn.Module):
    """Plain multi-layer perceptron with ReLU between layers (none after the last).

    Maps ``[..., input_dim]`` to ``[..., output_dim]``.
    """

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims, dims[1:] + [output_dim]))

    def forward(self, x: Tensor) -> Tensor:
        """Apply the layers to float ``[..., input_dim]``; returns ``[..., output_dim]``."""
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class MultiheadAttention(nn.Module):
    """Batch-first multi-head attention over ``scaled_dot_product_attention``.

    Unlike ``nn.MultiheadAttention`` the boolean mask may broadcast over heads (``[B, 1, Q, S]``)
    so masked attention never repeats its mask per head, and the fused kernels are used.

    Args:
        embed_dim: model width ``C``.
        num_heads: heads ``M``.
        dropout: attention-probability dropout in training.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim={embed_dim} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        for lin in (self.q_proj, self.k_proj, self.v_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """Attend.

        Args:
            query: float ``[B, Q, C]``.
            key: float ``[B, S, C]``.
            value: float ``[B, S, C]``.
            attn_mask: optional bool ``[B, 1 or M, Q, S]``, True where attending is allowed.

        Returns:
            float ``[B, Q, C]``.
        """
        b, q, c = query.shape
        s = key.shape[1]
        m = self.num_heads
        qh = self.q_proj(query).view(b, q, m, c // m).transpose(1, 2)
        kh = self.k_proj(key).view(b, s, m, c // m).transpose(1, 2)
        vh = self.v_proj(value).view(b, s, m, c // m).transpose(1, 2)
        out = F.scaled_dot_product_attention(
            qh, kh, vh, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out_proj(out.transpose(1, 2).reshape(b, q, c))


class FeedForward(nn.Module):
    """Transformer feed-forward block ``Linear → ReLU → dropout → Linear`` on ``[..., C]``."""

    def __init__(self, embed_dim: int, dim_feedforward: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.linear1 = nn.Linear(embed_dim, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, embed_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """Float ``[..., C]`` → ``[..., C]``."""
        return self.linear2(self.dropout(F.relu(self.linear1(x))))

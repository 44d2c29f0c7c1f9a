"""Transformer building blocks shared by the query-based decoders (MaskFormer, Mask2Former)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


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

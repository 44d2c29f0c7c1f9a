"""MaskFormer's standard (DETR) transformer decoder with per-layer mask predictions."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_seg.models.layers import c2_xavier_fill
from lightning_seg.models.transformer_layers import MLP, FeedForward, MultiheadAttention
from lightning_seg.models.mask_classification.position_encoding import SinePositionEncoding


class EncoderLayer(nn.Module):
    """DETR encoder layer: self-attention (position added to queries and keys) → feed-forward.

    Args:
        embed_dim: width ``C``.
        num_heads: attention heads.
        dim_feedforward: feed-forward width.
        dropout: residual-branch and attention dropout.
        pre_norm: normalise before each block.
    """

    def __init__(
        self, embed_dim: int, num_heads: int, dim_feedforward: int, dropout: float = 0.1, pre_norm: bool = False
    ) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(embed_dim, num_heads, dropout)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.ffn = FeedForward(embed_dim, dim_feedforward, dropout)
        self.norm2 = nn.LayerNorm(embed_dim)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = pre_norm

    def forward(self, src: Tensor, pos: Tensor, key_mask: Tensor | None = None) -> Tensor:
        """Float ``src`` ``[B, S, C]`` and ``pos`` ``[B or 1, S, C]`` → ``[B, S, C]``; optional
        ``key_mask`` bool ``[B, 1, 1, S]``, True on the positions that may be attended (not padding)."""
        if self.pre_norm:
            t = self.norm1(src)
            src = src + self.dropout(self.self_attn(t + pos, t + pos, t, key_mask))
            return src + self.dropout(self.ffn(self.norm2(src)))
        q = src + pos
        src = self.norm1(src + self.dropout(self.self_attn(q, q, src, key_mask)))
        return self.norm2(src + self.dropout(self.ffn(src)))


class DecoderLayer(nn.Module):
    """DETR decoder layer: self-attention → cross-attention → feed-forward.

    Args:
        embed_dim: width ``C``.
        num_heads: attention heads.
        dim_feedforward: feed-forward width.
        dropout: residual-branch and attention dropout.
        pre_norm: normalise before each block.
    """

    def __init__(
        self, embed_dim: int, num_heads: int, dim_feedforward: int, dropout: float = 0.1, pre_norm: bool = False
    ) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(embed_dim, num_heads, dropout)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.cross_attn = MultiheadAttention(embed_dim, num_heads, dropout)
        self.norm2 = nn.LayerNorm(embed_dim)
        self.ffn = FeedForward(embed_dim, dim_feedforward, dropout)
        self.norm3 = nn.LayerNorm(embed_dim)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = pre_norm

    def forward(self, tgt: Tensor, memory: Tensor, memory_pos: Tensor, query_pos: Tensor,
                memory_mask: Tensor | None = None) -> Tensor:
        """Update queries ``tgt`` float ``[B, Q, C]`` from ``memory`` ``[B, S, C]``; returns ``[B, Q, C]``.

        ``memory_pos`` ``[B or 1, S, C]`` and ``query_pos`` ``[B or 1, Q, C]`` are added to keys
        and queries; ``memory_mask`` bool ``[B, 1, 1, S]`` (optional) is True on the memory
        positions that may be attended (not padding).
        """
        key = memory + memory_pos
        if self.pre_norm:
            t = self.norm1(tgt)
            tgt = tgt + self.dropout(self.self_attn(t + query_pos, t + query_pos, t))
            t = self.norm2(tgt)
            tgt = tgt + self.dropout(self.cross_attn(t + query_pos, key, memory, memory_mask))
            return tgt + self.dropout(self.ffn(self.norm3(tgt)))
        q = tgt + query_pos
        tgt = self.norm1(tgt + self.dropout(self.self_attn(q, q, tgt)))
        tgt = self.norm2(tgt + self.dropout(self.cross_attn(tgt + query_pos, key, memory, memory_mask)))
        return self.norm3(tgt + self.dropout(self.ffn(tgt)))


class StandardTransformerDecoder(nn.Module):
    """MaskFormer's transformer module: an optional DETR encoder over one feature map, a DETR
    decoder with learnable query positions (features start at zero), and per-layer heads.

    Every decoder layer's output (after the shared final LayerNorm) predicts classes and masks;
    the last is the output and the other ``num_layers - 1`` are ``aux_outputs``.

    Args:
        in_channels: channels of the feature map the decoder attends to.
        num_classes: ``K``; the class head outputs ``K + 1`` (last = no-object).
        hidden_dim: query width ``C``.
        num_queries: ``Q``.
        nheads: attention heads.
        dim_feedforward: feed-forward width.
        num_layers: decoder layers.
        enc_layers: encoder layers over the attended map (0 in MaskFormer's default).
        pre_norm: pre-norm layers.
        mask_dim: channels of the per-pixel embedding.
        enforce_input_project: 1×1 projection even when widths match.
        dropout: transformer dropout.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        hidden_dim: int = 256,
        num_queries: int = 100,
        nheads: int = 8,
        dim_feedforward: int = 2048,
        num_layers: int = 6,
        enc_layers: int = 0,
        pre_norm: bool = False,
        mask_dim: int = 256,
        enforce_input_project: bool = False,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"StandardTransformerDecoder: num_classes must be >= 1, got {num_classes}")
        if num_layers < 1:
            raise ValueError(f"StandardTransformerDecoder: num_layers must be >= 1, got {num_layers}")
        self.num_queries = num_queries
        self.position_encoding = SinePositionEncoding(hidden_dim // 2, normalize=True)
        self.encoder_layers = nn.ModuleList(
            EncoderLayer(hidden_dim, nheads, dim_feedforward, dropout, pre_norm) for _ in range(enc_layers)
        )
        self.encoder_norm = nn.LayerNorm(hidden_dim) if pre_norm and enc_layers > 0 else nn.Identity()
        self.layers = nn.ModuleList(
            DecoderLayer(hidden_dim, nheads, dim_feedforward, dropout, pre_norm) for _ in range(num_layers)
        )
        for module in (self.encoder_layers, self.layers):
            for p in module.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        if in_channels != hidden_dim or enforce_input_project:
            self.input_proj: nn.Module = nn.Conv2d(in_channels, hidden_dim, 1)
            c2_xavier_fill(self.input_proj)
        else:
            self.input_proj = nn.Identity()
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the class head with a freshly initialised one for ``num_classes`` (+1) outputs."""
        old = self.class_embed
        self.class_embed = nn.Linear(old.in_features, num_classes + 1).to(old.weight.device, old.weight.dtype)

    def forward(self, feature: Tensor, mask_features: Tensor) -> dict:
        """Decode queries into class and mask predictions.

        Args:
            feature: float ``[B, in_channels, h, w]`` map to attend to (e.g. the stride-32 one).
            mask_features: float ``[B, mask_dim, H, W]`` per-pixel embedding.

        Returns:
            dict with ``pred_logits`` float ``[B, Q, K+1]``, ``pred_masks`` float
            ``[B, Q, H, W]`` mask logits, and ``aux_outputs``: ``num_layers - 1`` dicts of the
            same two keys (first layer first).
        """
        b = feature.shape[0]
        memory = self.input_proj(feature).flatten(2).transpose(1, 2)
        pos = self.position_encoding(feature[:1]).flatten(2).transpose(1, 2)
        for layer in self.encoder_layers:
            memory = layer(memory, pos)
        memory = self.encoder_norm(memory)
        query_pos = self.query_embed.weight.unsqueeze(0)
        tgt = torch.zeros(b, self.num_queries, query_pos.shape[-1], dtype=memory.dtype, device=memory.device)
        predictions = []
        for layer in self.layers:
            tgt = layer(tgt, memory, pos, query_pos)
            out = self.decoder_norm(tgt)
            masks = torch.einsum("bqc,bchw->bqhw", self.mask_embed(out), mask_features)
            predictions.append({"pred_logits": self.class_embed(out), "pred_masks": masks})
        return {
            "pred_logits": predictions[-1]["pred_logits"],
            "pred_masks": predictions[-1]["pred_masks"],
            "aux_outputs": predictions[:-1],
        }

"""Mask2Former's masked-attention transformer decoder."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_seg.models.layers import c2_xavier_fill
from lightning_seg.models.transformer_layers import MLP, FeedForward, MultiheadAttention
from lightning_seg.models.mask_classification.position_encoding import SinePositionEncoding


class MaskedAttentionDecoderLayer(nn.Module):
    """Masked cross-attention → self-attention → feed-forward, each with a residual and LayerNorm.

    Args:
        embed_dim: width ``C``.
        num_heads: attention heads.
        dim_feedforward: feed-forward hidden width.
        dropout: dropout on each residual branch.
        pre_norm: normalise before each block (otherwise after the residual sum, as the paper).
    """

    def __init__(
        self, embed_dim: int, num_heads: int, dim_feedforward: int, dropout: float = 0.0, pre_norm: bool = False
    ) -> None:
        super().__init__()
        self.cross_attn = MultiheadAttention(embed_dim, num_heads, dropout)
        self.norm_cross = nn.LayerNorm(embed_dim)
        self.self_attn = MultiheadAttention(embed_dim, num_heads, dropout)
        self.norm_self = nn.LayerNorm(embed_dim)
        self.ffn = FeedForward(embed_dim, dim_feedforward, dropout)
        self.norm_ffn = nn.LayerNorm(embed_dim)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = pre_norm

    def forward(
        self, tgt: Tensor, memory: Tensor, memory_pos: Tensor, query_pos: Tensor, attn_mask: Tensor | None
    ) -> Tensor:
        """Update the queries.

        Args:
            tgt: float ``[B, Q, C]`` query features.
            memory: float ``[B, S, C]`` one level's flattened pixel features.
            memory_pos: float ``[B or 1, S, C]`` their position encoding.
            query_pos: float ``[B or 1, Q, C]`` learnable query positions.
            attn_mask: bool ``[B, 1, Q, S]``, True where a query may attend (never all False).

        Returns:
            float ``[B, Q, C]``.
        """
        key = memory + memory_pos
        if self.pre_norm:
            t = self.norm_cross(tgt)
            tgt = tgt + self.dropout(self.cross_attn(t + query_pos, key, memory, attn_mask))
            t = self.norm_self(tgt)
            tgt = tgt + self.dropout(self.self_attn(t + query_pos, t + query_pos, t))
            return tgt + self.dropout(self.ffn(self.norm_ffn(tgt)))
        tgt = self.norm_cross(tgt + self.dropout(self.cross_attn(tgt + query_pos, key, memory, attn_mask)))
        q = tgt + query_pos
        tgt = self.norm_self(tgt + self.dropout(self.self_attn(q, q, tgt)))
        return self.norm_ffn(tgt + self.dropout(self.ffn(tgt)))


def attention_mask_from_logits(mask_logits: Tensor, size: tuple[int, int]) -> Tensor:
    """Masked-attention mask from the previous prediction (Mask2Former's rule).

    A query attends where its resized mask probability is at least 0.5 (logit ≥ 0). When that
    leaves a query no key at all, it attends everywhere instead, so the softmax never sees an
    empty row (which would give NaN).

    Args:
        mask_logits: float ``[B, Q, h, w]`` mask logits.
        size: ``(H, W)`` of the feature level the next layer attends to.

    Returns:
        bool ``[B, 1, Q, H * W]``, True where attending is allowed (detached; shared by heads).
    """
    with torch.no_grad():
        resized = F.interpolate(mask_logits, size=size, mode="bilinear", align_corners=False)
        allowed = resized.flatten(2) >= 0
        allowed |= ~allowed.any(-1, keepdim=True)
    return allowed.unsqueeze(1)


class MaskedAttentionDecoder(nn.Module):
    """Mask2Former's transformer decoder with masked attention and per-layer predictions.

    Learnable query features and positions go through ``num_layers`` layers; layer ``i``
    attends to multi-scale level ``i % num_feature_levels`` (coarsest first), restricted to the
    foreground of the mask predicted before it. A shared head (LayerNorm, class linear, mask
    MLP dotted with the per-pixel embedding) predicts from the initial queries and after every
    layer: ``num_layers + 1`` predictions, the last returned as the output and the first
    ``num_layers`` as ``aux_outputs`` (Mask2Former's convention, the initial prediction included).

    Args:
        in_channels: channels of the multi-scale features.
        num_classes: ``K``; the class head outputs ``K + 1`` (last = no-object).
        hidden_dim: query width ``C``.
        num_queries: ``Q``.
        nheads: attention heads.
        dim_feedforward: feed-forward width.
        num_layers: decoder layers (9 in the paper = 3 rounds over 3 scales).
        pre_norm: pre-norm layers.
        mask_dim: channels of the per-pixel embedding.
        enforce_input_project: project features with a 1×1 conv even when widths match.
        num_feature_levels: multi-scale levels.
        dropout: residual-branch dropout.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        hidden_dim: int = 256,
        num_queries: int = 100,
        nheads: int = 8,
        dim_feedforward: int = 2048,
        num_layers: int = 9,
        pre_norm: bool = False,
        mask_dim: int = 256,
        enforce_input_project: bool = False,
        num_feature_levels: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"MaskedAttentionDecoder: num_classes must be >= 1, got {num_classes}")
        if num_layers < 1:
            raise ValueError(f"MaskedAttentionDecoder: num_layers must be >= 1, got {num_layers}")
        self.num_feature_levels = num_feature_levels
        self.num_queries = num_queries
        self.position_encoding = SinePositionEncoding(hidden_dim // 2, normalize=True)
        self.layers = nn.ModuleList(
            MaskedAttentionDecoderLayer(hidden_dim, nheads, dim_feedforward, dropout, pre_norm)
            for _ in range(num_layers)
        )
        for layer in self.layers:
            for p in layer.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(num_feature_levels, hidden_dim)
        self.input_proj = nn.ModuleList()
        for _ in range(num_feature_levels):
            if in_channels != hidden_dim or enforce_input_project:
                conv = nn.Conv2d(in_channels, hidden_dim, 1)
                c2_xavier_fill(conv)
                self.input_proj.append(conv)
            else:
                self.input_proj.append(nn.Identity())
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the class head with a freshly initialised one for ``num_classes`` (+1) outputs."""
        old = self.class_embed
        self.class_embed = nn.Linear(old.in_features, num_classes + 1).to(old.weight.device, old.weight.dtype)

    def _predict(self, queries: Tensor, mask_features: Tensor) -> tuple[Tensor, Tensor]:
        out = self.decoder_norm(queries)
        logits = self.class_embed(out)
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_embed(out), mask_features)
        return logits, masks

    def forward(self, multi_scale_features: Sequence[Tensor], mask_features: Tensor) -> dict:
        """Decode queries into class and mask predictions.

        Args:
            multi_scale_features: ``num_feature_levels`` float ``[B, in_channels, h_l, w_l]``
                maps, coarsest first.
            mask_features: float ``[B, mask_dim, H, W]`` per-pixel embedding.

        Returns:
            dict with ``pred_logits`` float ``[B, Q, K+1]``, ``pred_masks`` float
            ``[B, Q, H, W]`` mask logits, and ``aux_outputs``: ``num_layers`` dicts of the same
            two keys (initial prediction first).
        """
        if len(multi_scale_features) != self.num_feature_levels:
            raise ValueError(
                f"MaskedAttentionDecoder expects {self.num_feature_levels} feature levels, "
                f"got {len(multi_scale_features)}"
            )
        srcs, pos, sizes = [], [], []
        for lvl, x in enumerate(multi_scale_features):
            sizes.append((x.shape[-2], x.shape[-1]))
            pe = self.position_encoding(x[:1])
            pos.append(pe.flatten(2).transpose(1, 2))
            src = self.input_proj[lvl](x).flatten(2) + self.level_embed.weight[lvl][None, :, None]
            srcs.append(src.transpose(1, 2))
        b = mask_features.shape[0]
        query_pos = self.query_embed.weight.unsqueeze(0)
        tgt = self.query_feat.weight.unsqueeze(0).expand(b, -1, -1)

        logits, masks = self._predict(tgt, mask_features)
        predictions = [(logits, masks)]
        for i, layer in enumerate(self.layers):
            lvl = i % self.num_feature_levels
            attn_mask = attention_mask_from_logits(masks, sizes[lvl])
            tgt = layer(tgt, srcs[lvl], pos[lvl], query_pos, attn_mask)
            logits, masks = self._predict(tgt, mask_features)
            predictions.append((logits, masks))
        return {
            "pred_logits": predictions[-1][0],
            "pred_masks": predictions[-1][1],
            "aux_outputs": [{"pred_logits": lg, "pred_masks": mk} for lg, mk in predictions[:-1]],
        }

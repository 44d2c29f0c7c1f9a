"""Mask2Former's pixel decoder: a deformable-attention encoder over 3 scales plus an FPN tail."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_seg.models.mask_classification.deformable_attention import MultiScaleDeformableAttention
from lightning_seg.models.layers import ConvNormAct, c2_xavier_fill, make_norm
from lightning_seg.models.transformer_layers import FeedForward
from lightning_seg.models.mask_classification.position_encoding import SinePositionEncoding


class DeformableEncoderLayer(nn.Module):
    """Post-norm encoder layer: multi-scale deformable self-attention then a feed-forward block.

    Args:
        embed_dim: width ``C``.
        dim_feedforward: hidden width of the feed-forward block.
        num_heads, num_levels, num_points: deformable-attention shape.
        dropout: dropout after attention and inside/after the feed-forward block.
    """

    def __init__(
        self,
        embed_dim: int = 256,
        dim_feedforward: int = 1024,
        num_heads: int = 8,
        num_levels: int = 3,
        num_points: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(embed_dim, num_heads, num_levels, num_points)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.ffn = FeedForward(embed_dim, dim_feedforward, dropout)
        self.norm2 = nn.LayerNorm(embed_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, src: Tensor, pos: Tensor, reference_points: Tensor, spatial_shapes: Sequence[tuple[int, int]]
    ) -> Tensor:
        """Float ``src``/``pos`` ``[B, S, C]``, ``reference_points`` ``[B, S, L, 2]`` → ``[B, S, C]``."""
        src = self.norm1(src + self.dropout(self.self_attn(src + pos, reference_points, src, spatial_shapes)))
        return self.norm2(src + self.dropout(self.ffn(src)))


def encoder_reference_points(
    spatial_shapes: Sequence[tuple[int, int]], num_levels: int, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """Pixel-centre reference points of every level's positions, normalised to ``[0, 1]``.

    Without padding masks every level covers the whole image, so a point's normalised location
    is the same on all levels.

    Returns:
        float ``[1, S, num_levels, 2]`` (x, y), ``S = sum(h * w)``.
    """
    refs = []
    for h, w in spatial_shapes:
        ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) / h
        xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) / w
        ref = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)
        refs.append(ref)
    return torch.cat(refs, 0)[None, :, None, :].expand(1, -1, num_levels, 2)


class MSDeformAttnPixelDecoder(nn.Module):
    """Mask2Former's multi-scale deformable-attention pixel decoder.

    The coarsest ``num_feature_levels`` backbone maps (strides 8/16/32 for a ResNet) are
    projected to ``conv_dim``, flattened and refined jointly by ``enc_layers`` deformable
    encoder layers; the finer maps (down to ``common_stride``) are added FPN-style. A 1×1 conv
    on the finest output gives the per-pixel embedding.

    Args:
        in_channels: channels of each backbone feature, finest first.
        strides: stride of each backbone feature, finest first.
        conv_dim: encoder / pyramid width.
        mask_dim: channels of the per-pixel embedding.
        enc_layers: deformable encoder layers.
        enc_nheads: attention heads.
        enc_dim_feedforward: encoder feed-forward width.
        enc_n_points: sampled points per head and level.
        num_feature_levels: levels the encoder attends over (and multi-scale outputs).
        common_stride: stride of the per-pixel embedding.
        dropout: encoder dropout.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        strides: Sequence[int],
        conv_dim: int = 256,
        mask_dim: int = 256,
        enc_layers: int = 6,
        enc_nheads: int = 8,
        enc_dim_feedforward: int = 1024,
        enc_n_points: int = 4,
        num_feature_levels: int = 3,
        common_stride: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(in_channels) != len(strides):
            raise ValueError(f"MSDeformAttnPixelDecoder: {len(in_channels)} channels but {len(strides)} strides")
        if len(in_channels) < num_feature_levels:
            raise ValueError(
                f"MSDeformAttnPixelDecoder: {len(in_channels)} input features, need at least "
                f"num_feature_levels={num_feature_levels}"
            )
        if list(strides) != sorted(strides):
            raise ValueError(f"MSDeformAttnPixelDecoder: strides must be finest first, got {list(strides)}")
        self.num_feature_levels = num_feature_levels
        self.conv_dim = conv_dim
        self.mask_dim = mask_dim
        self.in_channels = list(in_channels)
        # Levels finer than the encoder's, down to common_stride, join through the FPN tail.
        first_enc = len(in_channels) - num_feature_levels
        self.num_fpn_levels = sum(1 for s in strides[:first_enc] if s >= common_stride)
        self.fpn_start = first_enc - self.num_fpn_levels

        self.input_proj = nn.ModuleList()
        for c in list(in_channels)[first_enc:][::-1]:  # coarsest first
            conv = nn.Conv2d(c, conv_dim, 1)
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)
            self.input_proj.append(nn.Sequential(conv, make_norm("GN", conv_dim)))
        self.position_encoding = SinePositionEncoding(conv_dim // 2, normalize=True)
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, conv_dim))
        self.encoder_layers = nn.ModuleList(
            DeformableEncoderLayer(conv_dim, enc_dim_feedforward, enc_nheads, num_feature_levels, enc_n_points, dropout)
            for _ in range(enc_layers)
        )
        fpn_channels = list(in_channels)[self.fpn_start : first_enc][::-1]  # coarsest first
        self.lateral_convs = nn.ModuleList(ConvNormAct(c, conv_dim, 1, norm="GN", activation=False, init="c2_xavier")
                                          for c in fpn_channels)
        self.output_convs = nn.ModuleList(ConvNormAct(conv_dim, conv_dim, 3, norm="GN", init="c2_xavier")
                                         for _ in fpn_channels)
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, 1)
        self._reset_encoder_parameters()
        c2_xavier_fill(self.mask_features)

    def _reset_encoder_parameters(self) -> None:
        for layer in self.encoder_layers:
            for p in layer.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
            layer.self_attn.reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """Decode.

        Args:
            features: backbone maps, finest first, each float ``[B, C_i, H_i, W_i]``.

        Returns:
            ``mask_features`` float ``[B, mask_dim, h, w]`` at ``common_stride`` and
            ``multi_scale_features``: ``num_feature_levels`` float ``[B, conv_dim, h_l, w_l]``
            maps, coarsest first.
        """
        if len(features) != len(self.in_channels):
            raise ValueError(f"MSDeformAttnPixelDecoder expects {len(self.in_channels)} features, got {len(features)}")
        enc_inputs = list(features)[len(features) - self.num_feature_levels :][::-1]  # coarsest first
        srcs, pos = [], []
        shapes: list[tuple[int, int]] = []
        for lvl, x in enumerate(enc_inputs):
            y = self.input_proj[lvl](x)
            shapes.append((y.shape[-2], y.shape[-1]))
            srcs.append(y.flatten(2).transpose(1, 2))
            pe = self.position_encoding(y).flatten(2).transpose(1, 2)
            pos.append(pe + self.level_embed[lvl].to(pe.dtype))
        src = torch.cat(srcs, 1)
        pos_flat = torch.cat(pos, 1)
        ref = encoder_reference_points(shapes, self.num_feature_levels, src.device, src.dtype)
        ref = ref.expand(src.shape[0], -1, -1, -1)
        for layer in self.encoder_layers:
            src = layer(src, pos_flat, ref, shapes)

        b = src.shape[0]
        outs = [
            chunk.transpose(1, 2).reshape(b, self.conv_dim, h, w)
            for chunk, (h, w) in zip(src.split([h * w for h, w in shapes], 1), shapes)
        ]
        fpn_inputs = list(features)[self.fpn_start : len(features) - self.num_feature_levels][::-1]
        for lateral_conv, output_conv, x in zip(self.lateral_convs, self.output_convs, fpn_inputs):
            lateral = lateral_conv(x)
            up = F.interpolate(outs[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False)
            outs.append(output_conv(lateral + up))
        return self.mask_features(outs[-1]), outs[: self.num_feature_levels]

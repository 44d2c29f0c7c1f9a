"""Multi-scale deformable attention (Deformable DETR) in pure PyTorch via ``grid_sample``."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def multi_scale_deformable_attention(
    value: Tensor,
    spatial_shapes: Sequence[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Attend to a few bilinearly sampled points per level, head and query.

    For every query ``q`` and head ``m`` the output is
    ``sum_l sum_p A[q,m,l,p] * bilinear(value_l[m], loc[q,m,l,p])`` where locations are in
    ``[0, 1]`` (x, y) image-normalised coordinates with pixel centres at ``(i + 0.5) / size``
    and points outside the map read zeros — the rules of the reference CUDA kernel.

    Args:
        value: float ``[B, S, M, D]``, the ``L`` levels' flattened maps concatenated along
            ``S = sum(h_l * w_l)``, split into ``M`` heads of ``D`` channels.
        spatial_shapes: ``L`` pairs ``(h_l, w_l)`` in the order the levels appear in ``value``.
        sampling_locations: float ``[B, Q, M, L, P, 2]`` (x, y) in ``[0, 1]``.
        attention_weights: float ``[B, Q, M, L, P]`` (softmax-normalised over ``L * P``).

    Returns:
        float ``[B, Q, M * D]``.
    """
    b, s, m, d = value.shape
    _, q, _, num_levels, p, _ = sampling_locations.shape
    shapes = [(int(h), int(w)) for h, w in spatial_shapes]
    if len(shapes) != num_levels:
        raise ValueError(
            f"multi_scale_deformable_attention: {len(shapes)} spatial shapes for {num_levels} levels"
        )
    if sum(h * w for h, w in shapes) != s:
        raise ValueError(
            f"multi_scale_deformable_attention: spatial shapes {shapes} cover "
            f"{sum(h * w for h, w in shapes)} positions but value has {s}"
        )
    # Level-major layouts so split/unbind hand out views whose backward is one cat/stack,
    # rather than per-level slices whose backward zero-fills the whole tensor each time.
    values = value.permute(0, 2, 3, 1).reshape(b * m, d, s).split([h * w for h, w in shapes], dim=2)
    grids = (2 * sampling_locations - 1).permute(3, 0, 2, 1, 4, 5).reshape(num_levels, b * m, q, p, 2)
    weights = attention_weights.permute(3, 0, 2, 1, 4).reshape(num_levels, b * m, 1, q, p)
    out = None
    for value_l, grid_l, weight_l, (h, w) in zip(values, grids.unbind(0), weights.unbind(0), shapes):
        sampled = F.grid_sample(
            value_l.reshape(b * m, d, h, w), grid_l, mode="bilinear", padding_mode="zeros", align_corners=False
        )  # [B*M, D, Q, P]
        # Reducing over points per level avoids materialising all levels' samples at once.
        contrib = (sampled * weight_l).sum(-1)  # [B*M, D, Q]
        out = contrib if out is None else out + contrib
    assert out is not None
    return out.reshape(b, m * d, q).transpose(1, 2)


class MultiScaleDeformableAttention(nn.Module):
    """Deformable attention module: predicts offsets and weights from each query.

    Args:
        embed_dim: model width ``C``.
        num_heads: heads ``M`` (``C`` must be divisible by it).
        num_levels: feature levels ``L``.
        num_points: sampled points ``P`` per head and level.
    """

    def __init__(self, embed_dim: int = 256, num_heads: int = 8, num_levels: int = 3, num_points: int = 4) -> None:
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim={embed_dim} must be divisible by num_heads={num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.sampling_offsets = nn.Linear(embed_dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR's initialisation: zero offsets biased towards a ring of directions."""
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        grid = grid.view(self.num_heads, 1, 1, 2).repeat(1, self.num_levels, self.num_points, 1)
        for i in range(self.num_points):
            grid[:, :, i, :] *= i + 1
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        value: Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
    ) -> Tensor:
        """Attend from ``query`` to the multi-scale ``value`` around ``reference_points``.

        Args:
            query: float ``[B, Q, C]`` (position embedding already added).
            reference_points: float ``[B, Q, L, 2]`` (x, y) in ``[0, 1]``.
            value: float ``[B, S, C]``, the levels' flattened maps concatenated.
            spatial_shapes: ``L`` pairs ``(h_l, w_l)``.

        Returns:
            float ``[B, Q, C]``.
        """
        b, q, _ = query.shape
        s = value.shape[1]
        m, lv, p = self.num_heads, self.num_levels, self.num_points
        value = self.value_proj(value).view(b, s, m, self.embed_dim // m)
        offsets = self.sampling_offsets(query).view(b, q, m, lv, p, 2)
        weights = self.attention_weights(query).view(b, q, m, lv * p).softmax(-1).view(b, q, m, lv, p)
        # Offsets are in pixels of each level: divide by (w, h) to move in normalised units.
        normalizer = torch.tensor(
            [[w, h] for h, w in spatial_shapes], dtype=query.dtype, device=query.device
        )
        locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        out = multi_scale_deformable_attention(value, spatial_shapes, locations, weights)
        return self.output_proj(out)

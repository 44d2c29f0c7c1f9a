"""Sine position encoding of a feature map (DETR / MaskFormer / Mask2Former flavour)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class SinePositionEncoding(nn.Module):
    """Fixed 2-D sine/cosine position encoding, normalised to the feature map's extent.

    Channel layout follows DETR: the first ``num_pos_feats`` channels encode the row (y), the
    next ``num_pos_feats`` the column (x); inside each half, sines and cosines interleave.

    Args:
        num_pos_feats: channels per axis; the output has ``2 * num_pos_feats`` channels.
        temperature: base of the geometric frequency ladder.
        normalize: scale coordinates to ``[0, scale]`` over the map (size-independent codes).
        scale: range of the normalised coordinates (``2π`` by default).
    """

    def __init__(
        self,
        num_pos_feats: int = 128,
        temperature: float = 10000.0,
        normalize: bool = True,
        scale: float | None = None,
    ) -> None:
        super().__init__()
        if scale is not None and not normalize:
            raise ValueError("SinePositionEncoding: scale is only used with normalize=True")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Encode the positions of ``x``.

        Args:
            x: any ``[B, C, H, W]`` tensor; only its shape, device and dtype are used.
            mask: optional bool ``[B, H, W]``, True on the image and False on its padding:
                positions count image cells only and are normalised per image (DETR).

        Returns:
            ``[B, 2 * num_pos_feats, H, W]`` in ``x``'s dtype (computed in float32).
        """
        if mask is not None:
            return self._masked(mask).to(x.dtype)
        b, _, h, w = x.shape
        # Without a padding mask the cumulative sums of DETR reduce to 1..H and 1..W.
        y = torch.arange(1, h + 1, dtype=torch.float32, device=x.device)
        xs = torch.arange(1, w + 1, dtype=torch.float32, device=x.device)
        if self.normalize:
            eps = 1e-6
            y = y / (h + eps) * self.scale
            xs = xs / (w + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=x.device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)
        pos_y = y[:, None] / dim_t  # [H, F]
        pos_x = xs[:, None] / dim_t  # [W, F]
        pos_y = torch.stack((pos_y[:, 0::2].sin(), pos_y[:, 1::2].cos()), dim=2).flatten(1)
        pos_x = torch.stack((pos_x[:, 0::2].sin(), pos_x[:, 1::2].cos()), dim=2).flatten(1)
        pos = torch.cat(
            (pos_y[:, None, :].expand(h, w, -1), pos_x[None, :, :].expand(h, w, -1)), dim=2
        )  # [H, W, 2F]
        return pos.permute(2, 0, 1).unsqueeze(0).expand(b, -1, -1, -1).to(x.dtype)

    def _masked(self, mask: Tensor) -> Tensor:
        """DETR's encoding with padding: cumulative counts of image cells along each axis."""
        valid = mask.float()
        y, xs = valid.cumsum(1), valid.cumsum(2)
        if self.normalize:
            eps = 1e-6
            y = y / (y[:, -1:, :] + eps) * self.scale
            xs = xs / (xs[:, :, -1:] + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=mask.device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)
        pos_y, pos_x = y[..., None] / dim_t, xs[..., None] / dim_t  # [B, H, W, F]
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)

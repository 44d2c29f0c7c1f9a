"""MaskFormer's FPN pixel decoder: a top-down feature pyramid ending at stride 4."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from lightning_seg.models.layers import c2_xavier_fill
from lightning_seg.models.necks import FPN


class FPNPixelDecoder(nn.Module):
    """Top-down FPN over backbone features (MaskFormer's ``BasePixelDecoder``).

    An :class:`~lightning_seg.models.necks.FPN` with ``top_down="outputs"``: the coarsest map
    goes through a 3×3 conv; every finer map is a 1×1 lateral projection plus the
    nearest-upsampled coarser output, followed by a 3×3 conv (all GroupNorm + ReLU). The
    finest output gives the per-pixel embedding; the coarsest ``num_feature_levels`` outputs are
    the multi-scale features a transformer decoder attends to.

    Args:
        in_channels: channels of each backbone feature, finest (stride 4) first.
        conv_dim: width of the pyramid.
        mask_dim: channels of the per-pixel mask embedding.
        num_feature_levels: multi-scale outputs returned (coarsest first).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        conv_dim: int = 256,
        mask_dim: int = 256,
        num_feature_levels: int = 3,
    ) -> None:
        super().__init__()
        if len(in_channels) < num_feature_levels:
            raise ValueError(
                f"FPNPixelDecoder: {len(in_channels)} input features, need at least "
                f"num_feature_levels={num_feature_levels}"
            )
        self.num_feature_levels = num_feature_levels
        self.conv_dim = conv_dim
        self.mask_dim = mask_dim
        self.fpn = FPN(in_channels, conv_dim, norm="GN", top_down="outputs", coarsest_lateral=False,
                       output_activation=True, init="c2_xavier")
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, 3, padding=1)
        c2_xavier_fill(self.mask_features)

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """Decode.

        Args:
            features: backbone maps, finest first, each float ``[B, C_i, H_i, W_i]``.

        Returns:
            ``mask_features`` float ``[B, mask_dim, H_0, W_0]`` (the finest input's size) and
            ``multi_scale_features``: ``num_feature_levels`` float ``[B, conv_dim, h, w]`` maps,
            coarsest first.
        """
        levels = self.fpn(features)
        return self.mask_features(levels[0]), levels[::-1][: self.num_feature_levels]

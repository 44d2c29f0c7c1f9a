"""Rows of a flat, image-tagged tensor gathered into a padded per-image batch and back."""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["ImageGroups", "group_by_image"]


class ImageGroups(NamedTuple):
    """Where each row of a flat tensor goes in a padded ``[B, width, ...]`` batch.

    Attributes:
        image: int64 ``[N]`` image of each row (the input, unchanged).
        rank: int64 ``[N]`` slot of each row in its image (rows keep their relative order).
        counts: int64 ``[B]`` rows per image.
        width: ``max(counts)`` (at least 0), a host int.
    """

    image: torch.Tensor
    rank: torch.Tensor
    counts: torch.Tensor
    width: int

    def pad(self, values: torch.Tensor, fill: float | bool = 0) -> torch.Tensor:
        """``values [N, ...]`` -> ``[B, width, ...]`` with ``fill`` in the unused slots."""
        out = values.new_full((self.counts.shape[0], self.width, *values.shape[1:]), fill)
        out[self.image, self.rank] = values
        return out

    def valid(self) -> torch.Tensor:
        """bool ``[B, width]``: the used slots."""
        return torch.arange(self.width, device=self.counts.device) < self.counts[:, None]


def group_by_image(image_index: torch.Tensor, num_images: int) -> ImageGroups:
    """Slots of rows tagged with ``image_index`` (int64 ``[N]``, any order) among ``num_images``.

    One host read: the padded width.
    """
    n = image_index.shape[0]
    counts = torch.bincount(image_index, minlength=num_images)
    if n == 0:
        return ImageGroups(image_index, image_index.clone(), counts, 0)
    order = torch.argsort(image_index, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(image_index)
    rank[order] = torch.arange(n, device=image_index.device) - starts[image_index[order]]
    return ImageGroups(image_index, rank, counts, int(counts.max()))

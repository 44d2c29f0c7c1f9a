"""Augmentation pipelines in which the image, the per-segment masks and the semantic map move together.

A pipeline is an :class:`Augmentation`: a list of albumentations transforms applied to a
:class:`~lightning_seg.data.base.Record`. Masks go through albumentations as the ``masks``
target; the semantic map goes as an extra mask stored *shifted by one* (void 255 → 0, class
``c`` → ``c + 1``) so that every pad/fill of 0 — the only mask fill albumentations applies to all
masks alike — means "void" for the semantic map and "background" for the instance masks.
Segments that vanish (no pixels left after a crop) are dropped together with their label,
crowd and thing flags.

Pipelines come from a preset name (``"lsj"``, ``"ade20k"``, ``"resize"``, ``"flip"``,
``"none"``) or from a list of specs, each a dict with a ``type`` (a class of this module or of
albumentations) and its keyword arguments, which is how YAML configures them::

    train_augmentation:
      - {type: RandomResizeKeepRatio, scale: [2048, 512], ratio_range: [0.5, 2.0]}
      - {type: CategoryAwareRandomCrop, height: 512, width: 512, cat_max_ratio: 0.75}
      - {type: HorizontalFlip, p: 0.5}
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, Union

import albumentations as A
import cv2
import numpy as np
import torch

from lightning_seg.data.base import Record
from lightning_seg.structures import IGNORE_INDEX

AugmentationSpec = Union[str, Sequence[dict[str, Any]], None]


def _resize(img: np.ndarray, height: int, width: int, nearest: bool) -> np.ndarray:
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    if img.shape[0] == height and img.shape[1] == width:
        return img
    out = cv2.resize(img, (width, height), interpolation=interp)
    return out.reshape(height, width, *img.shape[2:])


class _ResizeToSize(A.DualTransform):
    """Base of the aspect-keeping resizes: bilinear image, nearest masks, to ``params["size"]``."""

    @staticmethod
    def scaled(h: int, w: int, factor: float) -> dict[str, tuple[int, int]]:
        """The ``size`` parameter of an ``h x w`` image scaled by ``factor`` (rounded, >= 1)."""
        return {"size": (max(1, int(h * factor + 0.5)), max(1, int(w * factor + 0.5)))}

    def apply(self, img: np.ndarray, size: tuple[int, int] = (0, 0), **params: Any) -> np.ndarray:
        return _resize(img, *size, nearest=False)

    def apply_to_mask(self, mask: np.ndarray, size: tuple[int, int] = (0, 0), **params: Any) -> np.ndarray:
        return _resize(mask, *size, nearest=True)


class RandomResizeKeepRatio(_ResizeToSize):
    """Resize keeping the aspect ratio to a randomly scaled target (mmsegmentation's ``RandomResize``).

    A ratio ``r`` is drawn from ``ratio_range``; the target is ``(scale[0]·r, scale[1]·r)`` as
    (long, short) bounds, and the image is scaled by ``min(long_target / long_side,
    short_target / short_side)``. With ``ratio_range=(1, 1)`` this is the deterministic
    shortest-edge resize with a maximum size used for evaluation (detectron2's
    ``ResizeShortestEdge``).

    Args:
        scale: ``(long_bound, short_bound)``, e.g. ``(2048, 512)`` for ADE20K.
        ratio_range: range of the random ratio ``r``.
    """

    def __init__(
        self,
        scale: tuple[int, int] = (2048, 512),
        ratio_range: tuple[float, float] = (0.5, 2.0),
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        self.scale = tuple(scale)
        self.ratio_range = tuple(ratio_range)

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        r = self.py_random.uniform(*self.ratio_range)
        long_t, short_t = max(self.scale) * r, min(self.scale) * r
        return self.scaled(h, w, min(long_t / max(h, w), short_t / min(h, w)))

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("scale", "ratio_range")


class ResizeShortestEdge(_ResizeToSize):
    """Resize keeping the aspect ratio so the short side is a random length, the long side at
    most ``max_size`` (detectron2's ``ResizeShortestEdge``, the R-CNN training resize).

    Args:
        short_edge_lengths: candidate short-side lengths (``sample_style="choice"``) or the
            ``(min, max)`` range (``"range"``), e.g. ``[640, 672, 704, 736, 768, 800]``.
        max_size: bound on the long side after the resize.
        sample_style: ``"choice"`` or ``"range"``.
    """

    def __init__(
        self,
        short_edge_lengths: tuple[int, ...] = (640, 672, 704, 736, 768, 800),
        max_size: int = 1333,
        sample_style: str = "choice",
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        if sample_style not in ("choice", "range"):
            raise ValueError(f"ResizeShortestEdge sample_style must be 'choice' or 'range', got {sample_style!r}")
        if sample_style == "range" and len(short_edge_lengths) != 2:
            raise ValueError(f"ResizeShortestEdge with sample_style='range' needs (min, max), got {short_edge_lengths}")
        self.short_edge_lengths = tuple(int(x) for x in short_edge_lengths)
        self.max_size = int(max_size)
        self.sample_style = sample_style

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        if self.sample_style == "choice":
            short = self.py_random.choice(self.short_edge_lengths)
        else:
            short = self.py_random.randint(self.short_edge_lengths[0], self.short_edge_lengths[1])
        return self.scaled(h, w, min(short / min(h, w), self.max_size / max(h, w)))

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("short_edge_lengths", "max_size", "sample_style")


class CategoryAwareRandomCrop(A.DualTransform):
    """Random crop that avoids crops dominated by one class (mmsegmentation's ``cat_max_ratio``).

    Up to ``max_tries`` crops are drawn; the first whose most frequent non-void class covers
    less than ``cat_max_ratio`` of the labelled pixels (and that holds at least two classes) is
    kept, otherwise the last one. An image smaller than the crop is cropped to its own size
    (pad afterwards with ``PadIfNeeded``).

    Args:
        height, width: crop size.
        cat_max_ratio: largest allowed share of one class (1.0 disables the check).
        max_tries: number of crops tried.
    """

    def __init__(
        self, height: int, width: int, cat_max_ratio: float = 0.75, max_tries: int = 10, p: float = 1.0
    ) -> None:
        super().__init__(p=p)
        self.height, self.width = height, width
        self.cat_max_ratio = cat_max_ratio
        self.max_tries = max_tries

    @property
    def targets_as_params(self) -> list[str]:
        return ["semantic"]

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        ch, cw = min(self.height, h), min(self.width, w)
        shifted = data.get("semantic")
        box = (0, 0)
        for _ in range(self.max_tries):
            box = (self.py_random.randint(0, h - ch), self.py_random.randint(0, w - cw))
            if self.cat_max_ratio >= 1.0 or shifted is None:
                break
            crop = shifted[box[0] : box[0] + ch, box[1] : box[1] + cw]
            counts = np.bincount(crop.ravel(), minlength=256)[1:]  # 0 = void after the shift
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                break
        return {"box": (box[0], box[1], ch, cw)}

    def apply(self, img: np.ndarray, box: tuple[int, int, int, int] = (0, 0, 0, 0), **params: Any) -> np.ndarray:
        y, x, ch, cw = box
        return np.ascontiguousarray(img[y : y + ch, x : x + cw])

    def apply_to_mask(self, mask: np.ndarray, box: tuple[int, int, int, int] = (0, 0, 0, 0), **params: Any) -> np.ndarray:
        return self.apply(mask, box)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("height", "width", "cat_max_ratio", "max_tries")


def photometric_distortion(p: float = 0.5) -> A.Compose:
    """mmsegmentation-style photometric distortion: brightness, contrast, saturation, hue."""
    return A.Compose(
        [
            A.RandomBrightnessContrast(brightness_limit=32 / 255, contrast_limit=0.5, p=p),
            A.HueSaturationValue(hue_shift_limit=18, sat_shift_limit=30, val_shift_limit=0, p=p),
        ]
    )


_CUSTOM = {
    "RandomResizeKeepRatio": RandomResizeKeepRatio,
    "ResizeShortestEdge": ResizeShortestEdge,
    "CategoryAwareRandomCrop": CategoryAwareRandomCrop,
    "PhotometricDistortion": photometric_distortion,
}


def transform_from_spec(spec: dict[str, Any]) -> A.BasicTransform:
    """Build one transform from ``{"type": name, **kwargs}`` (ours first, then albumentations)."""
    if not isinstance(spec, dict) or "type" not in spec:
        raise ValueError(f"augmentation spec must be a dict with a 'type' key, got {spec!r}")
    kwargs = dict(spec)
    name = kwargs.pop("type")
    cls = _CUSTOM.get(name) or getattr(A, name, None)
    if cls is None:
        raise ValueError(f"unknown augmentation type {name!r}: not in lightning_seg.data.transforms nor albumentations")
    for k, v in list(kwargs.items()):
        if isinstance(v, list):
            kwargs[k] = tuple(v)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ValueError(f"bad arguments for augmentation {name!r}: {e}") from e


def preset(name: str, size: int) -> list[A.BasicTransform]:
    """The anchors' pipelines by name.

    * ``lsj`` – COCO large-scale jitter (detectron2/Mask2Former): flip, scale the image to fit
      ``size`` times a random factor in [0.1, 2.0], pad (bottom/right) and crop to ``size²``.
    * ``ade20k`` – mmsegmentation/Mask2Former ADE20K: random resize with ratio 0.5–2.0 of
      ``(4·size, size)``, crop ``size²`` with ``cat_max_ratio`` 0.75, flip, photometric
      distortion, pad to ``size²``.
    * ``resize`` – evaluation: shortest edge to ``size`` with the long edge at most
      ``4·size`` (COCO-style 800/1333 is ``{type: RandomResizeKeepRatio, scale: [1333, 800],
      ratio_range: [1, 1]}``).
    * ``flip`` – horizontal flip only; ``none`` – nothing.
    """
    if name == "none":
        return []
    if name == "flip":
        return [A.HorizontalFlip(p=0.5)]
    if name == "lsj":
        return [
            A.HorizontalFlip(p=0.5),
            A.LongestMaxSize(max_size=size),
            A.RandomScale(scale_limit=(0.1 - 1.0, 2.0 - 1.0), p=1.0),
            A.PadIfNeeded(size, size, position="top_left", border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0),
            A.RandomCrop(size, size),
        ]
    if name == "ade20k":
        return [
            RandomResizeKeepRatio(scale=(4 * size, size), ratio_range=(0.5, 2.0)),
            CategoryAwareRandomCrop(size, size, cat_max_ratio=0.75),
            A.HorizontalFlip(p=0.5),
            photometric_distortion(),
            A.PadIfNeeded(size, size, position="top_left", border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0),
        ]
    if name == "resize":
        return [RandomResizeKeepRatio(scale=(4 * size, size), ratio_range=(1.0, 1.0))]
    raise ValueError(f"unknown augmentation preset {name!r}; choose lsj, ade20k, resize, flip or none")


class Augmentation:
    """Apply albumentations transforms to a :class:`~lightning_seg.data.base.Record`.

    Args:
        transforms: albumentations transforms, applied in order.
        image_only: transform the image alone and keep the targets as they are (evaluation at
            the original resolution).
    """

    def __init__(self, transforms: Sequence[A.BasicTransform], image_only: bool = False) -> None:
        self.transforms = list(transforms)
        self.image_only = image_only
        self.pipeline = A.Compose(self.transforms, additional_targets={"semantic": "mask"})
        self._seed: int | None = None

    def _seed_from_torch(self) -> None:
        """Seed the pipeline from this process's torch seed, once per process.

        albumentations 2 draws from its own generators and ignores the global seeds, so
        without this ``seed_everything`` would not make augmentation reproducible. A DataLoader
        worker's torch seed is ``base_seed + worker_id``, with ``base_seed`` drawn from the
        (seeded) main process every epoch: workers and epochs get distinct, reproducible draws.
        """
        seed = torch.initial_seed() % 2**32
        if seed != self._seed:
            # one shared stream for all transforms (per-transform seeds would correlate them)
            self.pipeline.set_random_state(np.random.default_rng(seed), random.Random(seed))
            self._seed = seed

    def __repr__(self) -> str:
        return f"Augmentation({self.transforms})"

    def __call__(self, record: Record) -> Record:
        if not self.transforms:
            return record
        self._seed_from_torch()
        if self.image_only:
            return Record(**{**record, "image": self.pipeline(image=record["image"])["image"]})  # type: ignore[typeddict-item]
        semantic = record["semantic"]
        # Shift so that albumentations' zero fill means void (see the module docstring).
        shifted = np.where(semantic == IGNORE_INDEX, 0, semantic + 1).astype(np.uint8)
        masks = record["masks"]
        n = len(masks)
        kwargs: dict[str, Any] = {"image": record["image"], "semantic": shifted}
        if n:
            kwargs["masks"] = masks.astype(np.uint8)
        out = self.pipeline(**kwargs)
        image = out["image"]
        h, w = image.shape[:2]
        if n:
            new_masks = np.asarray(out["masks"]).astype(bool).reshape(n, h, w)
        else:
            new_masks = np.zeros((0, h, w), dtype=bool)
        keep = new_masks.reshape(n, h * w).any(axis=1)
        sem = out["semantic"].astype(np.int64)
        sem = np.where(sem == 0, IGNORE_INDEX, sem - 1)
        return Record(
            image=image,
            masks=new_masks[keep],
            labels=np.asarray(record["labels"])[keep],
            iscrowd=np.asarray(record["iscrowd"])[keep],
            is_thing=np.asarray(record["is_thing"])[keep],
            semantic=sem,
            image_id=record["image_id"],
            orig_size=record["orig_size"],
        )


def build_augmentation(spec: AugmentationSpec, size: int = 512, image_only: bool = False) -> Augmentation:
    """An :class:`Augmentation` from a preset name, a list of ``{"type": ...}`` specs, or None.

    Args:
        spec: preset name (see :func:`preset`), list of spec dicts, or None (no augmentation).
        size: the crop/resize size the presets use.
        image_only: see :class:`Augmentation`.
    """
    if spec is None:
        return Augmentation([])
    if isinstance(spec, str):
        return Augmentation(preset(spec, size), image_only)
    return Augmentation([transform_from_spec(s) for s in spec], image_only)

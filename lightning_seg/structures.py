"""The data contracts shared by every dataset, model, op, metric and task.

Three shapes travel through the framework:

* **Sample** – what every ``Dataset.__getitem__`` returns, whatever the source format
  (COCO panoptic, COCO instance, ADE20K, folders, synthetic). One format for all three
  tasks; a task takes the keys it needs.
* **Batch** – what :func:`collate` builds from a list of samples: images padded to a size
  divisibility, a validity mask, and the per-image targets (variable number of segments).
* **Predictions** – semantic class maps, instance masks with scores, and panoptic
  segment-id maps with COCO-style ``segments_info``.

Plus :class:`DatasetMetadata`: class names, the contiguous-id ↔ dataset-category-id maps,
thing/stuff flags and colours.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NotRequired, TypedDict

import torch
import torch.nn.functional as F

IGNORE_INDEX = 255
"""Value of void / unlabeled pixels in every semantic map."""


class Sample(TypedDict):
    """One image and its annotations, the contract every dataset returns.

    Keys:
        image: uint8 ``[3, H, W]`` RGB image.
        masks: bool ``[N, H, W]``, one binary mask per segment (things and stuff).
        labels: int64 ``[N]`` contiguous class ids in ``[0, num_classes)``.
        iscrowd: bool ``[N]``, COCO crowd flag.
        is_thing: bool ``[N]``, True for countable object classes.
        semantic: int64 ``[H, W]`` class map, :data:`IGNORE_INDEX` for void.
        image_id: the dataset's image id (int for COCO-style sources, str for file stems).
        orig_size: ``(H0, W0)`` size of the image as stored on disk, before any transform.
        boxes: float32 ``[N, 4]`` ``(x1, y1, x2, y2)`` box of each mask, in pixels of
            ``masks`` (see :func:`masks_to_boxes`); ``[0, 0, 0, 0]`` for an empty mask.

    ``masks`` and ``semantic`` have the image's size, except for evaluation samples of a
    DataModule with ``eval_at_original_size`` (the default): there the evaluation transform
    (e.g. a resize) applies to the image only and the targets stay at ``orig_size``, so metrics
    are computed at the original resolution, as the COCO and ADE20K benchmarks define them.
    ``boxes`` are always computed from ``masks`` once every transform has run, so they are in the
    masks' frame (the augmented image, or the original image for such evaluation samples) and
    agree with the masks after any crop, flip, resize or rotation.
    """

    image: torch.Tensor
    masks: torch.Tensor
    labels: torch.Tensor
    iscrowd: torch.Tensor
    is_thing: torch.Tensor
    semantic: torch.Tensor
    image_id: int | str
    orig_size: tuple[int, int]
    boxes: torch.Tensor


class Target(TypedDict):
    """Per-image target inside a :class:`Batch`, padded to the batch's ``[Hp, Wp]``.

    Keys:
        masks: bool ``[N, Hp, Wp]`` (False in the padding).
        labels: int64 ``[N]``.
        iscrowd: bool ``[N]``.
        is_thing: bool ``[N]``.
        semantic: int64 ``[Hp, Wp]`` (:data:`IGNORE_INDEX` in the padding).
        boxes: float32 ``[N, 4]`` xyxy in pixels of ``masks``, as in :class:`Sample` (padding
            at the bottom/right does not move them).
        image_id: as in :class:`Sample`.
        orig_size: ``(H0, W0)`` size on disk.
        image_size: ``(H, W)`` size of the image after the transform, before padding.
        target_size: ``(Ht, Wt)`` size of ``masks``/``semantic`` before padding: the image size,
            or ``orig_size`` for original-resolution evaluation targets. When a batch holds such
            targets, masks and semantic maps are padded to the largest target size instead of
            ``[Hp, Wp]``.
    """

    masks: torch.Tensor
    labels: torch.Tensor
    iscrowd: torch.Tensor
    is_thing: torch.Tensor
    semantic: torch.Tensor
    boxes: torch.Tensor
    image_id: int | str
    orig_size: tuple[int, int]
    image_size: tuple[int, int]
    target_size: tuple[int, int]


class Batch(TypedDict):
    """A collated batch.

    Keys:
        images: float32 ``[B, 3, Hp, Wp]`` in ``[0, 1]`` (models normalise internally),
            zero in the padding.
        pixel_mask: bool ``[B, Hp, Wp]``, True on real pixels, False on padding.
        targets: list of ``B`` :class:`Target` dicts.
    """

    images: torch.Tensor
    pixel_mask: torch.Tensor
    targets: list[Target]


class InstancePrediction(TypedDict):
    """Instance predictions for one image at its original size.

    Keys:
        masks: bool ``[M, H, W]``.
        labels: int64 ``[M]`` contiguous class ids.
        scores: float32 ``[M]`` confidence in ``[0, 1]``.
        boxes: optional float32 ``[M, 4]`` ``(x1, y1, x2, y2)`` in pixels of ``masks``, for
            families that predict boxes; consumers without it use the masks' boxes
            (:func:`masks_to_boxes`).
    """

    masks: torch.Tensor
    labels: torch.Tensor
    scores: torch.Tensor
    boxes: NotRequired[torch.Tensor]


class SegmentInfo(TypedDict):
    """One entry of a panoptic prediction's ``segments_info`` (COCO panoptic shape).

    ``category_id`` is the *contiguous* class id inside the framework; the writers in
    :mod:`lightning_seg.evaluation` map it back to the dataset's category id.
    """

    id: int
    category_id: int
    isthing: bool
    score: float


class PanopticPrediction(TypedDict):
    """Panoptic prediction for one image at its original size.

    Keys:
        panoptic_seg: int32 ``[H, W]`` segment-id map, 0 = void (no segment).
        segments_info: one :class:`SegmentInfo` per non-zero id in ``panoptic_seg``.
    """

    panoptic_seg: torch.Tensor
    segments_info: list[SegmentInfo]


def distinct_colors(n: int) -> list[tuple[int, int, int]]:
    """``n`` well-separated RGB colours (golden-ratio hue walk), deterministic."""
    colors = []
    for i in range(n):
        h = (i * 0.618033988749895) % 1.0
        s = 0.65 + 0.35 * ((i // 7) % 2)
        v = 0.95 - 0.3 * ((i // 3) % 2)
        r, g, b = colorsys.hsv_to_rgb(h, s, v)
        colors.append((int(r * 255), int(g * 255), int(b * 255)))
    return colors


@dataclass
class DatasetMetadata:
    """What a model, a metric and a writer need to know about a dataset's classes.

    Classes are indexed by a *contiguous* id ``0..num_classes-1``; ``category_ids[i]`` is the
    dataset's own id of contiguous class ``i`` (e.g. COCO's 1..200 with gaps).

    Args:
        class_names: ``num_classes`` names.
        category_ids: dataset category id of each contiguous class (defaults to ``0..K-1``).
        is_thing: per class, True for things (countable objects), False for stuff.
        colors: per class RGB colour for overlays (generated when omitted).
        ignore_index: value of void pixels in semantic maps.
    """

    class_names: list[str]
    category_ids: list[int] = field(default_factory=list)
    is_thing: list[bool] = field(default_factory=list)
    colors: list[tuple[int, int, int]] = field(default_factory=list)
    ignore_index: int = IGNORE_INDEX

    def __post_init__(self) -> None:
        k = len(self.class_names)
        if k == 0:
            raise ValueError("DatasetMetadata needs at least one class")
        if k >= self.ignore_index and 0 <= self.ignore_index:
            raise ValueError(
                f"{k} classes do not fit below ignore_index={self.ignore_index}; "
                "use a larger ignore_index"
            )
        if not self.category_ids:
            self.category_ids = list(range(k))
        if not self.is_thing:
            self.is_thing = [True] * k
        if not self.colors:
            self.colors = distinct_colors(k)
        self.colors = [tuple(int(c) for c in col) for col in self.colors]  # type: ignore[misc]
        for name, value in (
            ("category_ids", self.category_ids),
            ("is_thing", self.is_thing),
            ("colors", self.colors),
        ):
            if len(value) != k:
                raise ValueError(f"DatasetMetadata.{name} has {len(value)} entries, expected {k}")
        if len(set(self.category_ids)) != k:
            raise ValueError(f"DatasetMetadata.category_ids are not unique: {self.category_ids}")
        self._contiguous = {cid: i for i, cid in enumerate(self.category_ids)}

    @property
    def num_classes(self) -> int:
        """Number of classes ``K`` (void excluded)."""
        return len(self.class_names)

    @property
    def thing_ids(self) -> list[int]:
        """Contiguous ids of the thing classes."""
        return [i for i, t in enumerate(self.is_thing) if t]

    @property
    def stuff_ids(self) -> list[int]:
        """Contiguous ids of the stuff classes."""
        return [i for i, t in enumerate(self.is_thing) if not t]

    def contiguous_id(self, category_id: int) -> int:
        """Map a dataset category id to its contiguous id; ``KeyError`` naming it if unknown."""
        try:
            return self._contiguous[category_id]
        except KeyError:
            raise KeyError(
                f"unknown category id {category_id}; known ids: {sorted(self._contiguous)}"
            ) from None

    def has_category(self, category_id: int) -> bool:
        """Whether ``category_id`` is one of the dataset's category ids."""
        return category_id in self._contiguous

    def to_coco_categories(self) -> list[dict[str, Any]]:
        """The ``categories`` block of a COCO (panoptic) JSON for these classes."""
        return [
            {
                "id": cid,
                "name": name,
                "isthing": int(thing),
                "color": list(color),
                "supercategory": "thing" if thing else "stuff",
            }
            for cid, name, thing, color in zip(
                self.category_ids, self.class_names, self.is_thing, self.colors
            )
        ]

    @classmethod
    def from_coco_categories(
        cls, categories: Sequence[dict[str, Any]], source: str = "categories"
    ) -> DatasetMetadata:
        """Build metadata from a COCO ``categories`` list, sorted by category id.

        Args:
            categories: dicts with ``id``, ``name`` and optionally ``isthing`` (default 1) and
                ``color``.
            source: name of the file the list came from, used in error messages.
        """
        if not categories:
            raise ValueError(f"{source}: the 'categories' list is empty")
        for cat in categories:
            if "id" not in cat or "name" not in cat:
                raise ValueError(f"{source}: category without 'id' or 'name': {cat}")
        cats = sorted(categories, key=lambda c: int(c["id"]))
        ids = [int(c["id"]) for c in cats]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{source}: duplicate category ids in {ids}")
        have_colors = all("color" in c for c in cats)
        return cls(
            class_names=[str(c["name"]) for c in cats],
            category_ids=ids,
            is_thing=[bool(c.get("isthing", 1)) for c in cats],
            colors=[tuple(c["color"]) for c in cats] if have_colors else [],
        )


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """The box of each mask, covering whole pixels, on the masks' device.

    ``x1`` / ``y1`` are the first set column / row and ``x2`` / ``y2`` one past the last
    (detectron2's ``BitMasks.get_bounding_boxes``; as xywh it equals pycocotools
    ``mask.toBbox`` of the mask's RLE). An empty mask gets ``[0, 0, 0, 0]``.
    ``torchvision.ops.masks_to_boxes`` differs: its ``x2`` / ``y2`` are the last set pixel
    (inclusive) and it does not handle empty masks.

    Args:
        masks: bool ``[N, H, W]``.

    Returns:
        float32 ``[N, 4]`` ``(x1, y1, x2, y2)`` in pixels.
    """
    if masks.ndim != 3:
        raise ValueError(f"masks must be [N,H,W], got {tuple(masks.shape)}")
    n, h, w = masks.shape
    if masks.numel() == 0:
        return torch.zeros(n, 4, dtype=torch.float32, device=masks.device)
    rows, cols = masks.any(dim=2), masks.any(dim=1)  # [N, H], [N, W]

    def extent(hit: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.arange(size, device=masks.device)
        first = torch.where(hit, idx, size).amin(dim=1)
        last = torch.where(hit, idx, -1).amax(dim=1)
        return first, last + 1

    x1, x2 = extent(cols, w)
    y1, y2 = extent(rows, h)
    boxes = torch.stack([x1, y1, x2, y2], dim=1).float()
    return torch.where(rows.any(dim=1, keepdim=True), boxes, 0.0)


def empty_sample(height: int, width: int, image_id: int | str = 0) -> Sample:
    """A sample with a black image and no segments (all pixels void)."""
    return Sample(
        image=torch.zeros(3, height, width, dtype=torch.uint8),
        masks=torch.zeros(0, height, width, dtype=torch.bool),
        labels=torch.zeros(0, dtype=torch.int64),
        iscrowd=torch.zeros(0, dtype=torch.bool),
        is_thing=torch.zeros(0, dtype=torch.bool),
        semantic=torch.full((height, width), IGNORE_INDEX, dtype=torch.int64),
        image_id=image_id,
        orig_size=(height, width),
        boxes=torch.zeros(0, 4, dtype=torch.float32),
    )


def check_sample(sample: Sample, num_classes: int | None = None, where: str = "sample") -> None:
    """Raise ``ValueError`` naming ``where`` if ``sample`` breaks the contract.

    Checks dtypes and shapes (``boxes`` float32 ``[N, 4]`` included), and (when ``num_classes``
    is given) that labels and semantic values are contiguous class ids or :data:`IGNORE_INDEX`.
    """
    image, masks = sample["image"], sample["masks"]
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"{where}: image must be uint8 [3,H,W], got {image.dtype} {tuple(image.shape)}")
    h, w = image.shape[1:]
    if masks.dtype != torch.bool or masks.ndim != 3 or tuple(masks.shape[1:]) != (h, w):
        raise ValueError(f"{where}: masks must be bool [N,{h},{w}], got {masks.dtype} {tuple(masks.shape)}")
    n = masks.shape[0]
    for key, dtype in (("labels", torch.int64), ("iscrowd", torch.bool), ("is_thing", torch.bool)):
        t = sample[key]  # type: ignore[literal-required]
        if t.dtype != dtype or tuple(t.shape) != (n,):
            raise ValueError(f"{where}: {key} must be {dtype} [{n}], got {t.dtype} {tuple(t.shape)}")
    boxes = sample.get("boxes")
    if boxes is None:
        raise ValueError(f"{where}: no 'boxes' (float32 [{n},4])")
    if boxes.dtype != torch.float32 or tuple(boxes.shape) != (n, 4):
        raise ValueError(f"{where}: boxes must be float32 [{n},4], got {boxes.dtype} {tuple(boxes.shape)}")
    sem = sample["semantic"]
    if sem.dtype != torch.int64 or tuple(sem.shape) != (h, w):
        raise ValueError(f"{where}: semantic must be int64 [{h},{w}], got {sem.dtype} {tuple(sem.shape)}")
    if num_classes is not None:
        if n and (sample["labels"].min() < 0 or sample["labels"].max() >= num_classes):
            raise ValueError(f"{where}: labels outside [0,{num_classes}): {sample['labels'].tolist()}")
        bad = (sem != IGNORE_INDEX) & ((sem < 0) | (sem >= num_classes))
        if bad.any():
            raise ValueError(
                f"{where}: semantic map has values {sorted(set(sem[bad].unique().tolist()))} "
                f"outside [0,{num_classes}) that are not ignore ({IGNORE_INDEX})"
            )


def collate(
    samples: Sequence[Sample],
    size_divisibility: int = 32,
    pad_size: tuple[int, int] | None = None,
) -> Batch:
    """Pad a list of samples into a :class:`Batch`.

    Images are converted to float32 in ``[0, 1]`` and padded at the bottom/right with zeros to
    the largest size in the batch rounded up to ``size_divisibility`` (or to ``pad_size`` when
    given). Target masks are padded with False and semantic maps with :data:`IGNORE_INDEX`, so
    the padding never counts as a class; ``boxes`` pass through unchanged (the padding is at the
    bottom/right, so pixel coordinates stay the same).

    Args:
        samples: ``B`` samples (sizes may differ).
        size_divisibility: pad height and width up to a multiple of this (1 = no rounding).
        pad_size: fixed ``(Hp, Wp)``; must be at least every image's size.

    Returns:
        A :class:`Batch` with ``images`` float32 ``[B,3,Hp,Wp]`` and ``pixel_mask`` bool
        ``[B,Hp,Wp]``.
    """
    if len(samples) == 0:
        raise ValueError("collate got an empty list of samples")
    sizes = [tuple(s["image"].shape[1:]) for s in samples]
    if pad_size is None:
        hp = max(h for h, _ in sizes)
        wp = max(w for _, w in sizes)
        if size_divisibility > 1:
            hp = -(-hp // size_divisibility) * size_divisibility
            wp = -(-wp // size_divisibility) * size_divisibility
    else:
        hp, wp = pad_size
        too_big = [(s["image_id"], size) for s, size in zip(samples, sizes) if size[0] > hp or size[1] > wp]
        if too_big:
            raise ValueError(f"pad_size {pad_size} is smaller than images {too_big}")
    b = len(samples)
    images = torch.zeros(b, 3, hp, wp, dtype=torch.float32)
    pixel_mask = torch.zeros(b, hp, wp, dtype=torch.bool)
    target_sizes = [tuple(s["semantic"].shape) for s in samples]
    if target_sizes == sizes:
        th, tw = hp, wp
    else:  # original-resolution evaluation targets: padded among themselves
        th, tw = max(h for h, _ in target_sizes), max(w for _, w in target_sizes)
    targets: list[Target] = []
    for i, (s, (h, w), (ht, wt)) in enumerate(zip(samples, sizes, target_sizes)):
        images[i, :, :h, :w] = s["image"].float().div_(255.0)
        pixel_mask[i, :h, :w] = True
        pad = (0, tw - wt, 0, th - ht)
        targets.append(
            Target(
                masks=F.pad(s["masks"], pad, value=False),
                labels=s["labels"],
                iscrowd=s["iscrowd"],
                is_thing=s["is_thing"],
                semantic=F.pad(s["semantic"], pad, value=IGNORE_INDEX),
                boxes=s["boxes"],
                image_id=s["image_id"],
                orig_size=tuple(s["orig_size"]),  # type: ignore[typeddict-item]
                image_size=(h, w),
                target_size=(ht, wt),
            )
        )
    return Batch(images=images, pixel_mask=pixel_mask, targets=targets)

"""Class tables of ADE20K SceneParsing (150 classes) and of its panoptic version.

Index conventions, which differ between the files one meets:

* the SceneParsing annotation PNGs (``ADEChallengeData2016/annotations``) store class
  ``1..150`` in the order of :data:`ADE20K_150_CLASSES`, and ``0`` for "other" (void);
* the instance PNGs (``annotations_instance``) store, in their red channel, an id
  ``1..100`` of the instance-challenge classes; :data:`ADE20K_INSTANCE_TO_SEMANTIC` maps it
  to the SceneParsing class;
* the panoptic JSON built by :mod:`lightning_seg.data.ade20k_panoptic_conversion` (the
  layout of Mask2Former's ADE20K panoptic preparation) uses category ids ``0..149`` =
  SceneParsing class - 1. The 100 classes that have instance annotations are things, the
  other 50 are stuff.

Names are the first synonym of each class in the challenge's ``objectInfo150`` table, with
multi-word names written out (e.g. ``"chest of drawers"``).
"""

from __future__ import annotations

import colorsys
from typing import Any

ADE20K_150_CLASSES: list[str] = [
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane",
    "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant",
    "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror",
    "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
    "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television", "airplane", "dirt track", "apparel",
    "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage",
    "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike",
    "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot",
    "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate",
    "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
]  # fmt: skip
"""The 150 SceneParsing classes; ``ADE20K_150_CLASSES[i]`` is annotation value ``i + 1``."""

_INSTANCE_CLASS_SEMANTIC_IDS: tuple[int, ...] = (
    8, 9, 11, 13, 15, 16, 19, 20, 21, 23, 24, 25, 28, 31, 32, 33,
    34, 36, 37, 38, 39, 40, 42, 43, 44, 45, 46, 48, 50, 51, 54, 56,
    57, 58, 59, 63, 65, 66, 67, 68, 70, 71, 72, 73, 74, 75, 76, 77,
    79, 81, 82, 83, 84, 86, 87, 88, 89, 90, 91, 93, 94, 96, 98, 99,
    103, 104, 105, 108, 109, 111, 112, 113, 116, 117, 119, 120, 121, 122, 124, 125,
    126, 127, 128, 130, 131, 133, 134, 135, 136, 137, 138, 139, 140, 143, 144, 145,
    147, 148, 149, 150,
)  # fmt: skip

ADE20K_INSTANCE_TO_SEMANTIC: dict[int, int] = {
    k + 1: sem for k, sem in enumerate(_INSTANCE_CLASS_SEMANTIC_IDS)
}
"""Instance-challenge class id (red channel of the instance PNGs, ``1..100``) to
SceneParsing class id (``1..150``), as in the challenge's category mapping table."""

ADE20K_THING_CLASS_IDS: frozenset[int] = frozenset(_INSTANCE_CLASS_SEMANTIC_IDS)
"""SceneParsing class ids (``1..150``) of the 100 thing classes; the other 50 are stuff."""


def _ade20k_colors(n: int) -> list[list[int]]:
    """``n`` distinct, reproducible RGB colours for overlays (hue walk with 3 brightness levels)."""
    colors = []
    for i in range(n):
        hue = (i * 0.381966011250105) % 1.0
        sat = 0.55 + 0.45 * ((i // 2) % 2)
        val = (1.0, 0.8, 0.6)[i % 3]
        r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
        colors.append([round(r * 255), round(g * 255), round(b * 255)])
    return colors


ADE20K_150_COLORS: list[list[int]] = _ade20k_colors(len(ADE20K_150_CLASSES))
"""One RGB colour per SceneParsing class, for overlays and panoptic PNG colours."""

ADE20K_PANOPTIC_CATEGORIES: list[dict[str, Any]] = [
    {
        "id": i,
        "name": name,
        "isthing": int(i + 1 in ADE20K_THING_CLASS_IDS),
        "color": ADE20K_150_COLORS[i],
        "supercategory": "thing" if i + 1 in ADE20K_THING_CLASS_IDS else "stuff",
    }
    for i, name in enumerate(ADE20K_150_CLASSES)
]
"""COCO panoptic ``categories`` of ADE20K panoptic: ids ``0..149`` (SceneParsing id - 1),
100 things and 50 stuff, the convention of Mask2Former's ADE20K panoptic JSON."""

"""ADE20K class tables and the SceneParsing + instance -> COCO panoptic conversion.

The conversion runs on a tiny handcrafted ``ADEChallengeData2016`` tree whose expected
segments (areas, boxes, categories) are worked out by hand below.
"""

from __future__ import annotations

import csv
import json
import runpy
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lightning_seg.data.ade20k_categories import (
    ADE20K_150_CLASSES,
    ADE20K_150_COLORS,
    ADE20K_INSTANCE_TO_SEMANTIC,
    ADE20K_PANOPTIC_CATEGORIES,
    ADE20K_THING_CLASS_IDS,
)
from lightning_seg.data.ade20k_panoptic_conversion import (
    convert_ade20k_split,
    panoptic_from_ade20k_arrays,
    prepare_ade20k_panoptic,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

# The 50 stuff classes of the ADE20K panoptic benchmark (every class without instance
# annotations), written out by name as an independent check of the id table.
EXPECTED_STUFF = {
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "grass", "sidewalk",
    "earth", "mountain", "plant", "water", "house", "sea", "rug", "field", "rock", "base",
    "sand", "skyscraper", "grandstand", "path", "runway", "stairway", "river", "bridge",
    "blind", "hill", "bar", "hovel", "tower", "dirt track", "land", "escalator", "buffet",
    "poster", "stage", "conveyer belt", "canopy", "swimming pool", "waterfall", "tent",
    "cradle", "tank", "lake", "blanket", "pier", "crt screen", "shower",
}  # fmt: skip

# Semantic class ids (1-based) used in the fake tree.
WALL, SKY, FLOOR, ROAD, BED, GRASS, PERSON, CHAIR, CAR = 1, 3, 4, 7, 8, 10, 13, 20, 21
# Instance-challenge class ids (red channel) of the same things.
INST_BED, INST_PERSON, INST_CAR = 1, 4, 9


# --------------------------------------------------------------------------------------
# class tables


def test_150_class_names_follow_object_info_order(shared_data):
    rows = list(csv.DictReader(open(shared_data / "ade20k_sceneparsing_sample/objectInfo150.csv")))
    assert len(rows) == len(ADE20K_150_CLASSES) == 150
    for row, name in zip(rows, ADE20K_150_CLASSES):
        synonyms = row["Name"].split(";")
        # The first word is the table's first synonym; every word of the name is in the entry.
        assert name.split()[0] == synonyms[0], (row["Idx"], name)
        assert set(name.split()) <= set(synonyms), (row["Idx"], name)
    assert len(set(ADE20K_150_CLASSES)) == 150


def test_panoptic_categories_have_100_things_and_50_stuff():
    cats = ADE20K_PANOPTIC_CATEGORIES
    assert [c["id"] for c in cats] == list(range(150))
    assert [c["name"] for c in cats] == ADE20K_150_CLASSES
    assert sum(c["isthing"] for c in cats) == 100
    assert {c["name"] for c in cats if not c["isthing"]} == EXPECTED_STUFF
    assert {c["id"] + 1 for c in cats if c["isthing"]} == set(ADE20K_THING_CLASS_IDS)
    assert sorted(ADE20K_INSTANCE_TO_SEMANTIC) == list(range(1, 101))
    assert len(set(ADE20K_INSTANCE_TO_SEMANTIC.values())) == 100
    for inst, name in [(1, "bed"), (4, "person"), (9, "car"), (100, "flag")]:
        assert ADE20K_150_CLASSES[ADE20K_INSTANCE_TO_SEMANTIC[inst] - 1] == name
    assert len({tuple(c) for c in ADE20K_150_COLORS}) == 150
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in ADE20K_150_COLORS)


# --------------------------------------------------------------------------------------
# fake ADEChallengeData2016 tree


def _image_a() -> tuple[np.ndarray, np.ndarray]:
    """6x8 image: sky / wall / floor stuff, two persons, a bed, void from 'other' and a chair."""
    sem = np.zeros((6, 8), np.uint8)
    sem[0:2, :] = SKY
    sem[2:6, 0:4] = WALL
    sem[2:6, 4:8] = FLOOR
    sem[3:5, 1:3] = PERSON
    sem[5, 0] = PERSON
    sem[4:6, 5:8] = BED
    sem[0, 0] = 0  # "other" -> void
    sem[2, 7] = CHAIR  # a thing class with no instance -> void
    inst = np.zeros((6, 8, 3), np.uint8)
    inst[3:5, 1:3] = (INST_PERSON, 1, 0)
    inst[2, 1] = (INST_PERSON, 1, 0)  # the instance spills onto the wall: the thing wins
    inst[5, 0] = (INST_PERSON, 2, 0)
    inst[4:6, 5:8] = (INST_BED, 3, 0)
    return sem, inst


# (category id 0..149, isthing, area, bbox) of every segment of image A, by hand.
EXPECTED_A = sorted(
    [
        (SKY - 1, 0, 15, [0, 0, 8, 2]),
        (WALL - 1, 0, 10, [0, 2, 4, 4]),
        (FLOOR - 1, 0, 9, [4, 2, 4, 4]),
        (PERSON - 1, 1, 5, [1, 2, 2, 3]),
        (PERSON - 1, 1, 1, [0, 5, 1, 1]),
        (BED - 1, 1, 6, [5, 4, 3, 2]),
    ]
)


def _image_b() -> tuple[np.ndarray, np.ndarray]:
    """5x4 image: the grass is entirely covered by a car, so grass has no segment."""
    sem = np.full((5, 4), ROAD, np.uint8)
    sem[0:3] = GRASS
    inst = np.zeros((5, 4, 3), np.uint8)
    inst[0:3] = (INST_CAR, 7, 0)
    return sem, inst


EXPECTED_B = sorted([(ROAD - 1, 0, 8, [0, 3, 4, 2]), (CAR - 1, 1, 12, [0, 0, 4, 3])])


def _write(root: Path, folder: str, stem: str, sem: np.ndarray, inst: np.ndarray) -> None:
    for sub in ("images", "annotations", "annotations_instance"):
        (root / sub / folder).mkdir(parents=True, exist_ok=True)
    h, w = sem.shape
    Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(
        root / "images" / folder / f"{stem}.jpg"
    )
    Image.fromarray(sem).save(root / "annotations" / folder / f"{stem}.png")
    Image.fromarray(inst).save(root / "annotations_instance" / folder / f"{stem}.png")


@pytest.fixture()
def ade_root(tmp_path) -> Path:
    root = tmp_path / "ADEChallengeData2016"
    _write(root, "validation", "ADE_val_00000001", *_image_a())
    _write(root, "validation", "ADE_val_00000002", *_image_b())
    _write(root, "training", "ADE_train_00000001", *_image_b())
    return root


def _decode(path: Path) -> np.ndarray:
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def _check_against_pixels(root: Path, split: str, ann: dict) -> list[tuple]:
    """Measure every segment on the written PNG; return (category, isthing, area, bbox)."""
    cats = {c["id"]: c for c in ADE20K_PANOPTIC_CATEGORIES}
    ids = _decode(root / f"ade20k_panoptic_{split}" / ann["file_name"])
    assert {s["id"] for s in ann["segments_info"]} == set(np.unique(ids).tolist()) - {0}
    found = []
    for seg in ann["segments_info"]:
        ys, xs = np.nonzero(ids == seg["id"])
        bbox = [
            int(xs.min()),
            int(ys.min()),
            int(xs.max() - xs.min() + 1),
            int(ys.max() - ys.min() + 1),
        ]
        assert seg["area"] == len(ys) and seg["bbox"] == bbox
        assert seg["iscrowd"] == 0
        found.append(
            (seg["category_id"], cats[seg["category_id"]]["isthing"], seg["area"], seg["bbox"])
        )
    return sorted(found)


def test_conversion_matches_handcrafted_segments(ade_root):
    out = prepare_ade20k_panoptic(ade_root)
    assert out == {
        "train": ade_root / "ade20k_panoptic_train.json",
        "val": ade_root / "ade20k_panoptic_val.json",
    }
    doc = json.loads(out["val"].read_text())
    assert doc["categories"] == ADE20K_PANOPTIC_CATEGORIES
    assert doc["images"] == [
        {"id": "ADE_val_00000001", "file_name": "ADE_val_00000001.jpg", "width": 8, "height": 6},
        {"id": "ADE_val_00000002", "file_name": "ADE_val_00000002.jpg", "width": 4, "height": 5},
    ]
    ann_a, ann_b = doc["annotations"]
    assert (ann_a["image_id"], ann_a["file_name"]) == ("ADE_val_00000001", "ADE_val_00000001.png")
    assert _check_against_pixels(ade_root, "val", ann_a) == EXPECTED_A
    assert _check_against_pixels(ade_root, "val", ann_b) == EXPECTED_B

    ids_a = _decode(ade_root / "ade20k_panoptic_val/ADE_val_00000001.png")
    assert (ids_a == 0).sum() == 2 and ids_a[0, 0] == 0 and ids_a[2, 7] == 0

    train = json.loads(out["train"].read_text())
    assert [im["id"] for im in train["images"]] == ["ADE_train_00000001"]
    assert _check_against_pixels(ade_root, "train", train["annotations"][0]) == EXPECTED_B


def test_conversion_is_deterministic_and_workers_agree(ade_root, tmp_path):
    first = convert_ade20k_split(ade_root, "val").read_bytes()
    png = (ade_root / "ade20k_panoptic_val/ADE_val_00000001.png").read_bytes()
    again = convert_ade20k_split(ade_root, "val", workers=2).read_bytes()
    assert first == again
    assert png == (ade_root / "ade20k_panoptic_val/ADE_val_00000001.png").read_bytes()


def test_segment_ids_are_unique_nonzero_and_encode_in_rgb():
    sem, inst = _image_a()
    ids, segs = panoptic_from_ade20k_arrays(sem, inst, where="a")
    seg_ids = [s["id"] for s in segs]
    assert len(set(seg_ids)) == len(seg_ids) == 6
    assert all(0 < s < 256**3 for s in seg_ids)
    assert ids.dtype == np.int64 and ids.shape == (6, 8)


def test_script_runs_on_the_fake_tree(ade_root, capsys):
    script = runpy.run_path(
        str(REPO_ROOT / "scripts/prepare_ade20k_panoptic.py"), run_name="prepare"
    )
    assert script["main"]([str(ade_root), "--splits", "val", "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(ade_root / "ade20k_panoptic_val.json")
    doc = json.loads((ade_root / "ade20k_panoptic_val.json").read_text())
    assert _check_against_pixels(ade_root, "val", doc["annotations"][0]) == EXPECTED_A
    assert not (ade_root / "ade20k_panoptic_train.json").exists()


def _reference_partition(sem: np.ndarray, inst: np.ndarray) -> set[tuple[int, frozenset]]:
    """Pixel-by-pixel statement of the rules: an instance pixel is its thing, else a stuff
    class of the semantic map is its stuff segment, else void. Returns (category, pixels)."""
    groups: dict[tuple, set] = {}
    for y in range(sem.shape[0]):
        for x in range(sem.shape[1]):
            cls, iid = int(inst[y, x, 0]), int(inst[y, x, 1])
            if iid:
                key = ("thing", iid, ADE20K_INSTANCE_TO_SEMANTIC[cls] - 1)
            elif sem[y, x] and int(sem[y, x]) not in ADE20K_THING_CLASS_IDS:
                key = ("stuff", 0, int(sem[y, x]) - 1)
            else:
                continue
            groups.setdefault(key, set()).add((y, x))
    return {(key[2], frozenset(px)) for key, px in groups.items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_maps_match_a_pixel_loop_reference(seed):
    rng = np.random.default_rng(seed)
    h, w = 23, 31
    # Blocky semantic map over a mix of stuff, thing and "other" classes.
    classes = np.array([0, WALL, SKY, FLOOR, GRASS, PERSON, BED, CHAIR, 150])
    sem = (
        classes[rng.integers(0, len(classes), (5, 6))]
        .repeat(5, 0)
        .repeat(6, 1)[:h, :w]
        .astype(np.uint8)
    )
    inst = np.zeros((h, w, 3), np.uint8)
    for iid in range(1, 7):
        y0, x0 = rng.integers(0, h - 3), rng.integers(0, w - 3)
        inst[y0 : y0 + rng.integers(2, 9), x0 : x0 + rng.integers(2, 9)] = (
            rng.integers(1, 101),
            iid,
            0,
        )
    ids, segs = panoptic_from_ade20k_arrays(sem, inst, where=f"random-{seed}")
    ours = {(s["category_id"], frozenset(zip(*np.nonzero(ids == s["id"])))) for s in segs}
    ours = {(c, frozenset((int(y), int(x)) for y, x in px)) for c, px in ours}
    assert ours == _reference_partition(sem, inst)
    for s in segs:
        ys, xs = np.nonzero(ids == s["id"])
        assert s["area"] == len(ys)
        assert s["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


def test_output_reads_back_through_the_coco_panoptic_dataset(ade_root):
    """The prepared files pass the framework's COCO panoptic reader (string image ids)."""
    from lightning_seg.data import CocoPanopticDataset
    from lightning_seg.structures import IGNORE_INDEX, check_sample

    prepare_ade20k_panoptic(ade_root, splits=["val"])
    dataset = CocoPanopticDataset(
        ade_root / "ade20k_panoptic_val.json",
        ade_root / "images/validation",
        ade_root / "ade20k_panoptic_val",
    )
    assert dataset.metadata.num_classes == 150 and len(dataset.metadata.thing_ids) == 100
    sample = dataset[0]
    check_sample(sample, num_classes=150, where="ADE_val_00000001")
    assert sample["image_id"] == "ADE_val_00000001"
    got = sorted(
        (int(lab), bool(th), int(m.sum()))
        for lab, th, m in zip(sample["labels"], sample["is_thing"], sample["masks"])
    )
    assert got == sorted((c, bool(t), a) for c, t, a, _ in EXPECTED_A)
    assert int((sample["semantic"] == IGNORE_INDEX).sum()) == 2


def test_real_sceneparsing_annotations_give_their_stuff_segments(shared_data, tmp_path):
    """Real ADE20K validation annotations with empty instance PNGs: every stuff class becomes
    one segment with exactly its semantic pixel count, and every thing-class pixel is void."""
    sample = shared_data / "ade20k_sceneparsing_sample/sampleData"
    root = tmp_path / "ADEChallengeData2016"
    for sub in ("images", "annotations", "annotations_instance"):
        (root / sub / "validation").mkdir(parents=True)
    for image in sorted((sample / "images").glob("*.jpg")):
        (root / "images/validation" / image.name).symlink_to(image)
        (root / "annotations/validation" / f"{image.stem}.png").symlink_to(
            sample / "annotations" / f"{image.stem}.png"
        )
        h, w = np.asarray(Image.open(sample / "annotations" / f"{image.stem}.png")).shape
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(
            root / "annotations_instance/validation" / f"{image.stem}.png"
        )
    doc = json.loads(convert_ade20k_split(root, "val").read_text())
    assert [im["id"] for im in doc["images"]] == [
        "ADE_val_00000001",
        "ADE_val_00000002",
        "ADE_val_00000003",
    ]
    for im, ann in zip(doc["images"], doc["annotations"]):
        sem = np.asarray(Image.open(sample / "annotations" / f"{im['id']}.png"))
        assert (im["height"], im["width"]) == sem.shape
        expected = {
            int(v) - 1: int((sem == v).sum())
            for v in np.unique(sem)
            if v and int(v) not in ADE20K_THING_CLASS_IDS
        }
        assert {s["category_id"]: s["area"] for s in ann["segments_info"]} == expected
        assert len(ann["segments_info"]) == len(expected)
        ids = _decode(root / "ade20k_panoptic_val" / ann["file_name"])
        void = (sem == 0) | np.isin(sem, list(ADE20K_THING_CLASS_IDS))
        assert np.array_equal(ids == 0, void)
        _check_against_pixels(root, "val", ann)


# --------------------------------------------------------------------------------------
# errors


def test_missing_instance_png_names_the_file(ade_root):
    missing = ade_root / "annotations_instance/validation/ADE_val_00000002.png"
    missing.unlink()
    with pytest.raises(FileNotFoundError, match="ADE_val_00000002.png"):
        convert_ade20k_split(ade_root, "val")
    assert not (ade_root / "ade20k_panoptic_val.json").exists()


def test_missing_semantic_png_names_the_file(ade_root):
    (ade_root / "annotations/training/ADE_train_00000001.png").unlink()
    with pytest.raises(FileNotFoundError, match="annotations/training/ADE_train_00000001.png"):
        convert_ade20k_split(ade_root, "train")


def test_size_mismatch_names_the_file(ade_root):
    sem, inst = _image_b()
    Image.fromarray(np.pad(inst, ((0, 1), (0, 0), (0, 0)))).save(
        ade_root / "annotations_instance/training/ADE_train_00000001.png"
    )
    with pytest.raises(
        ValueError, match=r"annotations_instance/training/ADE_train_00000001.png.*6x4.*5x4"
    ):
        convert_ade20k_split(ade_root, "train")


def test_semantic_size_mismatch_names_the_file(ade_root):
    Image.fromarray(np.zeros((5, 3), np.uint8)).save(
        ade_root / "annotations/training/ADE_train_00000001.png"
    )
    with pytest.raises(ValueError, match=r"annotations/training/ADE_train_00000001.png.*5x3"):
        convert_ade20k_split(ade_root, "train")


def test_missing_folder_and_bad_split(tmp_path):
    with pytest.raises(FileNotFoundError, match="images/validation"):
        convert_ade20k_split(tmp_path, "val")
    with pytest.raises(ValueError, match="split"):
        convert_ade20k_split(tmp_path, "test")


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda sem, inst: sem.__setitem__((0, 0), 151), r"semantic values \[151\]"),
        (lambda sem, inst: inst.__setitem__((0, 3), (101, 9, 0)), "instance class 101"),
        (lambda sem, inst: inst.__setitem__((0, 3), (0, 9, 0)), "instance class 0"),
        (lambda sem, inst: inst.__setitem__((4, 6), (INST_PERSON, 3, 0)), "instance id 3 spans"),
    ],
)
def test_invalid_values_raise_naming_the_image(edit, message):
    sem, inst = _image_a()
    edit(sem, inst)
    with pytest.raises(ValueError, match=message) as err:
        panoptic_from_ade20k_arrays(sem, inst, where="ADE_val_00000001.png")
    assert "ADE_val_00000001.png" in str(err.value)

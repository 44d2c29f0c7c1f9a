"""Prediction files in the formats ``lightning-seg evaluate`` reads, plus colour overlays.

* panoptic: ``panoptic.json`` + ``panoptic/<image_id>.png`` (a COCO panoptic submission);
* instance: ``instances_results.json`` (COCO results: RLE ``segmentation``, ``bbox``, ``score``);
* semantic: ``semantic/<image_id>.png`` class maps encoded like the dataset's own ground truth
  (contiguous ids, shifted by one with void as 0 under ADE20K's ``reduce_zero_label``);
* segments (classic methods): ``segments/<image_id>.png``, the unlabelled segment id ``+ 1``
  encoded as a COCO panoptic id (``R + 256 G + 256^2 B``), 0 where no segment is;
* ``overlays/<image_id>.png`` for looking at the predictions.

PNGs are written as the batches come; the JSON entries are kept per process and written at the
end (:meth:`PredictionFiles.finish`). Under DDP each rank writes a part file and rank 0 merges
them (:meth:`PredictionFiles.merge_parts`). :class:`lightning_seg.callbacks.PredictionWriter`
drives this from ``lightning-seg predict``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image

from lightning_seg.evaluation.coco_results import instance_prediction_to_coco_results
from lightning_seg.evaluation.panoptic_io import file_stem, prediction_to_coco_panoptic, write_id_png
from lightning_seg.evaluation.semantic_io import write_class_png
from lightning_seg.structures import Batch, DatasetMetadata
from lightning_seg.visualization import prediction_overlay

JSON_NAMES = {"panoptic": "panoptic.json", "instance": "instances_results.json"}


class PredictionFiles:
    """Accumulates and writes the predictions of one pass over a dataset.

    Args:
        out_dir: output folder.
        metadata: the dataset's classes (maps contiguous ids to category ids); when None,
            category ids are the contiguous ids.
        num_classes: ``K`` (used when ``metadata`` is None).
        reduce_zero_label: write semantic maps as ``id + 1`` with void 0 (ADE20K's files).
        overlays: also write colour overlays.
    """

    def __init__(
        self,
        out_dir: Path,
        metadata: DatasetMetadata | None,
        num_classes: int,
        reduce_zero_label: bool = False,
        overlays: bool = True,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.reduce_zero_label = reduce_zero_label
        self.metadata = metadata or DatasetMetadata([f"class_{i}" for i in range(num_classes)])
        self.overlays = overlays
        self.entries: dict[str, list[dict[str, Any]]] = {"panoptic": [], "instance": []}
        self.kinds: set[str] = set()

    def write_batch(self, batch: Batch, preds: dict[str, list]) -> None:
        """Write the PNGs of one batch and keep its JSON entries."""
        self.kinds |= set(preds) & set(JSON_NAMES)
        for kind in ("panoptic", "semantic", "segments", "overlays"):
            if kind in preds or (kind == "overlays" and self.overlays):
                (self.out_dir / kind).mkdir(parents=True, exist_ok=True)
        for i, t in enumerate(batch["targets"]):
            image_id, stem = t["image_id"], file_stem(t["image_id"])
            if "panoptic" in preds:
                rgb, ann = prediction_to_coco_panoptic(preds["panoptic"][i], image_id, f"{stem}.png", self.metadata)
                Image.fromarray(rgb).save(self.out_dir / "panoptic" / ann["file_name"])
                self.entries["panoptic"].append(ann)
            if "instance" in preds:
                self.entries["instance"] += instance_prediction_to_coco_results(
                    preds["instance"][i], image_id, self.metadata, with_boxes=True
                )
            if "semantic" in preds:
                write_class_png(self.out_dir / "semantic" / f"{stem}.png", preds["semantic"][i],
                                reduce_zero_label=self.reduce_zero_label)
            if "segments" in preds:
                write_id_png(self.out_dir / "segments" / f"{stem}.png", preds["segments"][i] + 1)
            if self.overlays:
                overlay = prediction_overlay(batch["images"][i], t["image_size"],
                                             {k: v[i] for k, v in preds.items()}, self.metadata.colors)
                Image.fromarray(overlay).save(self.out_dir / "overlays" / f"{stem}.png")

    def finish(self, rank: int = 0, world_size: int = 1) -> None:
        """Write this process's JSON entries (a part file per rank when ``world_size > 1``)."""
        for kind in sorted(self.kinds):
            entries = self.entries[kind]
            name = JSON_NAMES[kind]
            path = self.out_dir / (name if world_size == 1 else f"{name}.part{rank}")
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w") as f:
                json.dump(self._document(kind, entries), f)

    def _document(self, kind: str, entries: list[dict[str, Any]]) -> Any:
        if kind == "panoptic":
            return {"annotations": entries, "categories": self.metadata.to_coco_categories()}
        return entries

    @staticmethod
    def merge_parts(out_dir: Path, world_size: int) -> None:
        """On rank 0 after a barrier: join the part files of every rank into the final JSONs."""
        for kind, name in JSON_NAMES.items():
            parts = [Path(out_dir) / f"{name}.part{r}" for r in range(world_size)]
            if not any(p.is_file() for p in parts):
                continue
            docs = [json.loads(p.read_text()) for p in parts if p.is_file()]
            if kind == "panoptic":
                merged: Any = {"annotations": [a for d in docs for a in d["annotations"]], "categories": docs[0]["categories"]}
            else:
                merged = [e for d in docs for e in d]
            (Path(out_dir) / name).write_text(json.dumps(merged))
            for p in parts:
                p.unlink(missing_ok=True)


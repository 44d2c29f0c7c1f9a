"""Write ``predict`` outputs in the formats ``lightning-seg evaluate`` reads, plus colour overlays.

* panoptic: ``panoptic.json`` + ``panoptic/<image_id>.png`` (a COCO panoptic submission);
* instance: ``instances_results.json`` (COCO results: RLE ``segmentation``, ``bbox``, ``score``);
* semantic: ``semantic/<image_id>.png`` class maps encoded like the dataset's own ground truth
  (contiguous ids, shifted by one with void as 0 under ADE20K's ``reduce_zero_label``);
* ``overlays/<image_id>.png`` for looking at the predictions.

PNGs are written as the batches come; the JSON entries are kept per process and written at the
end of the epoch. Under DDP each rank writes a part file and rank 0 merges them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from lightning_seg.evaluation.panoptic_io import prediction_to_coco_panoptic
from lightning_seg.evaluation.semantic_io import write_class_png
from lightning_seg.metrics.rle import masks_to_coco_rles
from lightning_seg.structures import Batch, DatasetMetadata
from lightning_seg.visualization import overlay_panoptic, overlay_semantic, valid_image

JSON_NAMES = {"panoptic": "panoptic.json", "instance": "instances_results.json"}


def _stem(image_id: Any) -> str:
    return f"{image_id:012d}" if isinstance(image_id, int) else str(image_id)


class PredictionWriter:
    """Accumulates and writes one prediction epoch.

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
        ov_dir = self.out_dir / "overlays"
        if self.overlays:
            ov_dir.mkdir(parents=True, exist_ok=True)
        for i, t in enumerate(batch["targets"]):
            image_id, stem = t["image_id"], _stem(t["image_id"])
            if "panoptic" in preds:
                p = preds["panoptic"][i]
                (self.out_dir / "panoptic").mkdir(parents=True, exist_ok=True)
                rgb, ann = prediction_to_coco_panoptic(p, image_id, f"{stem}.png", self.metadata)
                Image.fromarray(rgb).save(self.out_dir / "panoptic" / ann["file_name"])
                self.entries["panoptic"].append(ann)
                if self.overlays:
                    labels = {int(s["id"]): int(s["category_id"]) for s in p["segments_info"]}
                    img = valid_image(batch["images"][i], t["image_size"], p["panoptic_seg"].shape)
                    Image.fromarray(overlay_panoptic(img, p["panoptic_seg"], labels, self.metadata.colors)).save(
                        ov_dir / f"{stem}.png"
                    )
            if "instance" in preds:
                p = preds["instance"][i]
                rles = masks_to_coco_rles(p["masks"])
                boxes = _boxes(p["masks"])
                for rle, label, score, box in zip(rles, p["labels"].tolist(), p["scores"].tolist(), boxes):
                    self.entries["instance"].append(
                        {
                            "image_id": image_id,
                            "category_id": self.metadata.category_ids[label],
                            "segmentation": rle,
                            "bbox": box,
                            "score": float(score),
                        }
                    )
            if "semantic" in preds:
                sem = preds["semantic"][i]
                (self.out_dir / "semantic").mkdir(parents=True, exist_ok=True)
                write_class_png(self.out_dir / "semantic" / f"{stem}.png", sem, reduce_zero_label=self.reduce_zero_label)
                if self.overlays and "panoptic" not in preds:
                    img = valid_image(batch["images"][i], t["image_size"], sem.shape)
                    Image.fromarray(overlay_semantic(img, sem, self.metadata.colors)).save(ov_dir / f"{stem}.png")

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


def _boxes(masks: torch.Tensor) -> list[list[float]]:
    """COCO ``[x, y, w, h]`` boxes of bool ``[M,H,W]`` masks (zeros for empty masks)."""
    if masks.shape[0] == 0:
        return []
    rows = masks.any(2)
    cols = masks.any(1)
    h, w = masks.shape[-2:]
    ar_h = torch.arange(h, device=masks.device)
    ar_w = torch.arange(w, device=masks.device)
    y0 = torch.where(rows, ar_h, h).min(1).values
    y1 = torch.where(rows, ar_h, -1).max(1).values
    x0 = torch.where(cols, ar_w, w).min(1).values
    x1 = torch.where(cols, ar_w, -1).max(1).values
    empty = ~rows.any(1)
    box = torch.stack([x0, y0, x1 - x0 + 1, y1 - y0 + 1], 1).float()
    box[empty] = 0
    return box.cpu().tolist()

"""One contract test over every registered architecture (segmentation_models_pytorch's pattern).

Each architecture joins with one line in ``CASES``: the task that trains it and tiny arguments.
Every case is checked for its family's output contract at odd image sizes, predictions of
every kind the task produces, a batch of one, images without targets, gradients reaching every
trainable parameter, and identical eval outputs after a ``state_dict`` round trip;
``torch.compile`` runs are ``slow``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
import torch

from lightning_seg.models import list_models, model_entry
from lightning_seg.models.dense_instance import GridOutputs, YOLACTOutputs
from lightning_seg.models.rcnn import PanopticOutputs
from lightning_seg.structures import collate
from lightning_seg.tasks import (
    DenseInstanceModule,
    DETRModule,
    MaskClassificationModule,
    MaXDeepLabModule,
    RCNNModule,
    SemanticSegmentationModule,
)

K = 4
THINGS = [0, 1]
_M2F = dict(backbone="resnet10t", conv_dim=16, mask_dim=16, enc_layers=1, num_queries=6, hidden_dim=16, nheads=2,
            dim_feedforward=32, num_decoder_layers=2, num_points=64, object_mask_threshold=0.0)
_UNET = dict(decoder_channels=[16, 16, 8, 8, 8])
_RCNN = dict(backbone="resnet10t", backbone_source="timm", fpn_channels=16,
             rpn=dict(pre_nms_topk_train=200, post_nms_topk_train=40, pre_nms_topk_test=100, post_nms_topk_test=40),
             roi_heads=dict(batch_size_per_image=32, box_head_dim=32, mask_head_dims=[8, 8], score_threshold=0.0,
                            detections_per_image=10))
_DENSE = dict(backbone="resnet10t", backbone_source="timm", fpn_channels=16)
# permissive thresholds so that random weights still give candidates through every inference step
_SOLO = dict(head_channels=16, head_convs=2, mask_feature_channels=8, kernel_channels=8, score_threshold=0.0,
             mask_threshold=0.0, update_threshold=0.0, pre_nms_topk=50, max_detections=10)
_MAX = dict(backbone="resnet10t", num_slots=6, memory_dim=16, pixel_dims=[16, 8, 8], num_heads=2, dim_feedforward=32,
            embed_dim=8, head_channels=8, sample_k=64, class_threshold=0.0, pixel_threshold=0.0, thing_area=0,
            stuff_area=0)
_YOLACT = dict(head_channels=16, num_prototypes=8, proto_channels=16, score_threshold=0.0, max_detections=10)

# case id -> (task class, task arguments); the registered model name is the ``model`` argument.
CASES: dict[str, tuple[type, dict[str, Any]]] = {
    "fcn": (SemanticSegmentationModule, dict(model="fcn", backbone="resnet10t", aux_weight=0.4)),
    "fcn8s": (SemanticSegmentationModule, dict(model="fcn", backbone="resnet10t", output_stride=32,
                                               model_kwargs=dict(skip_stages=2))),
    "unet": (SemanticSegmentationModule, dict(model="unet", backbone="resnet10t", model_kwargs=_UNET)),
    "unet_plain": (SemanticSegmentationModule, dict(model="unet", backbone_source="plain", model_kwargs=dict(
        plain_widths=[8, 16, 32], upsampling="transposed"))),
    "deeplabv3": (SemanticSegmentationModule, dict(model="deeplabv3", backbone="resnet10t", aux_weight=0.4,
                                                   model_kwargs=dict(aspp_channels=16))),
    "deeplabv3plus": (SemanticSegmentationModule, dict(model="deeplabv3plus", backbone="resnet10t", model_kwargs=dict(
        aspp_channels=16, low_level_channels=8, aspp_separable=True))),
    "semantic_fpn": (SemanticSegmentationModule, dict(model="semantic_fpn", backbone="resnet10t", model_kwargs=dict(
        fpn_channels=16, head_channels=8))),
    "maskformer": (MaskClassificationModule, dict(model="maskformer", **_M2F)),
    "mask2former": (MaskClassificationModule, dict(model="mask2former", **_M2F)),
    "mask2former_fpn": (MaskClassificationModule, dict(model="mask2former", pixel_decoder="fpn", pre_norm=True, **_M2F)),
    "mask2former_instance": (MaskClassificationModule, dict(model="mask2former", task="instance", **_M2F)),
    "mask2former_swin": (MaskClassificationModule, dict(model="mask2former", **{**_M2F, "backbone": "swin_tiny_patch4_window7_224"},
                                                        backbone_kwargs=dict(strict_img_size=False, embed_dim=16, depths=(1, 1, 1, 1),
                                                                             num_heads=(1, 1, 2, 2)))),
    "mask_rcnn": (RCNNModule, dict(model="mask_rcnn", **_RCNN)),
    "mask_rcnn_4conv1fc_agnostic": (RCNNModule, dict(model="mask_rcnn", **{**_RCNN, "fpn_norm": "GN", "roi_heads": dict(
        _RCNN["roi_heads"], box_head_convs=2, box_head_conv_dim=8, box_head_fcs=1, box_head_norm="GN",
        class_agnostic_box=True, class_agnostic_mask=True, mask_head_norm="GN")})),
    "panoptic_fpn": (RCNNModule, dict(model="panoptic_fpn", panoptic=dict(semantic_channels=8, stuff_area_threshold=4,
                                                                          instance_score_threshold=0.0), **_RCNN)),
    "upsnet": (RCNNModule, dict(model="upsnet", panoptic=dict(semantic_channels=8, stuff_area_threshold=4,
                                                              instance_score_threshold=0.0), **_RCNN)),
    "upsnet_plain_uncertainty": (RCNNModule, dict(model="upsnet", panoptic=dict(
        semantic_channels=8, semantic_deformable=False, loss_weighting="uncertainty", instance_score_threshold=0.0),
        **_RCNN)),
    "solo": (DenseInstanceModule, dict(model="solo", solo=_SOLO, **_DENSE)),
    "solo_decoupled": (DenseInstanceModule, dict(model="solo", solo=dict(_SOLO, decoupled=True), **_DENSE)),
    "solov2": (DenseInstanceModule, dict(model="solov2", solo=_SOLO, **_DENSE)),
    "yolact": (DenseInstanceModule, dict(model="yolact", yolact=_YOLACT, **_DENSE)),
    "detr": (DETRModule, dict(model="detr", backbone="resnet10t", hidden_dim=32, nheads=8, enc_layers=1, dec_layers=2,
                              dim_feedforward=32, num_queries=6, score_threshold=0.0, min_segment_area=0)),
    "max_deeplab": (MaXDeepLabModule, dict(model="max_deeplab", **_MAX)),
    "max_deeplab_mask_average_no_aux": (MaXDeepLabModule, dict(model="max_deeplab", **{**_MAX, "sample_k": 0},
                                                               deep_supervision=False)),
}
# BatchNorm over the 1x1 image-pooling map of ASPP cannot train on one image (torch refuses it).
NO_TRAIN_BATCH_OF_ONE = {"deeplabv3", "deeplabv3plus"}


def test_every_registered_model_has_a_case():
    assert {args["model"] for _, args in CASES.values()} == set(list_models())


def build(case: str, seed: int = 0):
    cls, args = CASES[case]
    torch.manual_seed(seed)
    return cls(num_classes=K, thing_classes=THINGS, num_overlays=0, **args)


def sample(h: int, w: int, seed: int, segments: int = 3) -> dict[str, Any]:
    """An image with ``segments`` rectangles (the last one stuff), in the sample contract."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(segments, h, w, dtype=torch.bool)
    for i in range(segments):
        y0, x0 = int(torch.randint(0, h // 2, (1,), generator=g)), int(torch.randint(0, w // 2, (1,), generator=g))
        masks[i, y0 : y0 + h // 2, x0 : x0 + w // 2] = True
    for i in range(segments - 1, 0, -1):  # segments do not overlap: later ones are cut out of earlier ones
        masks[:i] &= ~masks[i]
    labels = torch.tensor([i % (K - 1) for i in range(segments - 1)] + [K - 1])[:segments]
    semantic = torch.full((h, w), 255, dtype=torch.int64)
    boxes = torch.zeros(segments, 4)
    for i, (m, c) in enumerate(zip(masks, labels)):
        semantic[m] = c
        ys, xs = torch.nonzero(m, as_tuple=True)
        if len(ys):
            boxes[i] = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
    return dict(image=torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g), masks=masks, labels=labels,
                iscrowd=torch.zeros(segments, dtype=torch.bool), is_thing=torch.tensor([int(c) in THINGS for c in labels], dtype=torch.bool),
                semantic=semantic, boxes=boxes, image_id=seed, orig_size=(h, w))


def batch(*sizes: tuple[int, int], segments: int = 3):
    return collate([sample(h, w, seed=i, segments=segments) for i, (h, w) in enumerate(sizes)], size_divisibility=1)


def raw_outputs(task, b: dict[str, Any]) -> Any:
    """The model's own outputs on a batch (R-CNN models also take the image sizes)."""
    if isinstance(task, RCNNModule):
        return task.model(b["images"], task.image_sizes(b))
    return task.model(b["images"])


def check_outputs(family: str, out: Any, b: int, h: int, w: int, queries: int) -> None:
    """The family's raw-output contract (see ``../shared/DESIGN.md``)."""
    if family == "rcnn" and isinstance(out, PanopticOutputs):
        c = out.semantic_logits.shape[1]
        assert tuple(out.semantic_logits.shape) == (b, c, math.ceil(h / 4), math.ceil(w / 4)) and c in (K, K - len(THINGS) + 1)
        assert torch.isfinite(out.semantic_logits).all() and out.padded_size == (h, w)
        if out.panoptic_logits is not None:
            assert out.panoptic_logits.shape[0] == b and out.panoptic_logits.shape[-2:] == out.semantic_logits.shape[-2:]
            assert torch.isfinite(out.panoptic_logits).all()
        check_outputs(family, out.detections, b, h, w, queries)
    elif family == "rcnn":
        d = out.boxes.shape[0]
        assert out.boxes.dtype == torch.float32 and out.boxes.shape == (d, 4) and torch.isfinite(out.boxes).all()
        assert (out.boxes[:, 0::2] <= w).all() and (out.boxes[:, 1::2] <= h).all() and (out.boxes >= 0).all()
        assert ((out.scores >= 0) & (out.scores <= 1)).all() and ((out.labels >= 0) & (out.labels < K)).all()
        assert out.counts.shape == (b,) and int(out.counts.sum()) == d and d > 0
        assert out.image_index.tolist() == sorted(out.image_index.tolist())
        assert out.mask_probs.shape == (d, 28, 28) and ((out.mask_probs >= 0) & (out.mask_probs <= 1)).all()
    elif family == "dense_instance" and isinstance(out, GridOutputs):
        assert out.padded_size == (h, w) and len(out.category_logits) == 5
        for level, cat in enumerate(out.category_logits):
            s = cat.shape[-1]
            assert tuple(cat.shape) == (b, K, s, s) and torch.isfinite(cat).all()
            m = out.mask_logits[level]
            channels = {"solo": s * s, "decoupled": 2 * s}.get(out.kind)
            if channels is None:  # SOLOv2: kernels on the grid, mask features at 1/4
                assert m.shape[:2] == (b, out.mask_features.shape[1]) and m.shape[-2:] == (s, s)
                assert tuple(out.mask_features.shape[-2:]) == (math.ceil(h / 4), math.ceil(w / 4))
            else:
                assert m.shape[:2] == (b, channels)
            assert torch.isfinite(m).all()
    elif family == "dense_instance":
        assert isinstance(out, YOLACTOutputs)
        a = out.anchors.shape[0]
        k = out.coefficients.shape[-1]
        assert out.class_logits.shape == (b, a, K + 1) and out.box_deltas.shape == (b, a, 4)
        assert out.coefficients.shape == (b, a, k) and (out.coefficients.abs() <= 1).all()
        assert tuple(out.prototypes.shape) == (b, k, 2 * math.ceil(h / 8), 2 * math.ceil(w / 8))
        assert (out.prototypes >= 0).all() and out.semantic_logits.shape[:2] == (b, K)
        assert all(torch.isfinite(t).all() for t in (out.class_logits, out.box_deltas, out.anchors))
    elif family == "detr":
        assert tuple(out["pred_logits"].shape) == (b, queries, K + 1) and tuple(out["pred_boxes"].shape) == (b, queries, 4)
        assert ((out["pred_boxes"] >= 0) & (out["pred_boxes"] <= 1)).all()
        assert tuple(out["pred_masks"].shape) == (b, queries, math.ceil(h / 4), math.ceil(w / 4))
        assert torch.isfinite(out["pred_logits"]).all() and torch.isfinite(out["pred_masks"]).all()
        assert len(out["aux_outputs"]) >= 1 and all(o["pred_boxes"].shape == (b, queries, 4) for o in out["aux_outputs"])
    elif family == "max_deeplab":
        assert tuple(out["semantic_logits"].shape) == (b, K, math.ceil(h / 4), math.ceil(w / 4))
        for o in [out, *out["aux_outputs"]]:
            assert tuple(o["pred_logits"].shape) == (b, queries, K + 1)
            assert tuple(o["pred_masks"].shape) == (b, queries, math.ceil(h / 4), math.ceil(w / 4))
            f = o["pixel_features"]
            assert f.shape[0] == b and f.shape[-2:] == o["pred_masks"].shape[-2:]
            torch.testing.assert_close(f.norm(dim=1), torch.ones_like(f[:, 0]))  # unit features
            assert torch.isfinite(o["pred_logits"]).all() and torch.isfinite(o["pred_masks"]).all()
    elif family == "per_pixel":
        maps = out.values() if isinstance(out, dict) else [out]
        for logits in maps:
            assert logits.dtype == torch.float32 and tuple(logits.shape) == (b, K, h, w)
            assert torch.isfinite(logits).all()
    else:
        layers = [out, *out["aux_outputs"]]
        assert len(out["aux_outputs"]) >= 1
        for o in layers:
            assert tuple(o["pred_logits"].shape) == (b, queries, K + 1)
            assert tuple(o["pred_masks"].shape) == (b, queries, math.ceil(h / 4), math.ceil(w / 4))
            assert torch.isfinite(o["pred_logits"]).all() and torch.isfinite(o["pred_masks"]).all()


def check_predictions(task, preds: dict[str, list], targets: list, key: str) -> None:
    """Every kind in the prediction contracts of ``lightning_seg.structures``, at the asked size."""
    assert set(preds) == set(task.eval_kinds)
    for kind, per_image in preds.items():
        assert len(per_image) == len(targets)
        for p, t in zip(per_image, targets):
            size = tuple(t[key])
            if kind == "semantic":
                assert p.dtype == torch.int64 and tuple(p.shape) == size
                assert ((p >= 0) & (p < K)).all()
            elif kind == "instance":
                m = p["masks"].shape[0]
                assert p["masks"].dtype == torch.bool and tuple(p["masks"].shape) == (m, *size)
                assert p["labels"].dtype == torch.int64 and p["labels"].shape == (m,)
                assert p["scores"].dtype == torch.float32 and p["scores"].shape == (m,)
                assert ((p["scores"] >= 0) & (p["scores"] <= 1)).all()
                if task.predicts_boxes:
                    assert p["boxes"].dtype == torch.float32 and p["boxes"].shape == (m, 4)
            else:
                seg = p["panoptic_seg"]
                assert seg.dtype == torch.int32 and tuple(seg.shape) == size
                ids = {s["id"] for s in p["segments_info"]}
                assert set(torch.unique(seg).tolist()) - {0} <= ids
                assert all(0 <= s["category_id"] < K for s in p["segments_info"])


def queries_of(case: str) -> int:
    return CASES[case][1].get("num_queries", CASES[case][1].get("num_slots", 0))


@pytest.mark.parametrize("case", CASES)
def test_outputs_and_predictions_at_odd_sizes(case):
    task = build(case).eval()
    family = model_entry(CASES[case][1]["model"]).family
    b = batch((37, 45), (30, 41))
    h, w = b["images"].shape[-2:]
    assert (h, w) == (37, 45)
    with torch.no_grad():
        check_outputs(family, raw_outputs(task, b), 2, h, w, queries_of(case))
        check_predictions(task, task.predict(b, at_original_size=False), b["targets"], "target_size")
        check_predictions(task, task.predict(b, at_original_size=True), b["targets"], "orig_size")


@pytest.mark.parametrize("case", CASES)
def test_batch_of_one(case):
    task = build(case)
    one = batch((33, 47))
    task.eval()
    with torch.no_grad():
        check_predictions(task, task.predict(one, at_original_size=True), one["targets"], "orig_size")
    task.train()
    if case in NO_TRAIN_BATCH_OF_ONE:
        with pytest.raises(ValueError, match="more than 1 value per channel"):
            task.compute_losses(one)
        return
    terms = task.compute_losses(one)
    assert terms and all(v.ndim == 0 and torch.isfinite(v) for v in terms.values())


@pytest.mark.parametrize("case", CASES)
def test_images_without_targets(case):
    task = build(case).train()
    b = collate([sample(32, 40, 0), sample(32, 40, 1, segments=0)], size_divisibility=1)
    assert b["targets"][1]["labels"].numel() == 0
    terms = task.compute_losses(b)
    loss = sum(terms.values())
    assert torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in task.parameters() if p.grad is not None)


@pytest.mark.parametrize("case", CASES)
def test_backward_reaches_every_trainable_parameter(case):
    task = build(case).train()
    terms = task.compute_losses(batch((40, 48), (40, 48), segments=4))
    sum(terms.values()).backward()
    missing = [n for n, p in task.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:8]}"


@pytest.mark.parametrize("case", CASES)
def test_state_dict_round_trip_gives_identical_eval_outputs(case):
    a, b = build(case, seed=0).eval(), build(case, seed=1).eval()
    x = batch((36, 44), (36, 44))
    with torch.no_grad():
        before = raw_outputs(b, x)
        b.load_state_dict(a.state_dict())
        got, want = raw_outputs(b, x), raw_outputs(a, x)
    assert any(not torch.equal(u, v) for u, v in zip(flat(before), flat(want)))  # the seeds gave other weights
    for u, v in zip(flat(got), flat(want)):
        assert torch.equal(u, v)


def flat(o: Any) -> list[torch.Tensor]:
    """Every tensor of a nested output (dicts, lists, dataclasses)."""
    if isinstance(o, torch.Tensor):
        return [o]
    if dataclasses.is_dataclass(o):
        o = [getattr(o, f.name) for f in dataclasses.fields(o)]
    if not isinstance(o, (dict, list, tuple)):
        return []
    return [t for v in (o.values() if isinstance(o, dict) else o) for t in flat(v)]


@pytest.mark.slow
@pytest.mark.parametrize("case", ["fcn", "unet", "deeplabv3plus", "semantic_fpn", "maskformer", "mask2former"])
def test_torch_compile_matches_eager(case):
    task = build(case).eval()
    compiled = torch.compile(task.model)
    x = batch((64, 64), (64, 64))["images"]
    with torch.no_grad():
        want, got = task.model(x), compiled(x)
    for u, v in zip(flat(got), flat(want)):
        torch.testing.assert_close(u, v, rtol=1e-3, atol=1e-4)


# --- classic methods: parameter-free predictors run by ClassicSegmentationModule ------------------
CLASSIC_CASES: dict[str, dict[str, Any]] = {
    "otsu": dict(class_path="OtsuThresholding", init_args=dict(classes=2)),
    "multi_otsu": dict(class_path="OtsuThresholding", init_args=dict(classes=3)),
    "region_growing": dict(class_path="RegionGrowing", init_args=dict(tolerance=40, num_seeds=4)),
    "region_growing_colour_minima": dict(class_path="RegionGrowing", init_args=dict(
        tolerance=60, num_seeds=3, seeds="gradient_minima", features="colour", connectivity=2)),
    "region_growing_mean": dict(class_path="RegionGrowing", init_args=dict(tolerance=40, num_seeds=4, mode="mean")),
    "region_growing_given": dict(class_path="RegionGrowing", init_args=dict(
        tolerance=40, seeds="given", positions=[(0.1, 0.1), (0.5, 0.5), (1.0, 1.0)])),
    "watershed": dict(class_path="MarkerWatershed", init_args=dict(h=20.0)),
    "watershed_distance_peaks": dict(class_path="MarkerWatershed", init_args=dict(markers="distance_peaks",
                                                                                  compactness=0.01)),
    "watershed_distance_elevation": dict(class_path="MarkerWatershed", init_args=dict(
        markers="distance_peaks", elevation="distance", foreground="dark")),
    "kmeans": dict(class_path="KMeansSegmentation", init_args=dict(num_clusters=3)),
    "kmeans_slic_like": dict(class_path="KMeansSegmentation", init_args=dict(num_clusters=4, spatial_weight=1.0)),
}


def build_classic(case: str, **overrides: Any):
    import lightning_seg.classic as classic
    from lightning_seg.tasks import ClassicSegmentationModule

    spec = CLASSIC_CASES[case]
    method = getattr(classic, spec["class_path"])(**{**spec["init_args"], **overrides})
    return ClassicSegmentationModule(num_classes=K, thing_classes=THINGS, num_overlays=0, method=method)


def smooth_samples(*sizes: tuple[int, int]) -> list[dict[str, Any]]:
    """Like :func:`sample`, with images of flat coloured rectangles (segmentable, so every
    method produces more than one segment)."""
    g = torch.Generator().manual_seed(5)
    out = []
    for i, (h, w) in enumerate(sizes):
        s = sample(h, w, seed=i)
        img = torch.full((3, h, w), 128, dtype=torch.uint8)
        for m in s["masks"]:
            img[:, m] = torch.randint(0, 256, (3, 1), dtype=torch.uint8, generator=g)
        out.append(s | {"image": img})
    return out


def smooth_batch(*sizes: tuple[int, int]):
    return collate(smooth_samples(*sizes), size_divisibility=1)


@pytest.mark.parametrize("case", CLASSIC_CASES)
def test_classic_predictions_at_odd_sizes_and_padding_ignored(case):
    task = build_classic(case).eval()
    assert not list(task.parameters()) and not task.state_dict()
    samples = smooth_samples((37, 45), (30, 41))
    b = collate(samples, size_divisibility=1)
    n = task.model.num_clusters
    for key, at_original in (("target_size", False), ("orig_size", True)):
        preds = task.predict(b, at_original_size=at_original)
        assert set(preds) == {"segments"}
        for seg, t in zip(preds["segments"], b["targets"]):
            assert seg.dtype == torch.int64 and tuple(seg.shape) == tuple(t[key])
            assert int(seg.min()) >= -1 and len(torch.unique(seg)) > 1
            if n is not None:
                assert int(seg.max()) < n
    # the padded second image gives what it gives alone: padding is never looked at
    alone = task.predict(collate(samples[1:], size_divisibility=1), at_original_size=False)
    assert torch.equal(alone["segments"][0], task.predict(b, at_original_size=False)["segments"][1])


@pytest.mark.parametrize("case", CLASSIC_CASES)
def test_classic_segments_do_not_depend_on_the_batch(case):
    task = build_classic(case).eval()
    samples = smooth_samples((31, 38), (31, 38), (31, 38))
    together = task.predict(collate(samples, size_divisibility=1), at_original_size=False)["segments"]
    for i in range(3):
        alone = task.predict(collate(samples[i : i + 1], size_divisibility=1), at_original_size=False)["segments"][0]
        assert torch.equal(alone, together[i]), i


def test_classic_watershed_of_a_flat_image_is_one_basin():
    task = build_classic("watershed").eval()
    flat = sample(20, 24, seed=0) | {"image": torch.full((3, 20, 24), 90, dtype=torch.uint8)}
    seg = task.predict(collate([flat], size_divisibility=1), at_original_size=False)["segments"][0]
    assert torch.equal(seg, torch.zeros(20, 24, dtype=torch.long))


# watershed is scikit-image's on every device, the running-mean growing has the tensor path only
@pytest.mark.parametrize("case", [c for c in CLASSIC_CASES if not c.startswith("watershed") and c != "region_growing_mean"])
def test_classic_tensor_path_equals_library_path(case):
    b = smooth_batch((33, 40), (33, 40))
    lib = build_classic(case, backend="library").predict(b, at_original_size=False)["segments"]
    ten = build_classic(case, backend="tensor").predict(b, at_original_size=False)["segments"]
    for u, v in zip(lib, ten):
        assert torch.equal(u, v)


def test_classic_task_refuses_what_it_cannot_do():
    from lightning_seg.classic import OtsuThresholding
    from lightning_seg.tasks import ClassicSegmentationModule

    with pytest.raises(ValueError, match="model.extra_metrics"):
        ClassicSegmentationModule(num_classes=K, method=OtsuThresholding(), extra_metrics=["boundary_iou"])
    with pytest.raises(TypeError, match="model.method must be a lightning_seg.classic predictor"):
        ClassicSegmentationModule(num_classes=K, method=torch.nn.Conv2d(3, 3, 1))
    task = build_classic("otsu")
    with pytest.raises(RuntimeError, match="nothing to fit"):
        task.setup("fit")
    with pytest.raises(RuntimeError, match="no loss"):
        task.compute_losses(batch((20, 20)))
    with pytest.raises(ValueError, match="positive square"):
        build_classic("region_growing", num_seeds=5)
    with pytest.raises(ValueError, match=r"positions must be \(row, col\) fractions"):
        build_classic("region_growing_given", positions=[(0.5, 1.5)])
    with pytest.raises(ValueError, match="positions are used by seeds='given' only"):
        build_classic("region_growing", positions=[(0.5, 0.5)])
    with pytest.raises(ValueError, match="tolerance"):
        build_classic("region_growing", tolerance=-1)
    with pytest.raises(ValueError, match="spatial_weight"):
        build_classic("kmeans", spatial_weight=-1.0)
    with pytest.raises(ValueError, match="compactness"):
        build_classic("watershed", compactness=-0.5)
    with pytest.raises(ValueError, match="channel must be None, 0, 1 or 2"):
        build_classic("otsu", channel=3)
    with pytest.raises(ValueError, match="'things' scores a two-cluster output"):
        ClassicSegmentationModule(num_classes=K, thing_classes=THINGS, method=OtsuThresholding(classes=3),
                                  segment_metrics=["things"])

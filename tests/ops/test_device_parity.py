"""Every op on each available device, with that device's defaults, against the CPU result.

On an accelerator the ops pick whole-batch chunks and large bands (``band_budget_for``,
``chunk_elements``); on CPU small cache-sized ones. The CPU reference is computed in chunks
and bands smaller than these tiny inputs (so its loops really run); the ``cpu`` case passes
the accelerator settings explicitly, so every ``cpu`` case compares two settings of an op and
the one-pass path an accelerator takes is checked here too. The ``cuda`` cases run wherever a
GPU is present; the set criterion and the R-CNN and single-stage instance ops and models, which
have no device-dependent setting, run on GPUs only.
"""

from __future__ import annotations

import pytest
import torch

import lightning_seg.losses.set_terms as set_terms
from lightning_seg.losses import SetCriterion
from lightning_seg.ops import (
    hungarian_match,
    instance_inference,
    mask_matching_costs,
    matrix_nms,
    panoptic_fpn_fusion,
    panoptic_inference,
    point_sample_binary,
    semantic_inference,
)
from lightning_seg.ops.point_sampling import rand_points_row_major

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
ACCELERATOR_BAND = 1 << 24  # band_budget_for() on any device but CPU
K = 5
THINGS = [0, 1, 2]


def _accelerator_kwargs(device: str, **kwargs):
    """The accelerator defaults, spelled out on CPU (elsewhere the op picks them itself)."""
    return kwargs if device == "cpu" else {}


def _batch(seed: int, b: int = 3, q: int = 9, t: int = 6, size: int = 40, mask: int = 16):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, q, K + 1, generator=g) * 2
    masks = torch.randn(b, q, mask, mask, generator=g) * 3
    labels = torch.randint(0, K, (b, t), generator=g)
    tmasks = torch.rand(b, t, size, size, generator=g) > 0.6
    valid = torch.ones(b, t, dtype=torch.bool)
    valid[1, 4:] = False
    valid[2] = False
    return logits, masks, labels, tmasks, valid


@pytest.mark.parametrize("device", DEVICES)
def test_matching_costs_and_assignment(device):
    logits, masks, labels, tmasks, valid = _batch(0)
    points = torch.rand(3, 200, 2, generator=torch.Generator().manual_seed(1))
    ref = mask_matching_costs(logits, masks, labels, tmasks, points, chunk_elements=9 * 200)
    whole_batch = 3 * 9 * 200
    got = mask_matching_costs(
        *(x.to(device) for x in (logits, masks, labels, tmasks, points)),
        **_accelerator_kwargs(device, chunk_elements=whole_batch),
    )
    torch.testing.assert_close(got.cpu(), ref, rtol=1e-5, atol=1e-5)
    best = hungarian_match(ref, target_valid=valid, solver="scipy")

    def total(m):
        b, p, t = m.pairs()
        return ref[b.cpu(), p.cpu(), t.cpu()].sum()

    for solver in ("scipy", "torch"):
        m = hungarian_match(got, target_valid=valid.to(device), solver=solver)
        assert m.target_for_pred.device.type == torch.device(device).type
        assert torch.equal((m.target_for_pred >= 0).sum(1).cpu(), (best.target_for_pred >= 0).sum(1))
        assert total(m).item() == pytest.approx(total(best).item(), abs=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_binary_point_sampling_both_layouts(device):
    _, _, _, tmasks, _ = _batch(2)
    points = rand_points_row_major(3, 100, generator=torch.Generator().manual_seed(3))
    grouped = point_sample_binary(tmasks.to(device), points.to(device))
    torch.testing.assert_close(grouped.cpu(), point_sample_binary(tmasks, points))
    flat = tmasks.flatten(0, 1)
    rows = torch.tensor([[0, 5], [17, 3], [9, 9]])
    got = point_sample_binary(
        flat.to(device), points.to(device), rows.to(device),
        **_accelerator_kwargs(device, chunk_elements=1 << 26),
    )
    ref = point_sample_binary(flat, points, rows, chunk_elements=40 * 40)  # one mask at a time
    torch.testing.assert_close(got.cpu(), ref)


def _fixed_draws():
    """Stand-ins for ``torch.rand`` and ``rand_points_row_major`` whose values depend only on
    the requested shape: drawn on CPU from a seeded generator, then moved to the device."""
    real_rand = torch.rand

    def rand(*size, device=None, dtype=None, generator=None, **kwargs):
        if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)):
            size = tuple(size[0])
        g = torch.Generator().manual_seed(sum(size) * 31 + len(size))
        return real_rand(*size, generator=g).to(device=device or "cpu", dtype=dtype or torch.float32)

    def rows(groups, n, device=None, generator=None):
        return rand(groups, n, 2, device=device)

    return rand, rows


ACCELERATORS = [d for d in DEVICES if d != "cpu"] or [
    pytest.param("cuda", marks=pytest.mark.skip(reason="no GPU: the criterion has no device-dependent settings, "
                                                       "so a CPU run would compare one path with itself"))
]


@pytest.mark.parametrize("shared_points", [True, False])
@pytest.mark.parametrize("device", ACCELERATORS)
def test_set_criterion_losses_and_gradients(device, shared_points, monkeypatch):
    logits, masks, labels, tmasks, valid = _batch(4, q=7)
    aux = [{"pred_logits": logits.flip(1), "pred_masks": masks.flip(1)}]
    targets = [{"labels": labels[i][valid[i]], "masks": tmasks[i][valid[i]]} for i in range(3)]
    rand, rows = _fixed_draws()
    monkeypatch.setattr(torch, "rand", rand)
    monkeypatch.setattr(set_terms, "rand_points_row_major", rows)

    def run(dev):
        crit = SetCriterion(num_classes=K, num_points=48, shared_points=shared_points).to(dev)
        lg = logits.to(dev).requires_grad_()
        mk = masks.to(dev).requires_grad_()
        ax = [{k: v.to(dev) for k, v in a.items()} for a in aux]
        tg = [{k: v.to(dev) for k, v in t.items()} for t in targets]
        losses = crit({"pred_logits": lg, "pred_masks": mk, "aux_outputs": ax}, tg)
        crit.total(losses).backward()
        return {k: v.detach().cpu() for k, v in losses.items()}, lg.grad.cpu(), mk.grad.cpu()

    ref, got = run("cpu"), run(device)
    assert len(ref[0]) == 6
    for key in ref[0]:
        torch.testing.assert_close(got[0][key], ref[0][key], rtol=1e-4, atol=1e-5, msg=key)
    torch.testing.assert_close(got[1], ref[1], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got[2], ref[2], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_matrix_nms(device):
    g = torch.Generator().manual_seed(5)
    masks = torch.rand(2, 30, 24, 24, generator=g) > 0.5
    scores = torch.rand(2, 30, generator=g)
    labels = torch.randint(0, 3, (2, 30), generator=g)
    valid = torch.ones(2, 30, dtype=torch.bool)
    valid[1, 20:] = False
    ref = matrix_nms(masks, scores, labels, valid, score_threshold=0.1, max_detections=12, chunk_pixels=100)
    got = matrix_nms(*(x.to(device) for x in (masks, scores, labels, valid)), score_threshold=0.1, max_detections=12)
    for name in ("labels", "indices", "valid"):
        assert torch.equal(getattr(got, name).cpu(), getattr(ref, name)), name
    torch.testing.assert_close(got.scores.cpu(), ref.scores, rtol=1e-5, atol=1e-6)


def _inference_inputs():
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(2, 8, K + 1, generator=g) * 4
    masks = torch.randn(2, 8, 12, 12, generator=g).clamp(-1, 1) * 2 - 3
    for i in range(2):
        for j in range(8):
            y, x = torch.randint(0, 7, (2,), generator=g).tolist()
            masks[i, j, y : y + 3 + j % 3, x : x + 5] += 8
    sizes = {"padded_size": (48, 48), "image_sizes": [(44, 40), (48, 48)], "orig_sizes": [(70, 61), (30, 30)]}
    return logits, masks, sizes


@pytest.mark.parametrize("device", DEVICES)
def test_semantic_instance_panoptic_inference_and_fusion(device):
    logits, masks, sizes = _inference_inputs()
    band = _accelerator_kwargs(device, band_budget=ACCELERATOR_BAND)
    on = (logits.to(device), masks.to(device))

    small = {"band_budget": 600}  # a few output rows per band
    sem_ref = semantic_inference(logits, masks, **sizes, **small)
    sem = semantic_inference(*on, **sizes, **band)
    for a, b in zip(sem, sem_ref):
        assert a.device.type == torch.device(device).type
        assert (a.cpu() == b).float().mean() > 0.999

    inst_ref = instance_inference(logits, masks, **sizes, topk=10, thing_classes=THINGS, **small)
    inst = instance_inference(*on, **sizes, topk=10, thing_classes=THINGS, **band)
    for a, b in zip(inst, inst_ref):
        assert torch.equal(a["labels"].cpu(), b["labels"])
        torch.testing.assert_close(a["scores"].cpu(), b["scores"], rtol=1e-5, atol=1e-6)
        assert (a["masks"].cpu() == b["masks"]).float().mean() > 0.999

    pan_ref = panoptic_inference(logits, masks, THINGS, **sizes, object_mask_threshold=0.5, **small)
    pan = panoptic_inference(*on, THINGS, **sizes, object_mask_threshold=0.5, **band)
    assert any(p["segments_info"] for p in pan_ref)
    for a, b in zip(pan, pan_ref):
        assert (a["panoptic_seg"].cpu() == b["panoptic_seg"]).float().mean() > 0.999
        assert [s["category_id"] for s in a["segments_info"]] == [s["category_id"] for s in b["segments_info"]]

    fused_ref = panoptic_fpn_fusion(inst_ref, sem_ref, THINGS, K, stuff_area_threshold=20)
    fused = panoptic_fpn_fusion(inst, sem, THINGS, K, stuff_area_threshold=20)
    for a, b in zip(fused, fused_ref):
        assert (a["panoptic_seg"].cpu() == b["panoptic_seg"]).float().mean() > 0.999
        assert [s["category_id"] for s in a["segments_info"]] == [s["category_id"] for s in b["segments_info"]]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU: the R-CNN ops have no device-dependent "
                    "settings, so a CPU run would compare one path with itself")
def test_rcnn_ops_and_mask_rcnn_on_cuda():
    from lightning_seg.models.rcnn import MaskRCNN
    from lightning_seg.ops.box_matching import batched_box_iou, match_boxes
    from lightning_seg.ops.mask_paste import paste_masks
    from lightning_seg.ops.roi_pooling import crop_mask_targets, multiscale_roi_align

    g = torch.Generator().manual_seed(0)
    xy = torch.rand(2, 30, 2, generator=g) * 50
    boxes = torch.cat([xy, xy + torch.rand(2, 30, 2, generator=g) * 30 + 1], -1)
    gt, valid = boxes[:, :5], torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    iou = batched_box_iou(gt, boxes)
    torch.testing.assert_close(batched_box_iou(gt.cuda(), boxes.cuda()).cpu(), iou)
    for got, want in zip(match_boxes(iou.cuda(), valid.cuda(), 0.5, 0.3, True), match_boxes(iou, valid, 0.5, 0.3, True)):
        assert torch.equal(got.cpu(), want)
    feats = [torch.randn(2, 4, 64 // s, 64 // s, generator=g) for s in (4, 8, 16, 32)]
    rois = torch.cat([torch.tensor([0.0] * 30 + [1.0] * 30)[:, None], boxes.reshape(-1, 4)], 1)
    torch.testing.assert_close(multiscale_roi_align([f.cuda() for f in feats], rois.cuda(), [4, 8, 16, 32], 7).cpu(),
                               multiscale_roi_align(feats, rois, [4, 8, 16, 32], 7), atol=1e-5, rtol=1e-4)
    masks = torch.rand(4, 64, 64, generator=g) > 0.5
    index = torch.randint(0, 4, (60,), generator=g)
    torch.testing.assert_close(crop_mask_targets(masks.cuda(), rois[:, 1:].cuda(), index.cuda(), 28, True, None).cpu(),
                               crop_mask_targets(masks, rois[:, 1:], index, 28, True, None), atol=1e-5, rtol=0)
    probs = torch.rand(60, 28, 28, generator=g)
    for mode in ("detectron2", "torchvision"):
        torch.testing.assert_close(paste_masks(probs.cuda(), rois[:, 1:].cuda(), (64, 64), None, mode).cpu(),
                                   paste_masks(probs, rois[:, 1:], (64, 64), None, mode), atol=1e-5, rtol=0)
    torch.manual_seed(0)
    model = MaskRCNN(K, backbone="resnet18", fpn_channels=16, channels_last=False,
                     roi_heads=dict(box_head_dim=32, mask_head_dims=[8], score_threshold=0.0)).eval()
    images, sizes = torch.rand(2, 3, 64, 64, generator=g), torch.tensor([[64, 64], [50, 60]])
    with torch.no_grad():
        want = model(images, sizes)
        got = model.cuda()(images.cuda(), sizes.cuda())
    n = min(len(want.scores), len(got.scores), 20)
    torch.testing.assert_close(got.scores[:n].cpu(), want.scores[:n], atol=1e-4, rtol=0)
    torch.testing.assert_close(got.boxes[:n].cpu(), want.boxes[:n], atol=1e-2, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU: the panoptic R-CNN ops have no device-dependent "
                    "settings, so a CPU run would compare one path with itself")
def test_panoptic_rcnn_ops_and_models_on_cuda():
    from lightning_seg.models.rcnn import PanopticFPN, UPSNet
    from lightning_seg.ops.panoptic_fpn_fusion import paste_in_score_order
    from lightning_seg.ops.upsnet_panoptic import upsnet_panoptic_logits

    g = torch.Generator().manual_seed(0)
    masks = [torch.rand(n, 33, 47, generator=g) < 0.3 for n in (40, 0, 140)]
    scores = [torch.rand(m.shape[0], generator=g) for m in masks]
    own_ref, acc_ref = paste_in_score_order(masks, scores, 0.5, 0.2)
    own, acc = paste_in_score_order([m.cuda() for m in masks], [s.cuda() for s in scores], 0.5, 0.2)
    for a, b, c, d in zip(own, own_ref, acc, acc_ref):
        assert torch.equal(a.cpu(), b) and torch.equal(c.cpu(), d)

    sem = torch.randn(2, K, 12, 16, generator=g)
    xy = torch.rand(5, 2, generator=g) * 8
    boxes = torch.cat([xy, xy + torch.rand(5, 2, generator=g) * 6 + 1], 1)
    args = (torch.tensor([3, 4]), torch.tensor(THINGS), torch.randn(5, 7, 7, generator=g), boxes,
            torch.tensor([0, 1, 2, 0, 1]), torch.tensor([0, 0, 0, 1, 1]), 3)
    ref = upsnet_panoptic_logits(sem, *args)
    got = upsnet_panoptic_logits(sem.cuda(), *[a.cuda() if torch.is_tensor(a) else a for a in args])
    torch.testing.assert_close(got.cpu(), ref, rtol=1e-5, atol=1e-5)

    images = torch.rand(2, 3, 64, 64, generator=g)
    sizes = torch.tensor([[64, 64], [60, 56]])
    tiny = dict(backbone="resnet18", fpn_channels=16, panoptic=dict(semantic_channels=8, instance_score_threshold=0.0,
                                                                  stuff_area_threshold=4))
    for cls in (PanopticFPN, UPSNet):
        torch.manual_seed(0)
        model = cls(K, THINGS, **tiny).eval()
        with torch.no_grad():
            a = model.postprocess(model(images, sizes), sizes, [(64, 64), (60, 56)])
            model.cuda()
            b = model.postprocess(model(images.cuda(), sizes.cuda()), sizes.cuda(), [(64, 64), (60, 56)])
        for x, y in zip(a["panoptic"], b["panoptic"]):
            assert (x["panoptic_seg"] == y["panoptic_seg"].cpu()).float().mean() > 0.99


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU: the single-stage instance ops have no "
                    "device-dependent settings, so a CPU run would compare one path with itself")
def test_dense_instance_ops_and_models_on_cuda():
    from lightning_seg.models.dense_instance import SOLO, YOLACT, SOLOv2
    from lightning_seg.ops import (
        fast_nms,
        linear_combination_masks,
        solo_targets,
        yolact_match,
    )

    g = torch.Generator().manual_seed(0)
    features, kernels = torch.randn(3, 6, 9, 11, generator=g), torch.randn(7, 6, generator=g)
    image = torch.tensor([2, 0, 2, 1, 0, 2, 1])
    ref = linear_combination_masks(features, kernels, image)
    torch.testing.assert_close(linear_combination_masks(features.cuda(), kernels.cuda(), image.cuda()).cpu(), ref,
                               rtol=1e-4, atol=1e-4)
    xy = torch.rand(2, 6, 2, generator=g) * 40
    boxes = torch.cat([xy, xy + torch.rand(2, 6, 2, generator=g) * 20 + 4], -1)
    scores = torch.rand(2, 6, K, generator=g)
    a, b = fast_nms(boxes, scores), fast_nms(boxes.cuda(), scores.cuda())
    assert torch.equal(a.indices, b.indices.cpu()) and torch.equal(a.labels, b.labels.cpu())
    valid = torch.ones(2, 6, dtype=torch.bool)
    priors = torch.cat([torch.rand(50, 2, generator=g) * 50, torch.rand(50, 2, generator=g) * 50 + 60], 1).sort(1).values
    m, n = yolact_match(boxes, valid, priors), yolact_match(boxes.cuda(), valid.cuda(), priors.cuda())
    assert torch.equal(m.state, n.state.cpu()) and torch.equal(m.gt_index, n.gt_index.cpu())
    masks = torch.zeros(12, 64, 64, dtype=torch.bool)
    for i, bx in enumerate(boxes.flatten(0, 1).clamp(0, 63).long()):
        masks[i, bx[1] : bx[3] + 1, bx[0] : bx[2] + 1] = True
    index = torch.arange(12).view(2, 6)
    labels = torch.randint(0, K, (2, 6), generator=g)
    t_cpu = solo_targets(boxes, labels, valid, masks, index, (64, 64), K, (12, 10, 8, 6, 4),
                         ((1, 24), (16, 40), (32, 64), (48, 128), (96, 2048)))
    t_gpu = solo_targets(boxes.cuda(), labels.cuda(), valid.cuda(), masks.cuda(), index.cuda(), (64, 64), K,
                         (12, 10, 8, 6, 4), ((1, 24), (16, 40), (32, 64), (48, 128), (96, 2048)))
    for x, y in zip(t_cpu, t_gpu):
        assert all(torch.equal(u, v.cpu()) for u, v in zip(x, y))

    images = torch.rand(2, 3, 64, 64, generator=g)
    sizes = torch.tensor([[64, 64], [60, 56]])
    small = dict(grid_numbers=(12, 10, 8, 6, 4), scale_ranges=((1, 24), (16, 40), (32, 64), (48, 128), (96, 2048)),
                 head_channels=16, head_convs=2, mask_feature_channels=8, kernel_channels=8, score_threshold=0.0,
                 update_threshold=0.0, pre_nms_topk=40, max_detections=8)
    for cls, kwargs in ((SOLOv2, dict(solo=small)), (SOLO, dict(solo=small)),
                        (YOLACT, dict(yolact=dict(head_channels=16, num_prototypes=8, proto_channels=16,
                                                  score_threshold=0.0, max_detections=8)))):
        torch.manual_seed(0)
        model = cls(K, backbone="resnet18", fpn_channels=16, **kwargs).eval()
        with torch.no_grad():
            for conv in getattr(model, "mask", []):
                conv.bias.zero_()
            a = model.postprocess(model(images), sizes, [(64, 64), (60, 56)])
            model.cuda()
            b = model.postprocess(model(images.cuda()), sizes.cuda(), [(64, 64), (60, 56)])
        for x, y in zip(a, b):
            assert torch.equal(x["labels"], y["labels"].cpu())
            torch.testing.assert_close(x["scores"], y["scores"].cpu(), rtol=1e-3, atol=1e-4)
            assert (x["masks"] == y["masks"].cpu()).float().mean() > 0.99


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU: MaX-DeepLab's criterion and inference have no "
                    "device-dependent settings, so a CPU run would compare one path with itself")
def test_max_deeplab_criterion_and_inference_on_cuda():
    from lightning_seg.losses import MaXDeepLabCriterion
    from lightning_seg.ops import (
        max_deeplab_panoptic_inference,
        max_deeplab_semantic_inference,
    )

    g = torch.Generator().manual_seed(0)
    b, n, h, w = 2, 7, 8, 10
    out = {"pred_logits": torch.randn(b, n, K + 1, generator=g) * 2, "pred_masks": torch.randn(b, n, h, w, generator=g),
           "pixel_features": torch.nn.functional.normalize(torch.randn(b, 6, h, w, generator=g), dim=1),
           "semantic_logits": torch.randn(b, K, h, w, generator=g)}
    targets = []
    for i in range(b):
        masks = torch.zeros(3, 4 * h, 4 * w, dtype=torch.bool)
        masks[0, :12], masks[1, 12:, :20], masks[2, 12:, 20:] = True, True, True
        semantic = torch.full((4 * h, 4 * w), 255)
        labels = torch.tensor([i, 2, 3])
        for m, c in zip(masks, labels):
            semantic[m] = c
        targets.append({"masks": masks, "labels": labels, "semantic": semantic,
                        "is_thing": torch.tensor([True, True, False])})
    for sample_k in (0, 40):  # the mask-averaged form, then the sampled one on the same Gumbel draws
        crit = MaXDeepLabCriterion(K, sample_k=sample_k)
        cpu = crit(out, targets, generator=torch.Generator().manual_seed(1))
        gpu = crit({k: v.cuda() for k, v in out.items()}, [{k: v.cuda() for k, v in t.items()} for t in targets],
                   generator=torch.Generator().manual_seed(1))
        for key, value in cpu.items():
            torch.testing.assert_close(gpu[key].cpu(), value, rtol=1e-4, atol=1e-5)
    logits, masks = out["pred_logits"], out["pred_masks"] * 4
    a = max_deeplab_panoptic_inference(logits, masks, [0, 1], class_threshold=0.3, thing_area=2, stuff_area=4)
    c = max_deeplab_panoptic_inference(logits.cuda(), masks.cuda(), [0, 1], class_threshold=0.3, thing_area=2,
                                       stuff_area=4)
    for x, y in zip(a, c):
        assert torch.equal(x["panoptic_seg"], y["panoptic_seg"].cpu())
        assert [s["category_id"] for s in x["segments_info"]] == [s["category_id"] for s in y["segments_info"]]
    for x, y in zip(max_deeplab_semantic_inference(logits, masks), max_deeplab_semantic_inference(logits.cuda(),
                                                                                                    masks.cuda())):
        assert torch.equal(x, y.cpu())

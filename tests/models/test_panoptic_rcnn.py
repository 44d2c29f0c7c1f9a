"""Panoptic FPN and UPSNet pieces against loops written here: UPSNet's panoptic logits (pasting,
cropping, unknown), its panoptic target, its panoptic inference, the semantic targets, resized
argmax, the task weighting's gradient, and bad arguments."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_seg.losses import TaskWeighting
from lightning_seg.models.rcnn import PanopticFPN, UPSNet, segment_maps, semantic_targets
from lightning_seg.models.rcnn.upsnet import drop_covered, random_keep
from lightning_seg.ops.mask_inference import resized_argmax
from lightning_seg.ops.upsnet_panoptic import PAD_LOGIT, upsnet_panoptic_inference, upsnet_panoptic_logits
from lightning_seg.structures import collate

K = 5
THINGS = [0, 1, 2]
STUFF = [3, 4]
TINY = dict(backbone="resnet10t", backbone_source="timm", fpn_channels=16,
            rpn=dict(pre_nms_topk_train=100, post_nms_topk_train=30, pre_nms_topk_test=100, post_nms_topk_test=30),
            roi_heads=dict(batch_size_per_image=16, box_head_dim=16, mask_head_dims=[8]),
            panoptic=dict(semantic_channels=8))


def detectron2_paste(mask: torch.Tensor, box: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """detectron2's ``_do_paste_mask`` for one mask: ``grid_sample`` of the mask over the image."""
    x0, y0, x1, y1 = box.tolist()
    ys = (torch.arange(h, dtype=torch.float32) + 0.5 - y0) / (y1 - y0) * 2 - 1
    xs = (torch.arange(w, dtype=torch.float32) + 0.5 - x0) / (x1 - x0) * 2 - 1
    grid = torch.stack([xs[None, :].expand(h, w), ys[:, None].expand(h, w)], -1)
    return F.grid_sample(mask[None, None].float(), grid[None], align_corners=False)[0, 0]


def random_instances(g, b, h, w, counts):
    image_index = torch.cat([torch.full((c,), i) for i, c in enumerate(counts)]).long()
    d = int(image_index.numel())
    xy = torch.rand(d, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
    wh = torch.rand(d, 2, generator=g) * torch.tensor([w * 0.5, h * 0.5]) + 1.5
    boxes = torch.cat([xy, xy + wh], 1)
    labels = torch.tensor(THINGS)[torch.randint(0, len(THINGS), (d,), generator=g)]
    return boxes, labels, image_index, torch.randn(d, 7, 7, generator=g) * 3


def test_upsnet_panoptic_logits_equal_per_instance_loop():
    g = torch.Generator().manual_seed(0)
    b, h, w, counts, slots = 3, 14, 19, [3, 0, 2], 4
    sem = torch.randn(b, K, h, w, generator=g)
    boxes, labels, image_index, mask_logits = random_instances(g, b, h, w, counts)
    out = upsnet_panoptic_logits(sem, torch.tensor(STUFF), torch.tensor(THINGS), mask_logits, boxes, labels,
                                 image_index, slots)
    assert out.shape == (b, len(STUFF) + slots + 1, h, w)
    ys = torch.arange(h, dtype=torch.float32)[:, None] + 0.5
    xs = torch.arange(w, dtype=torch.float32)[None, :] + 0.5
    no_unknown = upsnet_panoptic_logits(sem, torch.tensor(STUFF), torch.tensor(THINGS), mask_logits, boxes, labels,
                                        image_index, slots, with_unknown=False)
    d = 0
    for i in range(b):
        want = [sem[i, c] for c in STUFF]
        inst, crops = [], []
        for _ in range(counts[i]):
            x0, y0, x1, y1 = boxes[d].tolist()
            inside = (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)
            crops.append(torch.where(inside, sem[i, labels[d]], 0.0))
            inst.append(detectron2_paste(mask_logits[d], boxes[d], h, w) + crops[-1])
            d += 1
        # UPSNet's unknown: thing semantic max minus the cropped semantic logits' max
        best = torch.stack(crops).amax(0) if crops else torch.zeros(h, w)
        want += inst + [torch.full((h, w), PAD_LOGIT)] * (slots - len(inst))
        torch.testing.assert_close(out[i], torch.stack(want + [sem[i, THINGS].amax(0) - best]), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(no_unknown[i], torch.stack(want + [torch.full((h, w), PAD_LOGIT)]))


def test_upsnet_panoptic_logits_are_differentiable():
    g = torch.Generator().manual_seed(1)
    sem = torch.randn(2, K, 10, 12, generator=g, requires_grad=True)
    boxes, labels, image_index, mask_logits = random_instances(g, 2, 10, 12, [2, 1])
    mask_logits.requires_grad_(True)
    out = upsnet_panoptic_logits(sem, torch.tensor(STUFF), torch.tensor(THINGS), mask_logits, boxes, labels,
                                 image_index, 2)
    out.logsumexp(1).sum().backward()
    assert mask_logits.grad.abs().sum() > 0 and sem.grad.abs().sum() > 0


def panoptic_sample(h, w, seed, crowd_last=True):
    """Non-overlapping segments: 4 thing instances (the last one crowd), 2 stuff regions."""
    g = torch.Generator().manual_seed(seed)
    sem_ids = torch.full((h, w), -1, dtype=torch.int64)
    sem_ids[:, : w // 2] = 4  # stuff 3
    sem_ids[:, w // 2:] = 5  # stuff 4
    for j in range(4):
        y, x = torch.randint(0, h - 6, (2,), generator=g).tolist()
        sem_ids[y: y + 6, x: x + 5] = j
    sem_ids[0, :3] = -1  # void
    n = 6
    masks = torch.stack([sem_ids == j for j in range(n)])
    labels = torch.tensor([0, 1, 2, 0, 3, 4])
    iscrowd = torch.tensor([False, False, False, crowd_last, False, False])
    semantic = torch.where(sem_ids >= 0, labels[sem_ids.clamp(min=0)], 255)
    boxes = torch.zeros(n, 4)
    for j in range(n):
        yy, xx = torch.nonzero(masks[j], as_tuple=True)
        if len(yy):
            boxes[j] = torch.tensor([xx.min(), yy.min(), xx.max() + 1, yy.max() + 1], dtype=torch.float32)
    return dict(image=torch.zeros(3, h, w, dtype=torch.uint8), masks=masks, labels=labels, iscrowd=iscrowd,
                is_thing=labels < 3, semantic=semantic, boxes=boxes, image_id=seed, orig_size=(h, w))


def test_upsnet_panoptic_target_equals_pixel_loop():
    torch.manual_seed(0)
    model = UPSNet(K, THINGS, **TINY)
    batch = collate([panoptic_sample(24, 30, 0), panoptic_sample(24, 30, 1, crowd_last=False)], size_divisibility=8)
    targets = model.targets_from_batch(batch["targets"])
    keep = targets.boxes.valid.clone()
    keep[0, 1] = False  # a dropped instance: unknown
    slots = 3
    got = model.panoptic_target(targets, keep, slots)
    s = len(STUFF)
    for i, t in enumerate(batch["targets"]):
        columns = [j for j in range(len(t["labels"])) if t["is_thing"][j] and not t["iscrowd"][j]]
        want = torch.full(got.shape[1:], 255, dtype=torch.int64)
        for j in range(len(t["labels"])):
            c = int(t["labels"][j])
            if c in STUFF:
                value = STUFF.index(c)
            elif t["iscrowd"][j]:
                value = 255
            else:
                col = columns.index(j)
                kept = [k for k in range(len(columns)) if keep[i, k]]
                value = s + kept.index(col) if keep[i, col] else s + slots
            want[t["masks"][j]] = value
        assert torch.equal(got[i], want)
    assert (got == s + slots).any() and (got == 255).any()


def test_semantic_targets_and_segment_maps_against_loops():
    batch = collate([panoptic_sample(20, 26, 2), panoptic_sample(20, 26, 3)], size_divisibility=16)
    model = PanopticFPN(K, THINGS, **TINY)
    sem = semantic_targets(batch["targets"], model.semantic_class_map())
    segments, columns = segment_maps(batch["targets"])
    for i, t in enumerate(batch["targets"]):
        for (y, x), c in zip(torch.cartesian_prod(torch.arange(32), torch.arange(32)).tolist(), t["semantic"].flatten().tolist()):
            want = 255 if not 0 <= c < K else (STUFF.index(c) if c in STUFF else len(STUFF))
            assert int(sem[i, y, x]) == want
        owner = torch.full(t["semantic"].shape, -1)
        for j, m in enumerate(t["masks"]):
            owner[m] = j
        assert torch.equal(segments[i], owner)
    assert columns[0].tolist() == [0, 1, 2, -1, -1, -1]  # the crowd thing and the stuff are no instances


def test_upsnet_panoptic_inference_equals_loop():
    g = torch.Generator().manual_seed(4)
    b, s, slots, h, w = 2, len(STUFF), 3, 9, 11
    counts = [2, 0]
    logits = torch.randn(b, s + slots + 1, h, w, generator=g) * 3
    logits[1, s: s + slots] = PAD_LOGIT
    logits[0, s + 2] = PAD_LOGIT
    labels = [torch.tensor([1, 0]), torch.zeros(0, dtype=torch.int64)]
    scores = [torch.tensor([0.9, 0.7]), torch.zeros(0)]
    padded, image_sizes, out_sizes = (36, 44), [(36, 40), (30, 44)], [(50, 57), (30, 44)]
    out = upsnet_panoptic_inference(logits, counts, torch.tensor(STUFF), labels, scores, padded, image_sizes,
                                    out_sizes, stuff_area_threshold=40)
    for i in range(b):
        up = F.interpolate(logits[i: i + 1], size=padded, mode="bilinear", align_corners=False)
        up = up[..., : image_sizes[i][0], : image_sizes[i][1]]
        channel = F.interpolate(up, size=out_sizes[i], mode="bilinear", align_corners=False)[0].argmax(0)
        pan = torch.zeros(out_sizes[i], dtype=torch.int32)
        infos, seg = [], 0
        for j in range(counts[i]):
            if (channel == s + j).any():
                seg += 1
                pan[channel == s + j] = seg
                infos.append((seg, int(labels[i][j]), True))
        for j, c in enumerate(STUFF):
            if int((channel == j).sum()) >= 40:
                seg += 1
                pan[channel == j] = seg
                infos.append((seg, c, False))
        assert torch.equal(out[i]["panoptic_seg"], pan)
        assert [(x["id"], x["category_id"], x["isthing"]) for x in out[i]["segments_info"]] == infos
    assert any(x["isthing"] for x in out[0]["segments_info"])


def test_resized_argmax_equals_interpolate():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(6, 10, 12, generator=g)
    got = resized_argmax(logits, (40, 48), (37, 45), (61, 70), band_budget=6 * 70 * 7)
    up = F.interpolate(logits[None], size=(40, 48), mode="bilinear", align_corners=False)[..., :37, :45]
    want = F.interpolate(up, size=(61, 70), mode="bilinear", align_corners=False)[0].argmax(0)
    assert torch.equal(got, want)


def test_uncertainty_weighting_value_and_gradient():
    weighting = TaskWeighting({"instance": 1.0, "semantic": 0.5}, "uncertainty")
    terms = {"loss_a": torch.tensor(2.0), "loss_b": torch.tensor(1.0), "loss_sem": torch.tensor(3.0)}
    tasks = {"loss_a": "instance", "loss_b": "instance", "loss_sem": "semantic"}
    out = weighting(terms, tasks)
    total = sum(out.values())
    s_inst, s_sem = 0.0, -math.log(0.5)
    # sum_t exp(-s_t) L_t + s_t, with the instance task's L = 2 + 1
    assert math.isclose(float(total.detach()), math.exp(-s_inst) * 3 + s_inst + math.exp(-s_sem) * 3 + s_sem, rel_tol=1e-6)
    total.backward()
    # d/ds (exp(-s) L + s) = 1 - exp(-s) L
    torch.testing.assert_close(weighting.log_variance.grad, torch.tensor([1 - 3.0, 1 - 0.5 * 3.0]))
    fixed = TaskWeighting({"instance": 1.0, "semantic": 0.5})(terms, tasks)
    assert float(fixed["loss_sem"]) == 1.5 and "loss_uncertainty" not in fixed
    with pytest.raises(KeyError, match="loss_x"):
        weighting({"loss_x": torch.tensor(1.0)}, tasks)


def test_bad_class_split_is_named():
    with pytest.raises(ValueError, match="model.thing_classes"):
        PanopticFPN(K, [], **TINY)
    with pytest.raises(ValueError, match="stuff classes"):
        UPSNet(3, [0, 1, 2], **TINY)
    with pytest.raises(ValueError, match="model.panoptic"):
        PanopticFPN(K, THINGS, **{**TINY, "panoptic": dict(stuff_area=3)})
    with pytest.raises(ValueError, match="mask_on"):
        UPSNet(K, THINGS, **{**TINY, "roi_heads": dict(TINY["roi_heads"], mask_on=False)})


def test_random_keep_counts_and_subset():
    torch.manual_seed(0)
    valid = torch.zeros(4, 6, dtype=torch.bool)
    for i, n in enumerate([0, 1, 5, 6]):
        valid[i, :n] = True
    seen = torch.zeros(4, 6)
    for _ in range(200):
        keep = random_keep(valid, 0.7)
        assert not (keep & ~valid).any()
        # rounded down, at least one: 0, 1, 3, 4 of 0, 1, 5, 6
        assert keep.sum(1).tolist() == [0, 1, 3, 4]
        seen += keep.float()
    assert (seen[3] > 0).all() and (seen[2, :5] > 0).all()  # every instance gets dropped sometimes


@pytest.mark.parametrize("same_class", [False, True])
def test_drop_covered_equals_loop(same_class):
    g = torch.Generator().manual_seed(6)
    counts = [7, 0, 5]
    masks = []
    for n in counts:
        m = torch.zeros(n, 20, 20, dtype=torch.bool)
        for j in range(n):
            y, x = torch.randint(0, 12, (2,), generator=g).tolist()
            m[j, y: y + 8, x: x + 8] = True
        masks.append(m)
    scores = torch.rand(sum(counts), generator=g)
    labels = torch.randint(0, 2, (sum(counts),), generator=g)
    got = drop_covered(masks, scores, labels, 0.3, same_class)
    want, start = [], 0
    for m in masks:
        n = m.shape[0]
        sc, lab = scores[start: start + n], labels[start: start + n]
        keep = [False] * n
        for j in torch.argsort(-sc, stable=True).tolist():
            cover = torch.zeros(20, 20, dtype=torch.bool)
            for k in range(n):
                if keep[k] and (not same_class or lab[k] == lab[j]):
                    cover |= m[k]
            keep[j] = int((m[j] & cover).sum()) / int(m[j].sum()) <= 0.3
        want += keep
        start += n
    assert got.tolist() == want and 0 < sum(want) < len(want)

"""MaX-DeepLab's losses against per-image loops written here from deeplab2's definitions."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.optimize import linear_sum_assignment

from lightning_seg.losses.max_deeplab_loss import (
    MaXDeepLabCriterion,
    instance_discrimination_loss,
    sample_pixels_by_inverse_area,
)

K, N, H, W = 5, 7, 32, 40  # output 8 x 10 at stride 4


def make_targets(seed: int, segments: int, crowd: int = -1) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(H, W, dtype=torch.long)  # 0 = void
    for s in range(1, segments + 1):
        y0, x0 = int(torch.randint(0, H - 8, (1,), generator=g)), int(torch.randint(0, W - 8, (1,), generator=g))
        ids[y0 : y0 + int(torch.randint(6, 20, (1,), generator=g)), x0 : x0 + int(torch.randint(6, 24, (1,), generator=g))] = s
    present = [s for s in range(1, segments + 1) if (ids == s).any()]
    masks = torch.stack([ids == s for s in present]) if present else torch.zeros(0, H, W, dtype=torch.bool)
    labels = torch.randint(0, K, (len(present),), generator=g)
    semantic = torch.full((H, W), 255, dtype=torch.long)
    for m, c in zip(masks, labels):
        semantic[m] = c
    iscrowd = torch.zeros(len(present), dtype=torch.bool)
    if 0 <= crowd < len(present):
        iscrowd[crowd] = True
    return {"masks": masks, "labels": labels, "semantic": semantic, "iscrowd": iscrowd}


def random_outputs(seed: int, b: int, stages: int = 2) -> dict:
    g = torch.Generator().manual_seed(seed)

    def stage():
        f = torch.nn.functional.normalize(torch.randn(b, 6, H // 4, W // 4, generator=g), dim=1)
        return {"pred_logits": torch.randn(b, N, K + 1, generator=g) * 2,
                "pred_masks": torch.randn(b, N, H // 4, W // 4, generator=g) * 3, "pixel_features": f}

    out = stage()
    out["semantic_logits"] = torch.randn(b, K, H // 4, W // 4, generator=g)
    out["aux_outputs"] = [stage() for _ in range(stages - 1)]
    return out


def loop_losses(main: dict, stage: dict, target: dict, i: int, samples: torch.Tensor, alpha=0.75, temp=0.3) -> dict:
    """deeplab2's terms for image ``i`` of ``stage``, matched on ``main``, with plain loops."""
    keep = ~target["iscrowd"]
    gt = target["masks"][keep][:, ::4, ::4].flatten(1).float()  # strided: top-left pixel of each cell
    labels = target["labels"][keep]
    real = [t for t in range(gt.shape[0]) if gt[t].sum() > 0]
    gt, labels = gt[real], labels[real]
    crowd = target["masks"][target["iscrowd"]].any(0) if target["iscrowd"].any() else torch.zeros(H, W, dtype=torch.bool)
    labelled = ((target["semantic"] != 255) & ~crowd)[::4, ::4].flatten().float()  # crowd is void
    p_main = main["pred_masks"][i].flatten(1).softmax(0)
    c_main = main["pred_logits"][i].softmax(-1)
    t_count = gt.shape[0]
    dice = torch.zeros(t_count, N)
    cost = torch.zeros(t_count, N)
    for t in range(t_count):
        for n in range(N):
            pl = p_main[n] * labelled
            dice[t, n] = (gt[t] * pl).sum() / ((gt[t].sum() + pl.sum()) / 2 + 1e-5)
            cost[t, n] = -dice[t, n] * c_main[n, labels[t]]
    rows, cols = linear_sum_assignment(cost.numpy())
    slot_of = {int(t): int(n) for t, n in zip(rows, cols)}
    seg_of_slot = {n: t for t, n in slot_of.items()}
    logits = stage["pred_logits"][i]
    probs = stage["pred_masks"][i].flatten(1).softmax(0)
    logp = stage["pred_masks"][i].flatten(1).log_softmax(0)
    cls_loss = 0.0
    for n in range(N):
        if n in seg_of_slot:
            t = seg_of_slot[n]
            w, target_class = alpha * max(float(dice[t, n]), 1e-5), int(labels[t])
        else:
            void_ratio = float((p_main[n] * (1 - labelled)).sum() / (p_main[n].sum() + 1e-5))
            w, target_class = (1 - alpha) * max(void_ratio, 1e-5), K
        cls_loss += w * -float(logits[n].log_softmax(-1)[target_class])
    covered = gt.amax(0) if t_count else torch.zeros_like(labelled)
    dice_loss = 0.0
    for t, n in slot_of.items():
        p = probs[n] * covered
        d = 1 - (2 * (p * gt[t]).sum() + 1) / (p.sum() + gt[t].sum() + 1)
        dice_loss += float(d) * max(float(c_main[n, labels[t]]), 1e-5)
    nll, count = 0.0, 0
    for px in range(gt.shape[1]):
        for t, n in slot_of.items():
            if gt[t, px] > 0:
                nll += -float(logp[n, px])
                count += 1
    seg_of_pixel = {px: t for t in range(t_count) for px in torch.nonzero(gt[t]).flatten().tolist()}
    feats = stage["pixel_features"][i].flatten(1)
    inst, counted = 0.0, 0
    s_list = samples.tolist()
    for a in s_list:
        if a not in seg_of_pixel:
            continue
        same = [r for r in s_list if seg_of_pixel.get(r) == seg_of_pixel[a]]
        sims = torch.stack([feats[:, a] @ feats[:, r] / temp for r in s_list])
        lsm = sims.log_softmax(0)
        inst += -sum(float(lsm[s_list.index(r)]) for r in same) / len(same)
        counted += 1
    return {"loss_pq_class": cls_loss / N, "loss_pq_dice": dice_loss * alpha / N,
            "loss_mask_id": nll / max(count, 1), "loss_instance": inst / max(counted, 1)}


def loop_semantic(out: dict, target: dict, i: int) -> float:
    sem = target["semantic"].clone()
    for m, c in zip(target["masks"], target["iscrowd"]):
        if c:
            sem[m] = 255
    sem = sem[::4, ::4]
    logits = out["semantic_logits"][i]
    total, count = 0.0, 0
    for y in range(sem.shape[0]):
        for x in range(sem.shape[1]):
            if sem[y, x] != 255:
                total += -float(logits[:, y, x].log_softmax(0)[sem[y, x]])
                count += 1
    return total / max(count, 1)


def loop_mask_average(stage: dict, target: dict, i: int, things: list[int], temp=0.3) -> float:
    """Original MaX-DeepLab instance loss of image ``i``: thing pixels against segment mean features."""
    keep = ~target["iscrowd"]
    gt = target["masks"][keep][:, ::4, ::4].flatten(1).float()
    labels = target["labels"][keep]
    real = [t for t in range(gt.shape[0]) if gt[t].sum() > 0]
    gt, labels = gt[real], labels[real]
    feats = stage["pixel_features"][i].flatten(1)
    centers = [torch.nn.functional.normalize(feats[:, gt[t] > 0].mean(1), dim=0) for t in range(gt.shape[0])]
    total, count = 0.0, 0
    for t in range(gt.shape[0]):
        if int(labels[t]) not in things:
            continue
        for px in torch.nonzero(gt[t]).flatten().tolist():
            sims = torch.stack([feats[:, px] @ c / temp for c in centers])
            total += -float(sims.log_softmax(0)[t])
            count += 1
    return total / max(count, 1)


def test_mask_average_instance_loss_equals_a_loop():
    things = [0, 1, 2]
    targets = [make_targets(20 + i, s, crowd=0 if i == 1 else -1) for i, s in enumerate((4, 3, 0))]
    for t in targets:
        t["is_thing"] = torch.tensor([int(c) in things for c in t["labels"]], dtype=torch.bool)
    out = random_outputs(2, len(targets))
    got = MaXDeepLabCriterion(K, sample_k=0)(out, targets)
    for suffix, stage in [("", out), ("_0", out["aux_outputs"][0])]:
        want = sum(loop_mask_average(stage, t, i, things) for i, t in enumerate(targets)) / len(targets)
        assert got["loss_instance" + suffix].item() == pytest.approx(want, rel=1e-4)
    assert got["loss_instance"].item() > 0


@pytest.mark.parametrize("case", ["plain", "crowd_and_empty", "more_segments_than_slots"])
def test_losses_equal_a_per_image_loop(case):
    segments = {"plain": (3, 4), "crowd_and_empty": (4, 0), "more_segments_than_slots": (9, 5)}[case]
    targets = [make_targets(10 + i, s, crowd=1 if case == "crowd_and_empty" else -1) for i, s in enumerate(segments)]
    if case == "more_segments_than_slots":
        assert targets[0]["masks"].shape[0] > N
    out = random_outputs(0, len(targets))
    crit = MaXDeepLabCriterion(K, sample_k=30)
    got = crit(out, targets, generator=torch.Generator().manual_seed(3))
    # the same draws the criterion made
    gt = crit.prepare_targets(targets, (H // 4, W // 4), None, torch.device("cpu"))
    samples = sample_pixels_by_inverse_area(gt.one_hot, gt.valid, 30, 0.6, torch.Generator().manual_seed(3))
    for suffix, stage in [("", out), *[(f"_{j}", a) for j, a in enumerate(out["aux_outputs"])]]:
        want = [loop_losses(out, stage, t, i, samples[i]) for i, t in enumerate(targets)]
        for name in want[0]:
            mean = sum(w[name] for w in want) / len(want)
            assert got[name + suffix].item() == pytest.approx(mean, rel=1e-4, abs=1e-6), name + suffix
    sem = sum(loop_semantic(out, t, i) for i, t in enumerate(targets)) / len(targets)
    assert got["loss_semantic"].item() == pytest.approx(sem, rel=1e-5)
    assert set(got) == {f"{n}{s}" for n in ("loss_pq_class", "loss_pq_dice", "loss_mask_id", "loss_instance")
                        for s in ("", "_0")} | {"loss_semantic"}


def test_weights_and_gradients():
    targets = [make_targets(1, 3), make_targets(2, 2)]
    out = random_outputs(1, 2)
    leaves = [out["pred_logits"], out["pred_masks"], out["pixel_features"], out["semantic_logits"]]
    for t in leaves:
        t.requires_grad_(True)
    crit = MaXDeepLabCriterion(K, sample_k=40)
    terms = crit(out, targets, generator=torch.Generator().manual_seed(0))
    weighted = crit.weighted(terms)
    assert weighted["loss_pq_class"].item() == pytest.approx(3.0 * terms["loss_pq_class"].item())
    assert weighted["loss_mask_id_0"].item() == pytest.approx(0.3 * terms["loss_mask_id_0"].item())
    assert all(v.item() > 0 for v in terms.values())
    crit.total(terms).backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in leaves)
    with pytest.raises(KeyError, match="unknown loss term"):
        crit.weight_of("loss_box")
    with pytest.raises(ValueError, match="pred_logits"):
        crit({**out, "pred_logits": out["pred_logits"][..., :-1]}, targets)


def test_sampling_follows_inverse_area():
    # one image repeated: a segment of 4 pixels, one of 60, and 16 void pixels
    one_hot = torch.zeros(1, 2, 80)
    one_hot[0, 0, :4] = 1
    one_hot[0, 1, 4:64] = 1
    valid = torch.ones(1, 2, dtype=torch.bool)
    draws = sample_pixels_by_inverse_area(one_hot.expand(4000, -1, -1), valid.expand(4000, -1), 1, temperature=1.0,
                                          generator=torch.Generator().manual_seed(0)).flatten()
    # temperature 1: P(pixel) ~ 1 / area of its segment, so each segment is drawn half the time
    small = (draws < 4).float().mean().item()
    assert abs(small - 0.5) < 0.03 and bool((draws < 64).all())
    many = sample_pixels_by_inverse_area(one_hot, valid, 64, generator=torch.Generator().manual_seed(1))
    assert sorted(many[0].tolist()) == list(range(64))  # without replacement, void last


def test_instance_loss_is_minimal_for_separated_features():
    one_hot = torch.zeros(1, 2, 6)
    one_hot[0, 0, :3] = 1
    one_hot[0, 1, 3:] = 1
    valid = torch.ones(1, 2, dtype=torch.bool)
    samples = torch.arange(6)[None]
    apart = torch.zeros(1, 2, 6)
    apart[0, 0, :3] = 1
    apart[0, 1, 3:] = 1
    mixed = torch.nn.functional.normalize(torch.ones(1, 2, 6), dim=1)
    low = instance_discrimination_loss(apart, one_hot, valid, samples)
    high = instance_discrimination_loss(mixed, one_hot, valid, samples)
    assert high.item() == pytest.approx(math.log(6), rel=1e-5)  # equal similarities: uniform over the 6 samples
    assert low.item() < high.item()

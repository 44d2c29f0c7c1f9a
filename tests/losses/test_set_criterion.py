"""SetCriterion against HF transformers' Mask2FormerLoss (identical random points) and DETR's
ImageLoss, against loops, and the expected loss of shared point draws."""

from __future__ import annotations

import pytest
import torch

from lightning_seg.losses.set_criterion import SetCriterion

NUM_POINTS = 64


def _fixed_rand(num_points: int, same_rows: bool = False):
    """A stand-in for ``torch.rand`` whose values depend only on the requested shape.

    Shapes ``[n, num_points, 2]`` (one point set per image for matching) return the same row
    for every image, so a batched matcher and a per-image loop see the same points; other
    shapes return the first ``n`` rows of a fixed table, so the loss's point draws agree
    whenever both sides list the matched masks in the same order. With ``same_rows`` every
    shape returns one repeated row: then per-image draws (``SetCriterion(shared_points=True)``)
    and per-mask draws (HF) hand every mask the same candidates.
    """
    tables: dict[int, torch.Tensor] = {}

    def rand(*size, device=None, dtype=None, generator=None, **kwargs):
        if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)):
            size = tuple(size[0])
        n, p, d = size
        if p not in tables:
            g = torch.Generator().manual_seed(1000 + p)
            tables[p] = torch.empty(256, p, d).uniform_(generator=g)
        if p == num_points or same_rows:
            out = tables[p][:1].expand(n, p, d)
        else:
            out = tables[p][:n]
        return out.clone().to(device=device or "cpu", dtype=dtype or torch.float32)

    return rand


def _fix_random_points(monkeypatch, rand) -> None:
    """Route every random point draw of both implementations through ``rand``.

    HF draws with ``torch.rand``; the criterion draws its shared points with
    ``rand_points_row_major`` (the same distribution, ordered by row), redirected here to
    ``torch.rand`` with the same shapes.
    """
    import lightning_seg.losses.set_terms as set_terms

    monkeypatch.setattr(torch, "rand", rand)
    monkeypatch.setattr(
        set_terms, "rand_points_row_major", lambda g, n, device=None, generator=None: rand(g, n, 2)
    )


def _problem(seed: int, num_targets=(3, 0, 5), q=8, k=5, h=12, hp=48):
    g = torch.Generator().manual_seed(seed)
    b = len(num_targets)
    logits = torch.randn(b, q, k + 1, generator=g)
    masks = torch.randn(b, q, h, h, generator=g) * 3
    aux = [
        {"pred_logits": torch.randn(b, q, k + 1, generator=g), "pred_masks": torch.randn(b, q, h, h, generator=g)}
        for _ in range(2)
    ]
    targets = []
    for i, n in enumerate(num_targets):
        m = torch.rand(n, hp, hp, generator=g) > 0.6
        targets.append({"masks": m, "labels": torch.randint(0, k, (n,), generator=g), "image_id": i})
    return logits, masks, aux, targets


def _hf_loss(k: int, num_points: int):
    m2f = pytest.importorskip("transformers.models.mask2former.modeling_mask2former")
    from transformers import Mask2FormerConfig

    cfg = Mask2FormerConfig(
        num_labels=k, train_num_points=num_points, oversample_ratio=3.0, importance_sample_ratio=0.75,
        class_weight=2.0, mask_weight=5.0, dice_weight=5.0, no_object_weight=0.1,
    )
    return m2f.Mask2FormerLoss(cfg, weight_dict={})


@pytest.mark.parametrize("shared_points", [False, True])
@pytest.mark.parametrize("queries", [8, 4])  # 4 queries: some targets of image 2 stay unmatched
def test_matches_hf_mask2former_loss_with_aux_layers(monkeypatch, shared_points, queries):
    k = 5
    logits, masks, aux, targets = _problem(0, num_targets=(3, 0, 5), q=queries)
    ours = SetCriterion(num_classes=k, num_points=NUM_POINTS, shared_points=shared_points)
    hf = _hf_loss(k, NUM_POINTS)
    _fix_random_points(monkeypatch, _fixed_rand(NUM_POINTS, same_rows=shared_points))
    got = ours({"pred_logits": logits, "pred_masks": masks, "aux_outputs": aux}, targets)
    ref = hf(
        masks, logits, [t["masks"].float() for t in targets], [t["labels"] for t in targets],
        [{"masks_queries_logits": a["pred_masks"], "class_queries_logits": a["pred_logits"]} for a in aux],
    )
    names = {"loss_ce": "loss_cross_entropy", "loss_mask": "loss_mask", "loss_dice": "loss_dice"}
    assert len(got) == len(ref) == 9
    for key, value in got.items():
        base, _, layer = key.partition("_")[2].partition("_")
        hf_key = names["loss_" + base] + (f"_{layer}" if layer else "")
        torch.testing.assert_close(value, ref[hf_key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("shared_points", [False, True])
def test_gradients_match_hf(monkeypatch, shared_points):
    k = 5
    logits, masks, _, targets = _problem(1, num_targets=(2, 4, 3))
    _fix_random_points(monkeypatch, _fixed_rand(NUM_POINTS, same_rows=shared_points))
    ours_in = [logits.clone().requires_grad_(), masks.clone().requires_grad_()]
    hf_in = [logits.clone().requires_grad_(), masks.clone().requires_grad_()]
    crit = SetCriterion(num_classes=k, num_points=NUM_POINTS, shared_points=shared_points)
    crit.total(crit({"pred_logits": ours_in[0], "pred_masks": ours_in[1]}, targets)).backward()
    ref = _hf_loss(k, NUM_POINTS)(hf_in[1], hf_in[0], [t["masks"].float() for t in targets], [t["labels"] for t in targets])
    (2.0 * ref["loss_cross_entropy"] + 5.0 * ref["loss_mask"] + 5.0 * ref["loss_dice"]).backward()
    for a, b in zip(ours_in, hf_in):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)


def test_images_without_targets_and_empty_batch():
    k = 4
    logits, masks, aux, targets = _problem(2, num_targets=(0, 2, 0), k=k)
    crit = SetCriterion(num_classes=k, num_points=NUM_POINTS)
    out = crit({"pred_logits": logits.requires_grad_(), "pred_masks": masks.requires_grad_(), "aux_outputs": aux}, targets)
    assert all(torch.isfinite(v) for v in out.values())
    crit.total(out).backward()
    logits, masks, _, targets = _problem(3, num_targets=(0, 0), k=k)
    out = crit({"pred_logits": logits, "pred_masks": masks}, targets)
    # No targets at all: every query is no-object, mask terms vanish.
    ref_ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), torch.full((2, 8), k))
    torch.testing.assert_close(out["loss_ce"], ref_ce)
    assert out["loss_mask"] == 0 and out["loss_dice"] == 0


def test_weights_and_total():
    crit = SetCriterion(num_classes=3, class_weight=1.5, mask_weight=4.0, dice_weight=0.5)
    losses = {"loss_ce": torch.tensor(1.0), "loss_mask": torch.tensor(2.0), "loss_dice_3": torch.tensor(4.0)}
    assert crit.total(losses).item() == pytest.approx(1.5 + 8.0 + 2.0)
    with pytest.raises(KeyError, match="loss_foo"):
        crit.weight_of("loss_foo")


def test_bad_targets_are_named():
    crit = SetCriterion(num_classes=3, num_points=16)
    logits, masks, _, targets = _problem(4, num_targets=(2, 2), k=3)
    targets[1]["labels"] = torch.tensor([0, 7])
    with pytest.raises(ValueError, match=r"target 1 \(image_id=1\).*outside"):
        crit({"pred_logits": logits, "pred_masks": masks}, targets)
    with pytest.raises(ValueError, match=r"\[B,Q,4\]"):
        crit({"pred_logits": logits[..., :3], "pred_masks": masks}, targets)


def _focal(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean sigmoid focal loss over pixels, by torchvision (the reference)."""
    from torchvision.ops import sigmoid_focal_loss

    return sigmoid_focal_loss(x, y, alpha=0.25, gamma=2.0, reduction="mean")


def test_dense_masks_term_matches_loop():
    """MaskFormer's terms (focal + dice on full masks) equal a per-image loop over scipy matches."""
    from scipy.optimize import linear_sum_assignment

    k = 4
    logits, masks, _, targets = _problem(5, num_targets=(3, 2), k=k, h=8, hp=16)
    crit = SetCriterion(num_classes=k, losses=["labels", "dense_masks"], class_weight=1.0, mask_weight=20.0,
                        dice_weight=1.0)
    got = crit({"pred_logits": logits, "pred_masks": masks}, targets)
    up = torch.nn.functional.interpolate(masks, size=(16, 16), mode="bilinear", align_corners=False)
    ce_t = torch.full((2, 8), k)
    focal_sum, dice_sum = 0.0, 0.0
    for i, t in enumerate(targets):
        prob = logits[i].softmax(-1)
        x = up[i].flatten(1)
        y = t["masks"].flatten(1).float()
        cost = torch.zeros(8, len(y))
        for qi in range(8):
            for ti in range(len(y)):
                s = x[qi].sigmoid()
                dice = 1 - (2 * (s * y[ti]).sum() + 1) / (s.sum() + y[ti].sum() + 1)
                cost[qi, ti] = -prob[qi, t["labels"][ti]] + 20 * _focal(x[qi], y[ti]) + dice
        rows, cols = linear_sum_assignment(cost.numpy())
        for r, c in zip(rows, cols):
            ce_t[i, r] = t["labels"][c]
            focal_sum += _focal(x[r], y[c])
            s = x[r].sigmoid()
            dice_sum += 1 - (2 * (s * y[c]).sum() + 1) / (s.sum() + y[c].sum() + 1)
    weight = torch.ones(k + 1)
    weight[-1] = 0.1
    torch.testing.assert_close(got["loss_ce"], torch.nn.functional.cross_entropy(logits.transpose(1, 2), ce_t, weight=weight))
    torch.testing.assert_close(got["loss_mask"], focal_sum / 5, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got["loss_dice"], dice_sum / 5, rtol=1e-5, atol=1e-6)


def _detr_problem(seed: int, num_targets=(3, 0, 4), q=7, k=4, size=(24, 32)):
    g = torch.Generator().manual_seed(seed)
    b, (h, w) = len(num_targets), size
    out = {"pred_logits": torch.randn(b, q, k + 1, generator=g), "pred_boxes": torch.rand(b, q, 4, generator=g) * 0.5 + 0.2,
           "pred_masks": torch.randn(b, q, h // 4, w // 4, generator=g)}
    targets = []
    for i, n in enumerate(num_targets):
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.4, h * 0.4]) + 1
        targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(0, k, (n,), generator=g),
                        "masks": torch.rand(n, h, w, generator=g) > 0.5, "image_size": (h, w), "image_id": i})
    return out, targets


@pytest.mark.parametrize("with_masks", [False, True])
def test_boxes_term_matches_hf_detr_loss(with_masks):
    """labels + boxes (+ dense masks trained on the box matching) equal HF's DETR ImageLoss."""
    hf = pytest.importorskip("transformers.loss.loss_for_object_detection")
    from torchvision.ops import box_convert

    k = 4
    out, targets = _detr_problem(7)
    losses = ["labels", "boxes"] + (["dense_masks"] if with_masks else [])
    ours = SetCriterion(num_classes=k, losses=losses, match_losses=["labels", "boxes"], class_weight=1.0,
                        mask_weight=1.0, dice_weight=1.0, bbox_weight=5.0, giou_weight=2.0)
    leaves = {key: v.clone().requires_grad_() for key, v in out.items()}
    got = ours(leaves, targets)
    ref_crit = hf.ImageLoss(hf.HungarianMatcher(class_cost=1, bbox_cost=5, giou_cost=2), k, 0.1, losses[:2] + (
        ["masks"] if with_masks else []))
    ref_in = {key: v.clone().requires_grad_() for key, v in out.items()}
    scale = torch.tensor([32.0, 24.0, 32.0, 24.0])
    ref_targets = [{"class_labels": t["labels"], "boxes": box_convert(t["boxes"] / scale, "xyxy", "cxcywh"),
                    "masks": t["masks"].float()} for t in targets]
    ref = ref_crit({"logits": ref_in["pred_logits"], "pred_boxes": ref_in["pred_boxes"],
                    "pred_masks": ref_in["pred_masks"]}, ref_targets)
    assert set(got) == set(ours.weights) and len(got) == (5 if with_masks else 3)
    for key in got:
        torch.testing.assert_close(got[key], ref[key], rtol=1e-5, atol=1e-6, msg=key)
    sum(got.values()).backward()
    sum(ref[key] for key in got).backward()
    for key in leaves:
        torch.testing.assert_close(leaves[key].grad, ref_in[key].grad, rtol=1e-4, atol=1e-6, msg=key)


def test_generalized_iou_cost_is_torchvision_per_image():
    from torchvision.ops import box_convert, generalized_box_iou

    from lightning_seg.ops import generalized_iou_cost

    out, targets = _detr_problem(8, num_targets=(2, 3))
    tgt = torch.rand(2, 3, 4) * 0.4 + 0.1
    got = generalized_iou_cost(out["pred_boxes"], tgt)
    for i in range(2):
        want = -generalized_box_iou(box_convert(out["pred_boxes"][i], "cxcywh", "xyxy"), box_convert(tgt[i], "cxcywh", "xyxy"))
        torch.testing.assert_close(got[i], want)


def test_boxes_term_needs_boxes_and_match_losses_are_checked():
    out, targets = _detr_problem(9)
    with pytest.raises(ValueError, match=r"boxes must be a \[N=3, 4\]"):
        SetCriterion(4, losses=["labels", "boxes"])(out, [{k: v for k, v in t.items() if k != "boxes"} for t in targets])
    with pytest.raises(ValueError, match="match_losses"):
        SetCriterion(4, losses=["labels", "boxes"], match_losses=["masks"])
    with pytest.raises(ValueError, match="choose one"):
        SetCriterion(4, losses=["labels", "masks", "dense_masks"])
    with pytest.raises(KeyError, match="pred_boxes"):
        SetCriterion(4, losses=["labels", "boxes"])({"pred_logits": out["pred_logits"]}, targets)


def _loss_draws(shared: bool, draws: int, importance_sample_ratio: float = 0.75) -> torch.Tensor:
    """``[draws, 9]`` loss terms (3 layers x ce/mask/dice) of one problem under fresh random points."""
    logits, masks, aux, targets = _problem(10, num_targets=(3, 2), q=6, k=4, h=10, hp=20)
    crit = SetCriterion(num_classes=4, num_points=12, importance_sample_ratio=importance_sample_ratio,
                        shared_points=shared)
    out = []
    for seed in range(draws):
        torch.manual_seed(seed + (0 if shared else 100_000))
        terms = crit({"pred_logits": logits, "pred_masks": masks, "aux_outputs": aux}, targets)
        out.append(torch.stack([terms[key] for key in sorted(terms)]))
    return torch.stack(out).double()


def test_shared_points_have_the_expected_loss_of_per_mask_draws():
    """Over many draws, every layer's loss_ce / loss_mask / loss_dice has the same mean with
    shared and with per-mask points (difference within 4 standard errors); a change of the
    point distribution (no importance sampling) is detected by the same test."""
    n = 400
    shared, per_mask = _loss_draws(True, n), _loss_draws(False, n)
    se = (shared.var(0) / n + per_mask.var(0) / n).sqrt()
    assert (se > 0).all()  # the draws do vary
    z = (shared.mean(0) - per_mask.mean(0)).abs() / se
    assert (z < 4).all(), z
    other = _loss_draws(False, n, importance_sample_ratio=0.0)
    z_other = (shared.mean(0) - other.mean(0)).abs() / (shared.var(0) / n + other.var(0) / n).sqrt()
    assert (z_other > 4).any(), z_other


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_outputs_give_float32_losses_close_to_fp32(dtype, monkeypatch):
    k = 5
    logits, masks, _, targets = _problem(6, num_targets=(3, 2), k=k)
    logits, masks = logits.to(dtype), masks.to(dtype)  # round once; both runs see these values
    crit = SetCriterion(num_classes=k, num_points=NUM_POINTS)
    _fix_random_points(monkeypatch, _fixed_rand(NUM_POINTS))
    low = crit({"pred_logits": logits, "pred_masks": masks.requires_grad_()}, targets)
    ref = crit({"pred_logits": logits.float(), "pred_masks": masks.detach().float()}, targets)
    for key in ref:
        assert low[key].dtype == torch.float32
        torch.testing.assert_close(low[key], ref[key], rtol=1e-4, atol=1e-5)
    crit.total(low).backward()
    assert masks.grad is not None and masks.grad.dtype == dtype


def _num_masks_worker(rank: int, init_file: str, counts: list[int], out: dict) -> None:
    import torch.distributed as dist

    from lightning_seg.losses.set_criterion import average_num_masks

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=len(counts))
    try:
        out[rank] = float(average_num_masks(torch.tensor(float(counts[rank]))))
    finally:
        dist.destroy_process_group()


@pytest.mark.ddp
def test_num_masks_is_averaged_across_ranks(tmp_path):
    """Two gloo ranks with 4 and 1 target masks both normalise by (4 + 1) / 2."""
    import torch.multiprocessing as mp

    from lightning_seg.losses.set_criterion import average_num_masks

    assert float(average_num_masks(torch.tensor(0.0))) == 1.0  # clamped, no process group
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_num_masks_worker, args=(str(tmp_path / "init"), [4, 1], out), nprocs=2, join=True)
        assert dict(out) == {0: 2.5, 1: 2.5}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_detr_box_matching_equals_a_per_image_scipy_loop(seed):
    """DETR's matcher (class 1, L1 box 5, GIoU 2) for the whole batch = scipy per image on the same costs."""
    from scipy.optimize import linear_sum_assignment
    from torchvision.ops import box_convert, generalized_box_iou

    from lightning_seg.losses.set_targets import pad_targets

    k = 4
    out, targets = _detr_problem(seed, num_targets=(3, 0, 6, 7), q=7, k=k)
    crit = SetCriterion(num_classes=k, losses=["labels", "boxes"], class_weight=1.0, bbox_weight=5.0, giou_weight=2.0)
    padded = pad_targets(targets, k, with_boxes=True)
    contexts = {name: term.prepare(padded) for name, term in crit.terms.items()}
    matching = crit.match(out, padded, contexts)
    for i, t in enumerate(targets):
        n = len(t["labels"])
        h, w = t["image_size"]
        got = {(int(p), int(matching.target_for_pred[i, p])) for p in range(7) if matching.target_for_pred[i, p] >= 0}
        if n == 0:
            assert got == set()
            continue
        tgt = box_convert(t["boxes"] / torch.tensor([w, h, w, h]), "xyxy", "cxcywh")
        prob = out["pred_logits"][i].softmax(-1)
        cost = torch.zeros(7, n)
        for p in range(7):
            for j in range(n):
                l1 = (out["pred_boxes"][i, p] - tgt[j]).abs().sum()
                giou = generalized_box_iou(box_convert(out["pred_boxes"][i, p : p + 1], "cxcywh", "xyxy"),
                                           box_convert(tgt[j : j + 1], "cxcywh", "xyxy"))[0, 0]
                cost[p, j] = -prob[p, t["labels"][j]] + 5 * l1 - 2 * giou
        rows, cols = linear_sum_assignment(cost.numpy())
        assert got == {(int(r), int(c)) for r, c in zip(rows, cols)}

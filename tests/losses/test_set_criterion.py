"""SetCriterion against HF transformers' Mask2FormerLoss with identical random points."""

from __future__ import annotations

import pytest
import torch

from lightning_seg.losses.set_criterion import SetCriterion
from lightning_seg.losses.set_mask_losses import sigmoid_focal_per_mask

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
    import lightning_seg.losses.set_criterion as set_criterion

    monkeypatch.setattr(torch, "rand", rand)
    monkeypatch.setattr(
        set_criterion, "rand_points_row_major", lambda g, n, device=None, generator=None: rand(g, n, 2)
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


def test_maskformer_variant_matches_loop():
    """Focal + dice on full masks equals a per-image loop over scipy matches."""
    from scipy.optimize import linear_sum_assignment

    k = 4
    logits, masks, _, targets = _problem(5, num_targets=(3, 2), k=k, h=8, hp=16)
    crit = SetCriterion(num_classes=k, variant="maskformer", class_weight=1.0, mask_weight=20.0, dice_weight=1.0)
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
                focal = sigmoid_focal_per_mask(x[qi : qi + 1], y[ti : ti + 1])[0]
                s = x[qi].sigmoid()
                dice = 1 - (2 * (s * y[ti]).sum() + 1) / (s.sum() + y[ti].sum() + 1)
                cost[qi, ti] = -prob[qi, t["labels"][ti]] + 20 * focal + dice
        rows, cols = linear_sum_assignment(cost.numpy())
        for r, c in zip(rows, cols):
            ce_t[i, r] = t["labels"][c]
            focal_sum += sigmoid_focal_per_mask(x[r : r + 1], y[c : c + 1])[0]
            s = x[r].sigmoid()
            dice_sum += 1 - (2 * (s * y[c]).sum() + 1) / (s.sum() + y[c].sum() + 1)
    weight = torch.ones(k + 1)
    weight[-1] = 0.1
    torch.testing.assert_close(got["loss_ce"], torch.nn.functional.cross_entropy(logits.transpose(1, 2), ce_t, weight=weight))
    torch.testing.assert_close(got["loss_mask"], focal_sum / 5, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got["loss_dice"], dice_sum / 5, rtol=1e-5, atol=1e-6)


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

"""Per-pixel losses against direct references written here (numpy loops, PyTorch, Berman's algorithm)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lightning_seg.losses import (
    CombinedLoss,
    CrossEntropyLoss,
    DiceLoss,
    FocalLoss,
    LovaszSoftmaxLoss,
    OhemCrossEntropyLoss,
    class_weights_from_counts,
    compute_class_weights,
    count_class_pixels,
    load_class_weights,
    ohem_keep_mask,
)

IGNORE = 255


def make_inputs(b=2, k=4, h=5, w=6, ignore_frac=0.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, k, h, w, generator=g) * 2
    target = torch.randint(0, k, (b, h, w), generator=g)
    target[torch.rand(b, h, w, generator=g) < ignore_frac] = IGNORE
    return logits, target


def pixels(logits, target):
    """(probs [P,K], labels [P]) of the labelled pixels, as float64 numpy."""
    k = logits.shape[1]
    p = logits.double().softmax(1).permute(0, 2, 3, 1).reshape(-1, k).numpy()
    t = target.reshape(-1).numpy()
    keep = t != IGNORE
    return p[keep], t[keep]


ALL_LOSSES = [
    CrossEntropyLoss(),
    CrossEntropyLoss(class_weights=[1.0, 2.0, 0.5, 1.0]),
    FocalLoss(gamma=2.0, alpha=[0.25, 0.5, 0.75, 1.0]),
    DiceLoss(),
    DiceLoss(smooth=0.0, per_image=True),
    OhemCrossEntropyLoss(threshold=0.7, min_kept=3),
    OhemCrossEntropyLoss(threshold=None, min_kept=3),
    LovaszSoftmaxLoss(),
    LovaszSoftmaxLoss(classes="all", per_image=True, class_chunk=None),
    CombinedLoss([CrossEntropyLoss(), DiceLoss()], [1.0, 0.5]),
]


# ----------------------------------------------------------------- cross-entropy
@pytest.mark.parametrize("weights", [None, [1.0, 2.0, 0.5, 3.0]])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_matches_torch_mean(weights, smoothing):
    logits, target = make_inputs()
    ours = CrossEntropyLoss(class_weights=weights, label_smoothing=smoothing)(logits, target)
    w = None if weights is None else torch.tensor(weights)
    ref = F.cross_entropy(logits, target, weight=w, ignore_index=IGNORE, label_smoothing=smoothing)
    torch.testing.assert_close(ours, ref)


def test_weighted_cross_entropy_matches_loop():
    logits, target = make_inputs(seed=3)
    weights = [0.5, 1.0, 2.0, 4.0]
    p, t = pixels(logits, target)
    num = sum(weights[c] * -math.log(p[i, c]) for i, c in enumerate(t))
    den = sum(weights[c] for c in t)
    ours = CrossEntropyLoss(class_weights=weights)(logits, target)
    assert ours.item() == pytest.approx(num / den, rel=1e-5)


# ----------------------------------------------------------------- focal
@pytest.mark.parametrize("gamma,alpha", [(0.0, None), (2.0, None), (1.5, 0.25), (2.0, [0.1, 0.2, 0.3, 0.4])])
def test_focal_matches_formula(gamma, alpha):
    logits, target = make_inputs(seed=1)
    p, t = pixels(logits, target)
    total = 0.0
    for i, c in enumerate(t):
        a = 1.0 if alpha is None else (alpha if isinstance(alpha, float) else alpha[c])
        total += -a * (1 - p[i, c]) ** gamma * math.log(p[i, c])
    ours = FocalLoss(gamma=gamma, alpha=alpha)(logits, target)
    assert ours.item() == pytest.approx(total / len(t), rel=1e-5)


def test_focal_with_gamma_zero_is_cross_entropy():
    logits, target = make_inputs(seed=2)
    torch.testing.assert_close(FocalLoss(gamma=0.0)(logits, target), CrossEntropyLoss()(logits, target))


# ----------------------------------------------------------------- dice
@pytest.mark.parametrize("smooth,exponent,per_image", [(1.0, 1, False), (0.5, 2, False), (1.0, 1, True)])
def test_dice_matches_loop(smooth, exponent, per_image):
    logits, target = make_inputs(seed=4)
    k = logits.shape[1]
    groups = [(logits[i : i + 1], target[i : i + 1]) for i in range(logits.shape[0])] if per_image else [(logits, target)]
    losses = []
    for lg, tg in groups:
        p, t = pixels(lg, tg)
        per_class = []
        for c in range(k):
            onehot = (t == c).astype(np.float64)
            inter = (p[:, c] * onehot).sum()
            card = (p[:, c] ** exponent).sum() + (onehot**exponent).sum()
            per_class.append(1 - (2 * inter + smooth) / (card + smooth))
        losses.append(np.mean(per_class))
    ours = DiceLoss(smooth=smooth, exponent=exponent, per_image=per_image)(logits, target)
    assert ours.item() == pytest.approx(float(np.mean(losses)), rel=1e-5)


def test_dice_perfect_prediction_is_zero():
    target = torch.tensor([[[0, 1], [2, IGNORE]]])
    logits = F.one_hot(torch.where(target == IGNORE, 0, target), 3).permute(0, 3, 1, 2).float() * 50
    assert DiceLoss(smooth=0.0)(logits, target).item() == pytest.approx(0.0, abs=1e-6)


# ----------------------------------------------------------------- OHEM
def test_ohem_threshold_keeps_expected_pixels():
    # True-class probabilities 0.1, 0.5, 0.8, 0.95 (2 classes, 1x4 image) plus one ignored pixel.
    probs = torch.tensor([0.1, 0.5, 0.8, 0.95, 0.3])
    logits = torch.stack([torch.log(probs), torch.log1p(-probs)]).view(1, 2, 1, 5)
    target = torch.tensor([[[0, 0, 0, 0, IGNORE]]])
    # min_kept=1 -> the 2nd smallest prob (0.5) is below the 0.7 threshold: keep p < 0.7.
    keep = ohem_keep_mask(logits, target, IGNORE, threshold=0.7, min_kept=1)
    assert keep.view(-1).tolist() == [True, True, False, False, False]
    # min_kept=2 -> the threshold rises to the 3rd smallest prob (0.8): keep p < 0.8.
    keep = ohem_keep_mask(logits, target, IGNORE, threshold=0.3, min_kept=2)
    assert keep.view(-1).tolist() == [True, True, False, False, False]
    keep = ohem_keep_mask(logits, target, IGNORE, threshold=0.3, min_kept=3)
    assert keep.view(-1).tolist() == [True, True, True, False, False]
    loss = OhemCrossEntropyLoss(threshold=0.7, min_kept=1)(logits, target)
    assert loss.item() == pytest.approx(-(math.log(0.1) + math.log(0.5)) / 2, rel=1e-5)


def mmseg_style_ohem(logits, target, thresh, min_kept):
    """The OHEM rule as a plain numpy routine: sort true-class probabilities, threshold."""
    p, t = pixels(logits, target)
    pt = p[np.arange(len(t)), t]
    batch_kept = min_kept * logits.shape[0]
    if thresh is not None:
        srt = np.sort(pt)
        cut = max(srt[min(batch_kept, len(srt) - 1)], thresh)
        keep = pt < cut
    else:
        keep = np.zeros(len(t), bool)
        keep[np.argsort(-(-np.log(pt)), kind="stable")[:batch_kept]] = True
    return float((-np.log(pt))[keep].mean()), keep.sum()


@pytest.mark.parametrize("thresh,min_kept", [(0.7, 5), (0.3, 20), (None, 7), (0.9, 1000)])
def test_ohem_matches_reference_rule(thresh, min_kept):
    logits, target = make_inputs(b=2, k=5, h=8, w=8, seed=5)
    expected, n_kept = mmseg_style_ohem(logits, target, thresh, min_kept)
    ours = OhemCrossEntropyLoss(threshold=thresh, min_kept=min_kept)(logits, target)
    assert ours.item() == pytest.approx(expected, rel=1e-5)
    assert n_kept > 0


# ----------------------------------------------------------------- Lovasz
def berman_lovasz_flat(p, t, classes):
    """Berman et al.'s reference algorithm, one class at a time."""
    losses = []
    for c in range(p.shape[1]):
        fg = (t == c).astype(np.float64)
        if classes == "present" and fg.sum() == 0:
            continue
        errors = np.abs(fg - p[:, c])
        order = np.argsort(-errors, kind="stable")
        errors_sorted, fg_sorted = errors[order], fg[order]
        gts = fg_sorted.sum()
        intersection = gts - np.cumsum(fg_sorted)
        union = gts + np.cumsum(1 - fg_sorted)
        jaccard = 1.0 - intersection / union
        jaccard[1:] = jaccard[1:] - jaccard[:-1]
        losses.append(float(errors_sorted @ jaccard))
    return float(np.mean(losses)) if losses else 0.0


@pytest.mark.parametrize("classes", ["present", "all"])
@pytest.mark.parametrize("per_image", [False, True])
def test_lovasz_matches_reference(classes, per_image):
    logits, target = make_inputs(b=2, k=5, h=6, w=7, seed=6)
    target[1][target[1] == 3] = 1  # class 3 absent from image 1
    if per_image:
        expected = np.mean([berman_lovasz_flat(*pixels(logits[i : i + 1], target[i : i + 1]), classes) for i in range(2)])
    else:
        expected = berman_lovasz_flat(*pixels(logits, target), classes)
    for chunk in (None, 2):
        ours = LovaszSoftmaxLoss(classes=classes, per_image=per_image, class_chunk=chunk)(logits, target)
        assert ours.item() == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_lovasz_gradient_matches_autograd_of_reference():
    logits, target = make_inputs(b=1, k=3, h=4, w=4, seed=7)
    logits.requires_grad_(True)
    LovaszSoftmaxLoss()(logits, target).backward()
    # Finite differences on a generic point (ties have measure zero).
    eps = 1e-4
    flat = logits.detach().clone().view(-1)
    num = torch.zeros_like(flat)
    for i in range(flat.numel()):
        for sign in (1, -1):
            x = flat.clone()
            x[i] += sign * eps
            num[i] += sign * berman_lovasz_flat(*pixels(x.view_as(logits), target), "present")
    num /= 2 * eps
    torch.testing.assert_close(logits.grad.view(-1), num.float(), rtol=1e-2, atol=1e-3)


# ----------------------------------------------------------------- all-ignore, bad input
@pytest.mark.parametrize("loss", ALL_LOSSES, ids=lambda m: type(m).__name__)
def test_all_ignore_batch_gives_zero_with_defined_gradient(loss):
    logits = torch.randn(2, 4, 5, 6, requires_grad=True)
    target = torch.full((2, 5, 6), IGNORE)
    value = loss(logits, target)
    assert value.ndim == 0 and torch.isfinite(value) and value.item() == 0.0
    value.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and (logits.grad == 0).all()


@pytest.mark.parametrize("loss", ALL_LOSSES, ids=lambda m: type(m).__name__)
def test_losses_are_finite_and_differentiable_in_half_precision(loss):
    logits, target = make_inputs()
    logits = logits.to(torch.bfloat16).requires_grad_(True)
    value = loss(logits, target)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    assert torch.isfinite(logits.grad.float()).all()


@pytest.mark.parametrize("loss", ALL_LOSSES[:9], ids=lambda m: type(m).__name__)
def test_bad_inputs_raise_naming_the_loss(loss):
    logits, target = make_inputs()
    name = type(loss).__name__
    with pytest.raises(ValueError, match=name):
        loss(logits, target[:, :-1])
    with pytest.raises(ValueError, match=name):
        loss(logits, target.float())
    bad = target.clone()
    bad[0, 0, 0] = 7
    with pytest.raises(RuntimeError, match="outside"):
        loss(logits, bad)


def test_wrong_number_of_class_weights_raises():
    logits, target = make_inputs(k=4)
    with pytest.raises(ValueError, match="3 class weights for 4 classes"):
        CrossEntropyLoss(class_weights=[1.0, 1.0, 1.0])(logits, target)
    with pytest.raises(ValueError, match="class_weights"):
        CrossEntropyLoss(class_weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="alpha"):
        FocalLoss(alpha=[1.0, 1.0])(logits, target)


# ----------------------------------------------------------------- class weights
def known_maps():
    return [torch.tensor([[0, 0], [0, 1]]), torch.tensor([[0, 2], [2, IGNORE]])]


def test_class_weights_from_known_frequency_table():
    counts, totals, n = count_class_pixels(known_maps(), num_classes=4)
    assert n == 2 and counts.tolist() == [4, 1, 2, 0] and totals.tolist() == [7, 4, 3, 0]
    # freq = 4/7, 1/4, 2/3 -> median 4/7.
    mf = class_weights_from_counts(counts, totals, "median_frequency")
    torch.testing.assert_close(mf, torch.tensor([1.0, 16 / 7, 6 / 7, 0.0]))
    inv = class_weights_from_counts(counts, totals, "inverse")
    torch.testing.assert_close(inv, torch.tensor([7 / 12, 7 / 3, 7 / 6, 0.0]))
    enet = class_weights_from_counts(counts, totals, "enet")
    expected = [1 / math.log(1.02 + c / 7) for c in (4, 1, 2)] + [0.0]
    torch.testing.assert_close(enet, torch.tensor(expected))


def test_class_weights_are_cached(tmp_path):
    cache = tmp_path / "counts.json"
    first = compute_class_weights(known_maps(), 4, "median_frequency", cache_file=cache)
    assert json.loads(cache.read_text())["pixel_counts"] == [4, 1, 2, 0]

    def must_not_iterate():
        raise AssertionError("dataset iterated although the counts are cached")
        yield

    again = compute_class_weights(must_not_iterate(), 4, "median_frequency", cache_file=cache)
    torch.testing.assert_close(first, again)
    inverse = compute_class_weights(must_not_iterate(), 4, "inverse", cache_file=cache)
    torch.testing.assert_close(inverse, torch.tensor([7 / 12, 7 / 3, 7 / 6, 0.0]))
    torch.testing.assert_close(load_class_weights(cache, "inverse"), inverse)
    loss = CrossEntropyLoss(class_weights=str(cache), class_weight_method="inverse")
    torch.testing.assert_close(loss.class_weights, inverse)
    with pytest.raises(ValueError, match="counts.json"):
        compute_class_weights(must_not_iterate(), 5, cache_file=cache)


def test_class_weights_reject_bad_maps():
    with pytest.raises(ValueError, match="semantic map 1"):
        count_class_pixels([torch.zeros(2, 2, dtype=torch.int64), torch.full((2, 2), 9)], 4)
    with pytest.raises(ValueError, match="semantic map 0"):
        count_class_pixels([torch.zeros(2, 2, dtype=torch.uint8)], 4)
    with pytest.raises(ValueError, match="method"):
        class_weights_from_counts(torch.tensor([1, 2]), torch.tensor([3, 3]), "sqrt")


def test_class_weights_on_real_ade20k_annotations(shared_data):
    folder = shared_data / "ade20k_sceneparsing_sample" / "sampleData" / "annotations"
    maps = []
    for path in sorted(folder.glob("*.png")):
        raw = torch.from_numpy(np.array(Image.open(path)).astype(np.int64))
        maps.append(torch.where(raw == 0, IGNORE, raw - 1))  # ADE20K: 0 = other, 1..150 = classes
    ours = compute_class_weights(maps, 150, "median_frequency")
    # Independent reference: numpy bincounts per image.
    counts = np.zeros(150)
    totals = np.zeros(150)
    for m in maps:
        labels = m.numpy()[m.numpy() != IGNORE]
        bc = np.bincount(labels, minlength=150)
        counts += bc
        totals += (bc > 0) * labels.size
    seen = counts > 0
    assert seen.sum() == 15
    freq = counts[seen] / totals[seen]
    expected = np.zeros(150)
    expected[seen] = np.median(freq) / freq
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-5)


# ----------------------------------------------------------------- combined / auxiliary
def test_combined_loss_is_weighted_sum_and_names_terms():
    logits, target = make_inputs(seed=8)
    ce, dice, dice2 = CrossEntropyLoss(), DiceLoss(), DiceLoss(smooth=0.0)
    combined = CombinedLoss([ce, dice, dice2], [1.0, 0.5, 2.0])
    expected = ce(logits, target) + 0.5 * dice(logits, target) + 2.0 * dice2(logits, target)
    torch.testing.assert_close(combined(logits, target), expected)
    assert list(combined.terms(logits, target)) == ["cross_entropy_loss", "dice_loss", "dice_loss_2"]
    with pytest.raises(ValueError, match="2 weights"):
        CombinedLoss([ce, dice, dice2], [1.0, 2.0])


def test_combined_loss_builds_from_class_path_config():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--loss", type=torch.nn.Module)
    cfg = parser.parse_object({"loss": {
        "class_path": "lightning_seg.losses.CombinedLoss",
        "init_args": {
            "losses": [
                {"class_path": "lightning_seg.losses.CrossEntropyLoss", "init_args": {"class_weights": [1.0, 2.0, 1.0, 1.0]}},
                {"class_path": "lightning_seg.losses.LovaszSoftmaxLoss"},
            ],
            "weights": [1.0, 0.25],
        },
    }})
    loss = parser.instantiate(cfg).loss
    assert isinstance(loss, CombinedLoss) and loss.weights == [1.0, 0.25]
    logits, target = make_inputs()
    assert torch.isfinite(loss(logits, target))

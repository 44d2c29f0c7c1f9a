"""Sliding-window and test-time-augmented inference against direct references."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_seg.ops.dense_inference import crop_and_resize, dense_probabilities, slide_inference


def _model(k: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, k, 3, padding=1)).eval()


@torch.no_grad()
def test_window_covering_image_equals_whole_image():
    model = _model()
    x = torch.rand(2, 3, 40, 50)
    whole = dense_probabilities(model, x, mode="whole")
    # a window at least as large as the image: one pass over the zero-padded image, cropped back
    slide = dense_probabilities(model, x, mode="slide", window=(40, 50), stride=(30, 30))
    assert torch.allclose(slide, whole, atol=1e-6)
    assert torch.allclose(whole, model(x).softmax(1), atol=1e-6)


@torch.no_grad()
def test_slide_equals_loop_reference():
    model = _model()
    x = torch.rand(1, 3, 45, 61)
    wh, ww, sh, sw = 20, 24, 13, 17
    out = slide_inference(model, x, (wh, ww), (sh, sw))
    # reference: every window position written out, last window flush with the far edge
    ys = list(range(0, 45 - wh + 1, sh))
    if ys[-1] != 45 - wh:
        ys.append(45 - wh)
    xs = list(range(0, 61 - ww + 1, sw))
    if xs[-1] != 61 - ww:
        xs.append(61 - ww)
    total = torch.zeros(1, 4, 45, 61)
    count = torch.zeros(45, 61)
    for y in ys:
        for x0 in xs:
            total[:, :, y : y + wh, x0 : x0 + ww] += model(x[:, :, y : y + wh, x0 : x0 + ww]).softmax(1)
            count[y : y + wh, x0 : x0 + ww] += 1
    assert (count > 0).all()
    assert torch.allclose(out, total / count, atol=1e-6)


@torch.no_grad()
def test_flip_and_scales_average():
    model = _model()
    x = torch.rand(1, 3, 32, 32)
    got = dense_probabilities(model, x, scales=(0.5, 1.0), flip=True)
    ref = []
    for s in (0.5, 1.0):
        xs = F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False) if s != 1.0 else x
        for flip in (False, True):
            p = model(xs.flip(-1) if flip else xs).softmax(1)
            p = p.flip(-1) if flip else p
            ref.append(F.interpolate(p, size=(32, 32), mode="bilinear", align_corners=False) if s != 1.0 else p)
    assert torch.allclose(got, torch.stack(ref).mean(0), atol=1e-6)
    assert torch.allclose(got.sum(1), torch.ones(1, 32, 32), atol=1e-5)


def test_crop_and_resize():
    prob = torch.zeros(2, 8, 8)
    prob[1, :4, :6] = 1
    out = crop_and_resize(prob, (4, 6), (8, 12))
    assert out.shape == (2, 8, 12) and torch.allclose(out[1], torch.ones(8, 12))

"""DETR: HF transformers' ``DetrForSegmentation`` weights load into ours and give its outputs."""

from __future__ import annotations

import pytest
import torch

from lightning_seg.models.detr import (
    DETR,
    convert_hf_detr_state_dict,
    load_hf_detr_weights,
)

transformers = pytest.importorskip("transformers", reason="HF transformers (the reference extra) is not installed")

TINY = dict(hidden_dim=32, nheads=8, enc_layers=1, dec_layers=2, dim_feedforward=64, num_queries=5)
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def hf_model(seed: int = 0):
    from transformers import DetrConfig, DetrForSegmentation

    torch.manual_seed(seed)
    cfg = DetrConfig(use_timm_backbone=True, backbone="resnet18", use_pretrained_backbone=False, d_model=32,
                     encoder_layers=1, decoder_layers=2, encoder_attention_heads=8, decoder_attention_heads=8,
                     encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=5, num_labels=4)
    model = DetrForSegmentation(cfg).eval()
    with torch.no_grad():  # frozen BN with statistics that are not the identity
        for m in model.modules():
            if getattr(m, "running_mean", None) is not None:
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def test_hf_detr_for_segmentation_weights_give_its_outputs():
    hf = hf_model()
    ours = DETR(4, backbone="resnet18", **TINY).eval()
    x = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    valid = torch.ones(2, 64, 96, dtype=torch.bool)
    valid[1, :, 64:] = False  # the second image is 40 x 64 inside the padded batch
    valid[1, 40:] = False
    with torch.no_grad():
        before = ours(x, valid)["pred_logits"]
        load_hf_detr_weights(ours, hf.state_dict())
        want = hf(pixel_values=(x - MEAN) / STD, pixel_mask=valid.long())
        got = ours(x, valid)
    assert not torch.allclose(before, want.logits)  # the random init was another model
    torch.testing.assert_close(got["pred_logits"], want.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got["pred_boxes"], want.pred_boxes, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got["pred_masks"], want.pred_masks, rtol=1e-5, atol=1e-5)
    assert len(got["aux_outputs"]) == 1 and got["aux_outputs"][0]["pred_boxes"].shape == (2, 5, 4)


def test_boxes_only_model_and_bad_weights():
    ours = DETR(4, backbone="resnet18", with_masks=False, **TINY).eval()
    out = ours(torch.rand(1, 3, 64, 64))
    assert "pred_masks" not in out and out["pred_logits"].shape == (1, 5, 5)
    assert ((out["pred_boxes"] >= 0) & (out["pred_boxes"] <= 1)).all()
    with pytest.raises(ValueError, match="no counterpart"):
        convert_hf_detr_state_dict({"model.backbone.conv_encoder.weird.weight": torch.zeros(1)})
    wrong = DETR(3, backbone="resnet18", **TINY)  # another class count than the checkpoint
    with pytest.raises(ValueError, match="mis-shaped"):
        load_hf_detr_weights(wrong, hf_model().state_dict())

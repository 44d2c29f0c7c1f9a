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


def _targets(n_images: int, size: int = 64):
    g = torch.Generator().manual_seed(3)
    out = []
    for _ in range(n_images):
        masks = torch.zeros(2, size, size, dtype=torch.bool)
        masks[0, 4:30, 6:40] = True
        masks[1, 34:60, 20:50] = True
        boxes = torch.tensor([[6.0, 4.0, 40.0, 30.0], [20.0, 34.0, 50.0, 60.0]])
        out.append(dict(masks=masks, labels=torch.randint(0, 4, (2,), generator=g), boxes=boxes,
                        image_size=(size, size)))
    return out


def test_set_criterion_supervises_aux_layers_with_their_terms_only():
    from lightning_seg.losses import SetCriterion

    model = DETR(4, backbone="resnet18", **TINY).train()
    out = model(torch.rand(2, 3, 64, 64))
    assert all("pred_masks" not in aux for aux in out["aux_outputs"])
    crit = SetCriterion(4, class_weight=1.0, mask_weight=1.0, dice_weight=1.0, losses=("labels", "boxes", "dense_masks"),
                        match_losses=("labels", "boxes"), aux_losses=("labels", "boxes"))
    losses = crit(out, _targets(2))
    assert set(losses) == {"loss_ce", "loss_bbox", "loss_giou", "loss_mask", "loss_dice",
                           "loss_ce_0", "loss_bbox_0", "loss_giou_0"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    with pytest.raises(ValueError, match="aux_losses"):
        SetCriterion(4, losses=("labels", "boxes"), match_losses=("labels", "boxes"), aux_losses=("labels",))


def test_detr_task_training_stages():
    from lightning_seg.tasks import DETRModule

    tiny = dict(backbone="resnet10t", hidden_dim=32, nheads=8, enc_layers=1, dec_layers=2, dim_feedforward=32,
                num_queries=6, num_overlays=0)
    boxes_first = DETRModule(4, train_masks=False, **tiny)
    assert not any(p.requires_grad for p in boxes_first.model.mask_head.parameters())
    masks_second = DETRModule(4, freeze_detector=True, **tiny)
    trainable = {n.split(".")[0] for n, p in masks_second.model.named_parameters() if p.requires_grad}
    assert trainable == {"attention_map", "mask_head"}
    with pytest.raises(ValueError, match="freeze_detector"):
        DETRModule(4, train_masks=False, freeze_detector=True, **tiny)

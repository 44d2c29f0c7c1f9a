"""HF transformers' Mask2Former and MaskFormer weights converted into ours give HF's outputs (final
and auxiliary)."""

from __future__ import annotations

import pytest
import torch

from lightning_seg.models.mask_classification.hf_weights import (
    convert_hf_mask2former_state_dict,
    convert_hf_maskformer_state_dict,
    load_hf_mask2former_weights,
)
from lightning_seg.models.mask_classification.model import Mask2Former, MaskFormer

transformers = pytest.importorskip("transformers", reason="HF transformers (the reference extra) is not installed")

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
TINY = dict(conv_dim=32, mask_dim=32, enc_layers=1, enc_nheads=2, enc_dim_feedforward=64, num_queries=6,
            hidden_dim=32, nheads=2, dim_feedforward=64, backbone="resnet18")


def with_random_norm_statistics(model):
    """``model`` with BatchNorm statistics that are not the identity (a mis-mapped buffer shows)."""
    with torch.no_grad():
        for m in model.modules():
            if getattr(m, "running_mean", None) is not None:
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def hf_model(decoder_layers: int = 4, seed: int = 0):
    from transformers import (
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
        TimmBackboneConfig,
    )

    torch.manual_seed(seed)
    backbone = TimmBackboneConfig(backbone="resnet18", out_indices=(1, 2, 3, 4), use_pretrained_backbone=False)
    cfg = Mask2FormerConfig(backbone_config=backbone, feature_size=32, mask_feature_size=32, hidden_dim=32,
                            encoder_feedforward_dim=64, dim_feedforward=64, encoder_layers=1,
                            decoder_layers=decoder_layers, num_attention_heads=2, num_queries=6, num_labels=4)
    return with_random_norm_statistics(Mask2FormerForUniversalSegmentation(cfg).eval())


def test_hf_mask2former_weights_give_its_outputs_and_aux_outputs():
    hf = hf_model(decoder_layers=4)
    ours = Mask2Former(4, num_decoder_layers=3, **TINY).eval()  # HF builds decoder_layers - 1 layers
    x = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fresh = ours(x)
        load_hf_mask2former_weights(ours, hf.state_dict())
        got = ours(x)
        want = hf(pixel_values=(x - MEAN) / STD, output_auxiliary_logits=True)
    assert not torch.allclose(fresh["pred_logits"], want.class_queries_logits, atol=1e-3)  # a fresh model differs
    torch.testing.assert_close(got["pred_logits"], want.class_queries_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got["pred_masks"], want.masks_queries_logits, rtol=1e-5, atol=1e-5)
    assert len(got["aux_outputs"]) == len(want.auxiliary_logits) == 3
    for o, h in zip(got["aux_outputs"], want.auxiliary_logits):
        torch.testing.assert_close(o["pred_logits"], h["class_queries_logits"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(o["pred_masks"], h["masks_queries_logits"], rtol=1e-5, atol=1e-5)


def test_hf_mask2former_weights_that_do_not_fit_are_refused_whole():
    hf = hf_model(decoder_layers=3)
    with pytest.raises(ValueError, match="keys with no counterpart here"):
        convert_hf_mask2former_state_dict({"model.pixel_level_module.encoder.swin.embeddings.norm.weight": torch.zeros(1)})
    wrong = Mask2Former(3, num_decoder_layers=2, **TINY)  # another class count than the checkpoint
    before = {k: v.clone() for k, v in wrong.state_dict().items()}
    with pytest.raises(ValueError, match="does not fit this Mask2Former: mis-shaped"):
        load_hf_mask2former_weights(wrong, hf.state_dict())
    assert all(torch.equal(v, wrong.state_dict()[k]) for k, v in before.items())  # nothing was loaded
    deeper = Mask2Former(4, num_decoder_layers=3, **TINY)
    with pytest.raises(ValueError, match="missing"):
        load_hf_mask2former_weights(deeper, hf.state_dict())


def hf_maskformer(decoder_layers: int = 3, seed: int = 0):
    from transformers import (
        DetrConfig,
        MaskFormerConfig,
        MaskFormerForInstanceSegmentation,
        TimmBackboneConfig,
    )

    torch.manual_seed(seed)
    backbone = TimmBackboneConfig(backbone="resnet18", out_indices=(1, 2, 3, 4), use_pretrained_backbone=False)
    decoder = DetrConfig(d_model=32, decoder_layers=decoder_layers, decoder_attention_heads=2, decoder_ffn_dim=64,
                         num_queries=6, encoder_layers=0)
    cfg = MaskFormerConfig(backbone_config=backbone, decoder_config=decoder, fpn_feature_size=32, mask_feature_size=32,
                           num_queries=6, num_labels=4)
    return with_random_norm_statistics(MaskFormerForInstanceSegmentation(cfg).eval())


def test_hf_maskformer_weights_give_its_outputs():
    hf = hf_maskformer(decoder_layers=3)
    ours = MaskFormer(4, conv_dim=32, mask_dim=32, num_queries=6, hidden_dim=32, nheads=2, dim_feedforward=64,
                      num_decoder_layers=3, backbone="resnet18").eval()
    x = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        fresh = ours(x)
        load_hf_mask2former_weights(ours, hf.state_dict())
        got = ours(x)
        want = hf(pixel_values=(x - MEAN) / STD, output_hidden_states=True)
        assert not torch.allclose(fresh["pred_logits"], want.class_queries_logits, atol=1e-3)
        torch.testing.assert_close(got["pred_logits"], want.class_queries_logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got["pred_masks"], want.masks_queries_logits, rtol=1e-5, atol=1e-5)
        # aux: the original model's (each earlier layer through the decoder norm), from HF's hidden states
        states = want.transformer_decoder_hidden_states  # the zero input, then every layer's output
        assert len(got["aux_outputs"]) == len(states) - 2 == 2
        for i, aux in enumerate(got["aux_outputs"]):
            normed = hf.model.transformer_module.decoder.layernorm(states[i + 1])
            masks = torch.einsum("bqc,bchw->bqhw", hf.mask_embedder(normed), want.pixel_decoder_last_hidden_state)
            torch.testing.assert_close(aux["pred_logits"], hf.class_predictor(normed), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(aux["pred_masks"], masks, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="HF MaskFormer keys with no counterpart"):
        convert_hf_maskformer_state_dict({"model.pixel_level_module.decoder.fpn.odd.weight": torch.zeros(1)})


def test_init_from_hf_prefix_loads_a_converted_checkpoint_and_reports_the_new_class_head(tmp_path):
    from transformers import (
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
        TimmBackboneConfig,
    )

    from lightning_seg.tasks import MaskClassificationModule

    torch.manual_seed(0)
    backbone = TimmBackboneConfig(backbone="resnet18", out_indices=(1, 2, 3, 4), use_pretrained_backbone=False)
    # the task's encoder keeps Mask2Former's 8 heads and 1024-wide FFN
    cfg = Mask2FormerConfig(backbone_config=backbone, feature_size=32, mask_feature_size=32, hidden_dim=32,
                            encoder_feedforward_dim=1024, dim_feedforward=64, encoder_layers=1, decoder_layers=3,
                            num_attention_heads=8, num_queries=6, num_labels=4)
    hf = Mask2FormerForUniversalSegmentation(cfg).eval()
    path = tmp_path / "hf_mask2former.bin"
    torch.save(hf.state_dict(), path)
    args = dict(backbone="resnet18", conv_dim=32, mask_dim=32, enc_layers=1, num_queries=6, hidden_dim=32, nheads=8,
                dim_feedforward=64, num_decoder_layers=2, num_overlays=0)
    task = MaskClassificationModule(num_classes=7, init_from=f"hf:{path}", **args)  # 7 classes, the file has 4
    report = task.init_report
    assert {r.split(" ")[0] for r in report["reinitialised"]} == {"model.transformer_decoder.class_embed.weight",
                                                                   "model.transformer_decoder.class_embed.bias"}
    assert not report["missing"] and not report["unexpected"]
    want = convert_hf_mask2former_state_dict(hf.state_dict())
    for name in ("pixel_decoder.level_embed", "transformer_decoder.layers.1.cross_attn.k_proj.weight",
                 "backbone.model.layer4.1.conv2.weight"):
        assert torch.equal(task.model.state_dict()[name], want[name]), name
    with pytest.raises(ValueError, match="unknown checkpoint format 'detectron3'"):
        MaskClassificationModule(num_classes=4, init_from=f"detectron3:{path}", **args)
    with pytest.raises(ValueError, match="'torchvision' checkpoints have no conversion into Mask2Former"):
        MaskClassificationModule(num_classes=4, init_from=f"torchvision:{path}", **args)
    with pytest.raises(FileNotFoundError, match="model.init_from: checkpoint not found"):
        MaskClassificationModule(num_classes=4, init_from=f"hf:{tmp_path / 'none.bin'}", **args)


def test_detectron2_pkl_written_through_the_inverse_mapping_loads_back_into_an_identical_model(tmp_path):
    import pickle

    from lightning_seg.models.mask_classification.detectron2_weights import (
        convert_detectron2_mask2former_state_dict,
        read_detectron2_checkpoint,
        to_detectron2_state_dict,
    )
    from lightning_seg.tasks import MaskClassificationModule

    args = dict(backbone="resnet18", conv_dim=32, mask_dim=32, enc_layers=1, num_queries=6, hidden_dim=32, nheads=8,
                dim_feedforward=64, num_decoder_layers=2, num_overlays=0)
    torch.manual_seed(0)
    source = with_random_norm_statistics(MaskClassificationModule(num_classes=4, **args).eval())
    d2 = to_detectron2_state_dict(source.model.state_dict())
    # detectron2's own names (Mask2Former's model zoo), fused attention projections included
    for name, shape in (("backbone.stem.conv1.norm.running_mean", (64,)), ("backbone.res2.0.conv1.weight", (64, 64, 3, 3)),
                        ("backbone.res3.0.shortcut.norm.weight", (128,)),
                        ("sem_seg_head.pixel_decoder.transformer.level_embed", (3, 32)),
                        ("sem_seg_head.pixel_decoder.adapter_1.norm.weight", (32,)),
                        ("sem_seg_head.predictor.transformer_cross_attention_layers.1.multihead_attn.in_proj_weight",
                         (96, 32)),
                        ("sem_seg_head.predictor.transformer_ffn_layers.0.norm.bias", (32,))):
        assert d2[name].shape == shape, name
    path = tmp_path / "model_final.pkl"
    with path.open("wb") as f:
        pickle.dump({"model": d2, "__author__": "test"}, f)
    assert set(convert_detectron2_mask2former_state_dict(read_detectron2_checkpoint(path))) == \
        {k for k in source.model.state_dict() if not k.endswith("num_batches_tracked")}
    torch.manual_seed(1)
    target = MaskClassificationModule(num_classes=4, init_from=f"detectron2:{path}", **args).eval()
    assert not target.init_report["missing"] and not target.init_report["reinitialised"]
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        a, b = source.model(x), target.model(x)
    assert torch.equal(a["pred_logits"], b["pred_logits"]) and torch.equal(a["pred_masks"], b["pred_masks"])
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"model": {"x": print}}))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load builtins.print"):
        read_detectron2_checkpoint(evil)

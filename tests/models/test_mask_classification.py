"""MaskFormer / Mask2Former models: parity of the building blocks with HF transformers'
Mask2Former (weights copied across); the models' output contract is in ``test_model_contract.py``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_seg.models.mask_classification import (
    FPNPixelDecoder,
    Mask2Former,
    MaskedAttentionDecoder,
    MaskFormer,
    MSDeformAttnPixelDecoder,
    SinePositionEncoding,
    StandardTransformerDecoder,
    attention_mask_from_logits,
    multi_scale_deformable_attention,
)
from lightning_seg.models.transformer_layers import MultiheadAttention


TINY = dict(conv_dim=32, mask_dim=32, hidden_dim=32, num_queries=6, nheads=4, dim_feedforward=48)
TINY_ENC = dict(enc_layers=1, enc_nheads=4, enc_dim_feedforward=48)


@pytest.fixture(scope="module")
def hf_m2f():
    """HF transformers' Mask2Former module, the reference implementation."""
    return pytest.importorskip("transformers.models.mask2former.modeling_mask2former")


def _hf_config(num_decoder_layers: int, enc_layers: int = 2):
    from transformers import Mask2FormerConfig

    return Mask2FormerConfig(
        feature_size=32,
        mask_feature_size=32,
        hidden_dim=32,
        encoder_feedforward_dim=48,
        encoder_layers=enc_layers,
        decoder_layers=num_decoder_layers + 1,  # HF counts the initial prediction as a layer
        num_attention_heads=4,
        dim_feedforward=40,
        num_queries=5,
        num_labels=3,
    )


# ---------------------------------------------------------------- deformable attention


@pytest.mark.parametrize("shapes", [[(5, 7), (3, 4), (2, 2)], [(9, 13)]])
def test_multi_scale_deformable_attention_matches_hf_values_and_gradients(shapes, hf_m2f):
    torch.manual_seed(0)
    b, q, m, d, p = 2, 11, 3, 4, 4
    s = sum(h * w for h, w in shapes)
    value = torch.randn(b, s, m, d, dtype=torch.float64, requires_grad=True)
    # Locations spill past [0, 1] so the zero-padding rule is exercised too.
    loc = (torch.rand(b, q, m, len(shapes), p, 2, dtype=torch.float64) * 1.4 - 0.2).requires_grad_()
    weights = torch.randn(b, q, m, len(shapes), p, dtype=torch.float64)
    weights = weights.flatten(-2).softmax(-1).view_as(weights).requires_grad_()

    ours = multi_scale_deformable_attention(value, shapes, loc, weights)
    ref = hf_m2f.multi_scale_deformable_attention(value, shapes, loc, weights)
    assert ours.shape == (b, q, m * d)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)

    grad_out = torch.randn_like(ours)
    g_ours = torch.autograd.grad(ours, (value, loc, weights), grad_out)
    g_ref = torch.autograd.grad(ref, (value, loc, weights), grad_out)
    for a, r in zip(g_ours, g_ref):
        torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-9)


def test_multi_scale_deformable_attention_bilinear_point_matches_a_plain_loop():
    """One level, one head: a sample at a known fractional location is the bilinear blend of
    the four pixel centres around it (pixel ``i`` centred at ``(i + 0.5) / size``)."""
    h, w = 4, 5
    value = torch.arange(h * w, dtype=torch.float64).view(1, h * w, 1, 1)
    x, y = 1.25, 2.5  # in pixel units
    loc = torch.tensor([(x + 0.5) / w, (y + 0.5) / h], dtype=torch.float64).view(1, 1, 1, 1, 1, 2)
    out = multi_scale_deformable_attention(value, [(h, w)], loc, torch.ones(1, 1, 1, 1, 1, dtype=torch.float64))
    grid = value.view(h, w)
    x0, y0 = int(x), int(y)
    fx, fy = x - x0, y - y0
    expected = (
        grid[y0, x0] * (1 - fx) * (1 - fy)
        + grid[y0, x0 + 1] * fx * (1 - fy)
        + grid[y0 + 1, x0] * (1 - fx) * fy
        + grid[y0 + 1, x0 + 1] * fx * fy
    )
    torch.testing.assert_close(out.view(()), expected)


def test_multi_scale_deformable_attention_rejects_mismatched_shapes():
    value = torch.zeros(1, 10, 1, 2)
    loc = torch.zeros(1, 1, 1, 1, 1, 2)
    with pytest.raises(ValueError, match="cover 12 positions but value has 10"):
        multi_scale_deformable_attention(value, [(3, 4)], loc, torch.ones(1, 1, 1, 1, 1))
    with pytest.raises(ValueError, match="2 spatial shapes for 1 levels"):
        multi_scale_deformable_attention(value, [(2, 3), (2, 2)], loc, torch.ones(1, 1, 1, 1, 1))


def test_sine_position_encoding_matches_hf(hf_m2f):
    x = torch.zeros(2, 5, 7, 9)
    ours = SinePositionEncoding(8, normalize=True)(x)
    ref = hf_m2f.Mask2FormerSinePositionEmbedding(num_position_features=8, normalize=True)(x.shape, x.device, x.dtype)
    assert ours.shape == (2, 16, 7, 9)
    torch.testing.assert_close(ours, ref)


# ---------------------------------------------------------------- HF weight copies


def _copy(dst: nn.Module, src: nn.Module) -> None:
    dst.load_state_dict(src.state_dict())


def _load_hf_pixel_decoder(ours: MSDeformAttnPixelDecoder, hf: nn.Module) -> None:
    with torch.no_grad():
        for lvl in range(3):
            _copy(ours.input_proj[lvl], hf.input_projections[lvl])
        ours.level_embed.copy_(hf.level_embed)
        for o, r in zip(ours.encoder_layers, hf.encoder.layers):
            for name in ("sampling_offsets", "attention_weights", "value_proj", "output_proj"):
                _copy(getattr(o.self_attn, name), getattr(r.self_attn, name))
            _copy(o.norm1, r.self_attn_layer_norm)
            _copy(o.ffn.linear1, r.fc1)
            _copy(o.ffn.linear2, r.fc2)
            _copy(o.norm2, r.final_layer_norm)
        for i, (lat, out) in enumerate(zip(ours.lateral_convs, ours.output_convs)):
            _copy(lat, hf.lateral_convolutions[i])
            _copy(out, hf.output_convolutions[i])
        _copy(ours.mask_features, hf.mask_projection)


def _load_hf_transformer_module(ours: MaskedAttentionDecoder, hf: nn.Module, class_head: nn.Linear) -> None:
    with torch.no_grad():
        _copy(ours.query_feat, hf.queries_features)
        _copy(ours.query_embed, hf.queries_embedder)
        _copy(ours.level_embed, hf.level_embed)
        dec = hf.decoder
        for o, r in zip(ours.layers, dec.layers):
            c = o.cross_attn.q_proj.in_features
            w, bias = r.cross_attn.in_proj_weight, r.cross_attn.in_proj_bias
            for k, proj in enumerate((o.cross_attn.q_proj, o.cross_attn.k_proj, o.cross_attn.v_proj)):
                proj.weight.copy_(w[k * c : (k + 1) * c])
                proj.bias.copy_(bias[k * c : (k + 1) * c])
            _copy(o.cross_attn.out_proj, r.cross_attn.out_proj)
            _copy(o.norm_cross, r.cross_attn_layer_norm)
            for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
                _copy(getattr(o.self_attn, name), getattr(r.self_attn, name))
            _copy(o.norm_self, r.self_attn_layer_norm)
            _copy(o.ffn.linear1, r.fc1)
            _copy(o.ffn.linear2, r.fc2)
            _copy(o.norm_ffn, r.final_layer_norm)
        _copy(ours.decoder_norm, dec.layernorm)
        for k, lin in enumerate(ours.mask_embed.layers):
            _copy(lin, dec.mask_predictor.mask_embedder.layers[k].layers[0])
        _copy(ours.class_embed, class_head)


def test_msdeform_pixel_decoder_matches_hf_with_copied_weights(hf_m2f):
    torch.manual_seed(0)
    channels = [8, 16, 24, 40]
    hf = hf_m2f.Mask2FormerPixelDecoder(_hf_config(3), feature_channels=channels).eval()
    for p in hf.parameters():  # HF leaves some tensors uninitialised until post_init
        nn.init.normal_(p, std=0.2)
    ours = MSDeformAttnPixelDecoder(
        channels, [4, 8, 16, 32], conv_dim=32, mask_dim=32, enc_layers=2, enc_nheads=4, enc_dim_feedforward=48
    ).eval()
    _load_hf_pixel_decoder(ours, hf)
    feats = [torch.randn(2, c, (33 + s - 1) // s, (49 + s - 1) // s) for c, s in zip(channels, [4, 8, 16, 32])]
    with torch.no_grad():
        mask_feats, multi = ours(feats)
        ref = hf(feats)
    assert mask_feats.shape == (2, 32, 9, 13)
    torch.testing.assert_close(mask_feats, ref.mask_features, rtol=1e-4, atol=1e-4)
    assert len(multi) == 3
    for a, r in zip(multi, ref.multi_scale_features):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-4)


def test_masked_attention_decoder_matches_hf_with_copied_weights(hf_m2f):
    torch.manual_seed(0)
    cfg = _hf_config(4)
    hf = hf_m2f.Mask2FormerTransformerModule(in_features=32, config=cfg).eval()
    class_head = nn.Linear(32, cfg.num_labels + 1)
    ours = MaskedAttentionDecoder(
        in_channels=32, num_classes=cfg.num_labels, hidden_dim=32, num_queries=5, nheads=4,
        dim_feedforward=40, num_layers=4, mask_dim=32,
    ).eval()
    for p in list(hf.parameters()) + list(class_head.parameters()):
        nn.init.normal_(p, std=0.3)
    _load_hf_transformer_module(ours, hf, class_head)
    multi = [torch.randn(2, 32, h, w) for h, w in [(2, 3), (3, 5), (5, 9)]]
    mask_features = torch.randn(2, 32, 9, 17)
    with torch.no_grad():
        out = ours(multi, mask_features)
        ref = hf(multi, mask_features)
    ref_masks = ref.masks_queries_logits
    ref_logits = [class_head(h.transpose(0, 1)) for h in ref.intermediate_hidden_states]
    assert len(ref_masks) == 5 and len(out["aux_outputs"]) == 4
    ours_all = out["aux_outputs"] + [{"pred_logits": out["pred_logits"], "pred_masks": out["pred_masks"]}]
    # Random weights make some masks nearly empty, so every masked-attention branch is exercised.
    for pred, m_ref, l_ref in zip(ours_all, ref_masks, ref_logits):
        torch.testing.assert_close(pred["pred_masks"], m_ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(pred["pred_logits"], l_ref, rtol=1e-4, atol=1e-4)


def test_fpn_pixel_decoder_matches_hf_maskformer_with_copied_weights():
    hf_mf = pytest.importorskip("transformers.models.maskformer.modeling_maskformer")
    torch.manual_seed(0)
    channels = [8, 16, 24, 40]
    hf = hf_mf.MaskFormerPixelDecoder(
        in_features=channels[-1], lateral_widths=channels[:-1], feature_size=32, mask_feature_size=32
    ).eval()
    ours = FPNPixelDecoder(channels, conv_dim=32, mask_dim=32).eval()
    with torch.no_grad():
        _copy(ours.fpn.output[-1], hf.fpn.stem)
        for i, layer in enumerate(hf.fpn.layers):  # HF's layers run coarse to fine
            _copy(ours.fpn.lateral[-2 - i], layer.proj)
            _copy(ours.fpn.output[-2 - i], layer.block)
        _copy(ours.mask_features, hf.mask_projection)
    feats = [torch.randn(2, c, (65 + s - 1) // s, (97 + s - 1) // s) for c, s in zip(channels, [4, 8, 16, 32])]
    with torch.no_grad():
        mask_feats, _ = ours(feats)
        ref = hf(feats).last_hidden_state
    torch.testing.assert_close(mask_feats, ref, rtol=1e-4, atol=1e-4)


def test_standard_decoder_matches_hf_maskformer_with_copied_weights():
    hf_mf = pytest.importorskip("transformers.models.maskformer.modeling_maskformer")
    from transformers import DetrConfig, MaskFormerConfig

    torch.manual_seed(0)
    # HF feeds the LayerNorm-ed state to the next layer when auxiliary_loss=True (DETR does
    # not), so only its auxiliary_loss=False path — final layer only — is the reference.
    detr = DetrConfig(
        d_model=32, decoder_layers=3, decoder_attention_heads=4, decoder_ffn_dim=40, num_queries=5,
        auxiliary_loss=False, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
    )
    hf = hf_mf.MaskFormerTransformerModule(40, MaskFormerConfig(decoder_config=detr)).eval()
    for p in hf.parameters():
        nn.init.normal_(p, std=0.3)
    ours = StandardTransformerDecoder(
        40, 3, hidden_dim=32, num_queries=5, nheads=4, dim_feedforward=40, num_layers=3, mask_dim=12, dropout=0.0
    ).eval()
    with torch.no_grad():
        _copy(ours.query_embed, hf.queries_embedder)
        _copy(ours.input_proj, hf.input_projection)
        for o, r in zip(ours.layers, hf.decoder.layers):
            for mine, theirs in ((o.self_attn, r.self_attn), (o.cross_attn, r.encoder_attn)):
                for name in ("q_proj", "k_proj", "v_proj"):
                    _copy(getattr(mine, name), getattr(theirs, name))
                _copy(mine.out_proj, theirs.o_proj)
            _copy(o.norm1, r.self_attn_layer_norm)
            _copy(o.norm2, r.encoder_attn_layer_norm)
            _copy(o.ffn.linear1, r.mlp.fc1)
            _copy(o.ffn.linear2, r.mlp.fc2)
            _copy(o.norm3, r.final_layer_norm)
        _copy(ours.decoder_norm, hf.decoder.layernorm)
    feature, mask_features = torch.randn(2, 40, 3, 4), torch.randn(2, 12, 9, 13)
    with torch.no_grad():
        out = ours(feature, mask_features)
        hidden = hf(feature).last_hidden_state  # [B, Q, C], final LayerNorm applied
        ref_logits = ours.class_embed(hidden)
        ref_masks = torch.einsum("bqc,bchw->bqhw", ours.mask_embed(hidden), mask_features)
    torch.testing.assert_close(out["pred_logits"], ref_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out["pred_masks"], ref_masks, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- masked attention rules


def test_attention_mask_unblocks_queries_whose_mask_is_empty():
    logits = torch.full((2, 3, 4, 6), -5.0)
    logits[0, 1, 1, 2] = 3.0  # query 1 of image 0 keeps one positive pixel
    allowed = attention_mask_from_logits(logits, (4, 6))
    assert allowed.shape == (2, 1, 3, 24) and allowed.dtype == torch.bool
    # Plain loop over Mask2Former's rule: block where sigmoid < 0.5 unless that blocks everything.
    for b in range(2):
        for q in range(3):
            blocked = logits[b, q].flatten().sigmoid() < 0.5
            if blocked.all():
                blocked[:] = False
            assert torch.equal(allowed[b, 0, q], ~blocked)


def test_multihead_attention_with_mask_matches_a_plain_softmax_over_allowed_keys():
    torch.manual_seed(0)
    attn = MultiheadAttention(8, 2).eval()
    q, k = torch.randn(1, 3, 8), torch.randn(1, 5, 8)
    mask = torch.tensor([[1, 0, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]], dtype=torch.bool).view(1, 1, 3, 5)
    out = attn(q, k, k, mask)
    qh = attn.q_proj(q).view(3, 2, 4)
    kh = attn.k_proj(k).view(5, 2, 4)
    vh = attn.v_proj(k).view(5, 2, 4)
    heads = torch.zeros(3, 2, 4)
    for i in range(3):
        for h in range(2):
            keys = mask[0, 0, i].nonzero().flatten()
            scores = torch.stack([qh[i, h] @ kh[j, h] for j in keys]) / 2.0
            heads[i, h] = (scores.softmax(0)[:, None] * vh[keys, h]).sum(0)
    torch.testing.assert_close(out[0], attn.out_proj(heads.view(3, 8)), rtol=1e-5, atol=1e-6)


def test_masked_attention_decoder_has_no_nan_when_every_mask_is_empty():
    torch.manual_seed(0)
    dec = MaskedAttentionDecoder(32, 3, hidden_dim=32, num_queries=4, nheads=4, dim_feedforward=32, num_layers=3, mask_dim=16)
    with torch.no_grad():
        dec.mask_embed.layers[-1].weight.zero_()
        dec.mask_embed.layers[-1].bias.fill_(1.0)
    multi = [torch.randn(1, 32, h, w, requires_grad=True) for h, w in [(2, 3), (3, 5), (5, 9)]]
    mask_features = -torch.ones(1, 16, 9, 17)  # every mask logit is -16: all keys blocked
    out = dec(multi, mask_features)
    assert (out["pred_masks"] < 0).all()
    loss = out["pred_logits"].sum() + sum(a["pred_logits"].sum() for a in out["aux_outputs"])
    loss.backward()
    assert torch.isfinite(out["pred_logits"]).all()
    for x in multi:
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


# ---------------------------------------------------------------- decoders on their own


def test_fpn_pixel_decoder_shapes_at_odd_sizes():
    dec = FPNPixelDecoder([8, 16, 24, 40], conv_dim=16, mask_dim=12, num_feature_levels=3)
    feats = [torch.randn(2, c, (65 + s - 1) // s, (97 + s - 1) // s) for c, s in zip([8, 16, 24, 40], [4, 8, 16, 32])]
    mask_feats, multi = dec(feats)
    assert mask_feats.shape == (2, 12, 17, 25)
    assert [tuple(m.shape[-2:]) for m in multi] == [(3, 4), (5, 7), (9, 13)]
    with pytest.raises(ValueError, match="expects 4 features, got 3"):
        dec(feats[1:])


def test_standard_decoder_aux_outputs_are_all_layers_but_the_last():
    dec = StandardTransformerDecoder(40, 3, hidden_dim=16, num_queries=5, nheads=2, dim_feedforward=24, num_layers=4, enc_layers=1, mask_dim=12)
    out = dec(torch.randn(2, 40, 3, 4), torch.randn(2, 12, 9, 13))
    assert out["pred_logits"].shape == (2, 5, 4) and out["pred_masks"].shape == (2, 5, 9, 13)
    assert len(out["aux_outputs"]) == 3


def test_msdeform_pixel_decoder_rejects_bad_configuration():
    with pytest.raises(ValueError, match="need at least num_feature_levels=3"):
        MSDeformAttnPixelDecoder([8, 16], [4, 8], conv_dim=16)
    with pytest.raises(ValueError, match="finest first"):
        MSDeformAttnPixelDecoder([8, 16, 24], [16, 8, 4], conv_dim=16)


# ---------------------------------------------------------------- full models


def test_reset_classifier_changes_only_the_class_head():
    model = Mask2Former(3, backbone="resnet10t", num_decoder_layers=1, **TINY, **TINY_ENC)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.reset_classifier(7)
    after = model.state_dict()
    assert model.num_classes == 7
    assert set(model.classifier_parameter_names()) == {
        "transformer_decoder.class_embed.weight", "transformer_decoder.class_embed.bias"
    }
    assert after["transformer_decoder.class_embed.weight"].shape == (8, 32)
    for k, v in before.items():
        if "class_embed" not in k:
            assert torch.equal(v, after[k]), k
    assert model.eval()(torch.rand(1, 3, 64, 64))["pred_logits"].shape == (1, 6, 8)
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        model.reset_classifier(0)


def test_no_weight_decay_names_are_norms_and_embeddings():
    model = MaskFormer(3, backbone="resnet10t", num_decoder_layers=2, **TINY)
    no_decay = model.no_weight_decay_parameter_names()
    assert "transformer_decoder.query_embed.weight" in no_decay
    assert "transformer_decoder.decoder_norm.weight" in no_decay
    assert "transformer_decoder.class_embed.weight" not in no_decay


def test_models_reject_bad_arguments():
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        Mask2Former(0, backbone="resnet10t", **TINY)
    with pytest.raises(ValueError, match="pixel_decoder must be 'msdeform' or 'fpn'"):
        Mask2Former(2, backbone="resnet10t", pixel_decoder="aspp", **TINY)  # type: ignore[arg-type]


def test_mask2former_runs_under_bf16_autocast():
    model = Mask2Former(3, backbone="resnet10t", num_decoder_layers=2, **TINY, **TINY_ENC)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.rand(2, 3, 65, 97))
    loss = out["pred_logits"].float().mean() + out["pred_masks"].float().sigmoid().mean()
    loss.backward()
    assert torch.isfinite(out["pred_logits"].float()).all() and torch.isfinite(out["pred_masks"].float()).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("cls", [Mask2Former, MaskFormer])
def test_images_in_a_batch_do_not_influence_each_other(cls):
    """Per-image masks and broadcast positions must never mix images: in eval mode the batched
    outputs equal the outputs of each image alone."""
    torch.manual_seed(0)
    extra = TINY_ENC if cls is Mask2Former else {}
    model = cls(3, backbone="resnet10t", num_decoder_layers=2, **TINY, **extra).eval()
    images = torch.rand(2, 3, 65, 97)
    with torch.no_grad():
        batched = model(images)
        for i in range(2):
            single = model(images[i : i + 1])
            torch.testing.assert_close(batched["pred_logits"][i : i + 1], single["pred_logits"], rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(batched["pred_masks"][i : i + 1], single["pred_masks"], rtol=1e-4, atol=1e-4)

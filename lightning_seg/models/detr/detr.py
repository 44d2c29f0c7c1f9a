"""DETR (Carion et al., ECCV 2020) with its panoptic mask head, on a ResNet.

The backbone's last feature map (1/32) is projected to the transformer width, encoded by a
post-norm transformer encoder with sine positions (padding masked), and read by ``Q`` learned
object queries through a post-norm decoder; every decoder layer's output (after the shared
final LayerNorm) predicts a class (``K`` + no-object) and a box (3-layer MLP, sigmoid
``cxcywh`` relative to the image). The mask head (DETR's panoptic model) takes, for every query,
its multi-head attention map over the encoder memory (one softmax over heads and positions,
padding masked) concatenated with the projected features, and refines it FPN-style with the
backbone's res4 / res3 / res2 features into one mask logit per query at 1/4 of the input.

Layer layout and state-dict correspondence: HF transformers' ``DetrForSegmentation``
(:func:`~lightning_seg.models.detr.hf_weights.convert_hf_detr_state_dict`).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_seg.models.backbone import build_backbone
from lightning_seg.models.mask_classification.position_encoding import (
    SinePositionEncoding,
)
from lightning_seg.models.mask_classification.standard_decoder import (
    DecoderLayer,
    EncoderLayer,
)
from lightning_seg.models.transformer_layers import MLP


class ConvGNReLU(nn.Sequential):
    """3x3 conv (with bias) -> GroupNorm(min(8, C)) -> ReLU, ``[N, C_in, h, w]`` -> ``[N, C_out, h, w]``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.Conv2d(in_channels, out_channels, 3, padding=1),
                         nn.GroupNorm(min(8, out_channels), out_channels), nn.ReLU(inplace=True))


class AttentionMap(nn.Module):
    """DETR's ``MHAttentionMap``: each query's attention weights over the encoder memory, per head,
    one softmax over all heads and positions together (no values).

    Args:
        dim: width ``C``; num_heads: heads ``M`` (``C / M`` per head).
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)

    def forward(self, queries: Tensor, memory: Tensor, valid: Tensor | None = None) -> Tensor:
        """Queries float ``[B, Q, C]``, memory ``[B, C, h, w]``, valid bool ``[B, h, w]`` (True on
        the image) -> weights float ``[B, Q, M, h, w]`` summing to 1 over ``(M, h, w)``."""
        b, q, c = queries.shape
        m, d = self.num_heads, c // self.num_heads
        qh = self.q_proj(queries).view(b, q, m, d)
        kh = F.conv2d(memory, self.k_proj.weight[:, :, None, None], self.k_proj.bias).view(b, m, d, *memory.shape[-2:])
        weights = torch.einsum("bqmd,bmdhw->bqmhw", qh * self.scale, kh)
        if valid is not None:
            weights = weights.masked_fill(~valid[:, None, None], torch.finfo(weights.dtype).min)
        return weights.flatten(2).softmax(-1).view(weights.shape)


class MaskHead(nn.Module):
    """DETR's panoptic mask head (HF's ``DetrMaskHeadSmallConv``): per query, the projected
    features concatenated with its ``M`` attention maps, two 3x3 conv-GN-ReLU blocks (to
    ``C / 2``), then three fusion stages, each adding a 1x1 adapter of a finer backbone feature
    (res4, res3, res2) to the nearest-upsampled map and refining it (to ``C / 4``, ``C / 8``,
    ``C / 16``), and a 3x3 conv to one logit.

    Args:
        dim: transformer width ``C``; num_heads: ``M``; fpn_channels: channels of res4, res3, res2.
    """

    def __init__(self, dim: int, num_heads: int, fpn_channels: tuple[int, int, int]) -> None:
        super().__init__()
        c = dim + num_heads
        if c % 8:
            raise ValueError(f"DETR's mask head needs hidden_dim + nheads divisible by 8, got {c}")
        self.conv1 = ConvGNReLU(c, c)
        self.conv2 = ConvGNReLU(c, dim // 2)
        widths = [dim // 2, dim // 4, dim // 8, dim // 16]
        self.adapters = nn.ModuleList(nn.Conv2d(f, w, 1) for f, w in zip(fpn_channels, widths))
        self.refine = nn.ModuleList(ConvGNReLU(w, o) for w, o in zip(widths, widths[1:]))
        self.out = nn.Conv2d(widths[-1], 1, 3, padding=1)

    def forward(self, features: Tensor, attention: Tensor, fpn: list[Tensor]) -> Tensor:
        """Features float ``[B, C, h, w]``, attention ``[B, Q, M, h, w]``, fpn = [res4, res3, res2]
        -> mask logits float ``[B, Q, H2, W2]`` at res2's size."""
        b, q = attention.shape[:2]
        x = torch.cat([features[:, None].expand(-1, q, -1, -1, -1), attention], 2).flatten(0, 1)
        x = self.conv2(self.conv1(x))
        for adapter, refine, f in zip(self.adapters, self.refine, fpn):
            # the adapter runs once per image; its output is shared by the image's queries
            a = adapter(f)
            x = F.interpolate(x, size=a.shape[-2:], mode="nearest")
            x = refine(x + a.repeat_interleave(q, 0))
        return self.out(x).view(b, q, *x.shape[-2:])


class DETR(nn.Module):
    """DETR with the panoptic mask head (``with_masks``) or boxes only.

    Args:
        num_classes: ``K``; the class head outputs ``K + 1`` (last = no-object).
        backbone, backbone_source, pretrained, frozen_stages, freeze_bn, backbone_kwargs: the
            ResNet (DETR: ImageNet ResNet-50, frozen BN, stem and res2 frozen; timm, as HF).
        hidden_dim: transformer width (256).
        nheads: attention heads (8).
        enc_layers, dec_layers: transformer depth (6, 6).
        dim_feedforward: feed-forward width (2048).
        dropout: transformer dropout (0.1).
        num_queries: object queries (100).
        with_masks: add the mask head (DETR's panoptic model).

    Outputs (:meth:`forward`): ``pred_logits`` float ``[B, Q, K+1]``, ``pred_boxes`` float
    ``[B, Q, 4]`` (``cxcywh`` in ``[0, 1]`` of each image without its padding, the frame DETR's
    targets are normalised in), ``pred_masks`` float ``[B, Q, ceil(H/4), ceil(W/4)]`` over the
    padded input (with masks), ``aux_outputs``: the logits and boxes of the other decoder layers
    (DETR supervises masks at the last layer only).
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50",
        backbone_source: Literal["timm", "torchvision"] = "timm",
        pretrained: bool | str = False,
        frozen_stages: int = 1,
        freeze_bn: bool = True,
        backbone_kwargs: dict[str, Any] | None = None,
        hidden_dim: int = 256,
        nheads: int = 8,
        enc_layers: int = 6,
        dec_layers: int = 6,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        num_queries: int = 100,
        with_masks: bool = True,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.backbone = build_backbone(backbone, backbone_source, pretrained, None, frozen_stages, freeze_bn,
                                       backbone_kwargs)
        if self.backbone.feature_names[-4:] != ["res2", "res3", "res4", "res5"]:
            raise ValueError(f"DETR needs backbone features res2..res5, {backbone!r} gives {self.backbone.feature_names}")
        channels = self.backbone.channels[-4:]
        self.input_proj = nn.Conv2d(channels[-1], hidden_dim, 1)
        self.position = SinePositionEncoding(hidden_dim // 2, normalize=True)
        self.encoder = nn.ModuleList(EncoderLayer(hidden_dim, nheads, dim_feedforward, dropout)
                                     for _ in range(enc_layers))
        self.decoder = nn.ModuleList(DecoderLayer(hidden_dim, nheads, dim_feedforward, dropout)
                                     for _ in range(dec_layers))
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        self.with_masks = with_masks
        if with_masks:
            self.attention_map = AttentionMap(hidden_dim, nheads)
            self.mask_head = MaskHead(hidden_dim, nheads, (channels[2], channels[1], channels[0]))

    def forward(self, images: Tensor, pixel_mask: Tensor | None = None) -> dict[str, Any]:
        """Images float ``[B, 3, H, W]`` in ``[0, 1]`` (padded), pixel_mask bool ``[B, H, W]``
        (True on the image; default all) -> the outputs of the class docstring."""
        feats = self.backbone(images)[-4:]
        b = images.shape[0]
        if pixel_mask is None:
            pixel_mask = torch.ones(b, *images.shape[-2:], dtype=torch.bool, device=images.device)
        top = feats[-1]
        valid = F.interpolate(pixel_mask[None].float(), size=top.shape[-2:])[0].bool()  # nearest, as DETR
        src = self.input_proj(top)
        h, w = src.shape[-2:]
        pos = self.position(src, valid).flatten(2).transpose(1, 2)
        key_mask = valid.flatten(1)[:, None, None, :]
        memory = src.flatten(2).transpose(1, 2)
        for layer in self.encoder:
            memory = layer(memory, pos, key_mask)
        query_pos = self.query_embed.weight[None].expand(b, -1, -1)
        tgt = torch.zeros_like(query_pos)
        states = []
        for layer in self.decoder:
            tgt = layer(tgt, memory, pos, query_pos, key_mask)
            states.append(self.decoder_norm(tgt))
        hs = torch.stack(states)  # [L, B, Q, C]
        logits, boxes = self.class_embed(hs), self.bbox_embed(hs).sigmoid()
        out: dict[str, Any] = {"pred_logits": logits[-1], "pred_boxes": boxes[-1],
                               "aux_outputs": [{"pred_logits": a, "pred_boxes": c} for a, c in zip(logits[:-1], boxes[:-1])]}
        if self.with_masks:
            mem_map = memory.transpose(1, 2).reshape(b, -1, h, w)
            attention = self.attention_map(hs[-1], mem_map, valid)
            out["pred_masks"] = self.mask_head(src, attention, [feats[2], feats[1], feats[0]])
        return out

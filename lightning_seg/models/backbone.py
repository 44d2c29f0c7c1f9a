"""Multi-scale feature extractor shared by every segmentation model.

:class:`Backbone` wraps either a timm ``features_only`` model (any CNN or hierarchical /
plain vision transformer timm can return features from) or a torchvision ResNet, and gives
all of them one contract:

* input: the batch contract's ``images``, float ``[B, 3, H, W]`` in ``[0, 1]``; the backbone
  normalises with its own ``pixel_mean`` / ``pixel_std``;
* output: a list of NCHW float features, feature ``i`` of shape
  ``[B, channels[i], ceil(H / strides[i]), ceil(W / strides[i])]`` for any ``H, W`` (odd sizes
  included: models whose layers would floor the size, or that need divisible sizes, see the
  input padded with the mean colour and their features cropped back to the ceil size).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_seg.models.simple_pyramid import SimpleFeaturePyramid

_TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                        "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d",
                        "wide_resnet50_2", "wide_resnet101_2")
_TORCHVISION_STAGES = ("layer1", "layer2", "layer3", "layer4")


def _dilation_flags(output_stride: int) -> list[bool]:
    """torchvision ``replace_stride_with_dilation`` for layer2..layer4 at ``output_stride``."""
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    return [output_stride <= 4, output_stride <= 8, output_stride <= 16]


def _freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d`` in ``module`` by a ``FrozenBatchNorm2d`` with its statistics.

    Frozen statistics and affine parameters are what detection/segmentation fine-tuning uses
    with small per-device batches, where batch statistics would be noise.
    """
    from torchvision.ops.misc import FrozenBatchNorm2d

    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        with torch.no_grad():
            if module.affine:
                frozen.weight.copy_(module.weight)
                frozen.bias.copy_(module.bias)
            if module.track_running_stats and module.running_mean is not None:
                frozen.running_mean.copy_(module.running_mean)
                frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        new = _freeze_batchnorm(child)
        if new is not child:
            setattr(module, name, new)
    return module


def _feature_names(strides: Sequence[int], output_stride: int) -> list[str]:
    """``res{log2(undilated stride)}`` per feature (``stem`` at stride 2); ``feature{i}`` when the
    strides do not tell the stages apart (a plain ViT's blocks without the simple pyramid)."""
    nominal: list[int] = []
    for s in strides:
        if nominal and s <= nominal[-1]:
            if output_stride == 32 or s != output_stride:
                return [f"feature{i}" for i in range(len(strides))]
            s = nominal[-1] * 2  # a dilated stage keeps the previous stride
        nominal.append(int(s))
    if any(s & (s - 1) for s in nominal):
        return [f"feature{i}" for i in range(len(strides))]
    return ["stem" if s == 2 else f"res{s.bit_length() - 1}" for s in nominal]


class Backbone(nn.Module):
    """Feature extractor over a timm ``features_only`` model or a torchvision ResNet.

    Args:
        name: timm model name (e.g. ``"resnet50"``, ``"convnext_tiny"``,
            ``"swin_tiny_patch4_window7_224"``, ``"vit_small_patch16_224"``) or, with
            ``source="torchvision"``, a torchvision ResNet name (``"resnet50"``).
        source: ``"timm"`` or ``"torchvision"``.
        out_indices: which of the model's features to return (timm's feature indices; for
            torchvision ResNets 0 = stem at stride 2, 1..4 = ``layer1..layer4``). Default: the
            features at stride >= ``min_stride`` (the stride 4/8/16/32 stages of a CNN or
            hierarchical transformer); for a plain ViT four evenly spaced blocks ending at the
            last one.
        output_stride: 8 or 16 dilates the last stages instead of striding them (DeepLab);
            32 = no dilation. Only for models that support it (ResNets, ConvNeXt, ...).
        pretrained: ``False`` = random init; ``True`` = the default pretrained weights from the
            hub (needs network or a filled cache); a string = path to a local weights file.
        frozen_stages: ``-1`` trains everything; ``0`` freezes the stem (everything before the
            first stage); ``k`` freezes the stem and stages ``1..k``.
        freeze_bn: replace BatchNorm layers by frozen ones (statistics and affine fixed).
        pixel_mean: RGB mean of the pretraining data, in ``[0, 1]`` units.
        pixel_std: RGB standard deviation of the pretraining data, in ``[0, 1]`` units.
        min_stride: with the default ``out_indices``, return the features at stride
            ``>= min_stride``; ``2`` adds a CNN's stride-2 stem feature (what U-Net uses).
        simple_pyramid: map four single-stride transformer features (a plain ViT's blocks) to
            strides 4/8/16/32 with :class:`~lightning_seg.models.simple_pyramid.SimpleFeaturePyramid`;
            ``None`` (default) does so exactly when the backbone is such a transformer.
        **timm_kwargs: passed to ``timm.create_model`` (e.g. ``img_size``, ``drop_path_rate``,
            ``dynamic_img_size``).

    Attributes:
        channels: number of channels of each returned feature.
        strides: stride (input pixels per feature pixel) of each returned feature.
        size_divisibility: the backbone pads inputs to a multiple of this (1 = never pads).
        feature_names: a name per returned feature, detectron2 style: ``res{k}`` for the stage
            whose undilated stride is ``2**k`` (``res2`` .. ``res5`` for strides 4..32, also when
            ``output_stride`` dilates the last stages), ``stem`` for a stride-2 stem feature.
            :meth:`named_features` returns the features under these names, the ``OrderedDict``
            torchvision's ``MultiScaleRoIAlign`` and ``FeaturePyramidNetwork`` take.
    """

    def __init__(
        self,
        name: str = "resnet50",
        source: Literal["timm", "torchvision"] = "timm",
        out_indices: Sequence[int] | None = None,
        output_stride: int = 32,
        pretrained: bool | str = False,
        frozen_stages: int = -1,
        freeze_bn: bool = False,
        pixel_mean: Sequence[float] = (0.485, 0.456, 0.406),
        pixel_std: Sequence[float] = (0.229, 0.224, 0.225),
        min_stride: int = 4,
        simple_pyramid: bool | None = None,
        **timm_kwargs,
    ) -> None:
        super().__init__()
        if len(pixel_mean) != 3 or len(pixel_std) != 3:
            raise ValueError(f"pixel_mean / pixel_std need 3 values, got {pixel_mean} / {pixel_std}")
        if any(s <= 0 for s in pixel_std):
            raise ValueError(f"pixel_std must be positive, got {pixel_std}")
        self.name = name
        self.source = source
        # Not persistent: the state dict stays identical to the wrapped model's, so weights
        # converted from timm / torchvision checkpoints load without extra keys.
        mean = torch.tensor(pixel_mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(pixel_std, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("pixel_mean", mean, persistent=False)
        self.register_buffer("pixel_std", std, persistent=False)
        self._nhwc = False
        if source == "timm":
            self._build_timm(name, out_indices, output_stride, pretrained, min_stride, timm_kwargs)
        elif source == "torchvision":
            if timm_kwargs:
                raise ValueError(f"torchvision backbones take no extra keyword arguments, got {sorted(timm_kwargs)}")
            self._build_torchvision(name, out_indices, output_stride, pretrained, min_stride)
        else:
            raise ValueError(f"Backbone source must be 'timm' or 'torchvision', got {source!r}")
        single_stride = len(set(self.strides)) == 1 and len(self.strides) == 4
        if simple_pyramid is None:
            simple_pyramid = single_stride
        self.pyramid: SimpleFeaturePyramid | None = None
        if simple_pyramid:
            if not single_stride:
                raise ValueError(f"simple_pyramid needs 4 features at one stride; {name!r} gives strides {self.strides}")
            self.pyramid = SimpleFeaturePyramid(self.channels)
            s = self.strides[0]
            self.channels = list(self.pyramid.out_channels)
            self.strides = [int(s * f) for f in self.pyramid.scales]
        if source == "torchvision" and self.pyramid is None:
            self.feature_names = [("stem", "res2", "res3", "res4", "res5")[i] for i in self._select]
        else:  # timm stages are consecutive, so their undilated strides follow from the strides
            self.feature_names = _feature_names(self.strides, output_stride)
        self.frozen_stages = frozen_stages
        self._freeze_stages(frozen_stages)
        if freeze_bn:
            _freeze_batchnorm(self.model)

    # ------------------------------------------------------------------ construction
    def _build_timm(self, name, out_indices, output_stride, pretrained, min_stride, timm_kwargs) -> None:
        import timm
        from timm.models import is_model_in_modules

        kwargs = dict(timm_kwargs)
        if isinstance(pretrained, str):
            path = Path(pretrained)
            if not path.is_file():
                raise FileNotFoundError(f"pretrained weights file for backbone {name!r} not found: {path}")
            kwargs["pretrained_cfg_overlay"] = dict(file=str(path))
            use_pretrained = True
        else:
            use_pretrained = bool(pretrained)
        if output_stride != 32:
            _dilation_flags(output_stride)  # validates the value
            kwargs["output_stride"] = output_stride
        if out_indices is not None:
            kwargs["out_indices"] = tuple(int(i) for i in out_indices)
        try:
            model = timm.create_model(name, features_only=True, pretrained=use_pretrained, **kwargs)
        except TypeError as err:
            raise ValueError(f"timm model {name!r} does not accept these arguments {sorted(kwargs)}: {err}") from err
        except RuntimeError as err:
            if "Unknown model" in str(err):
                raise ValueError(f"unknown timm model {name!r}") from err
            raise
        info = model.feature_info
        if out_indices is None:
            reductions = info.reduction()
            if len(set(reductions)) == 1 and hasattr(model, "model") and hasattr(model.model, "blocks"):
                # A plain (non-hierarchical) transformer: every block is at the patch stride,
                # so take four evenly spaced blocks ending at the last (as ViTDet does).
                depth = len(model.model.blocks)
                step = max(depth // 4, 1)
                picks = tuple(sorted({max(depth - 1 - k * step, 0) for k in range(4)}))
                model = timm.create_model(name, features_only=True, pretrained=use_pretrained,
                                          out_indices=picks, **kwargs)
                info = model.feature_info
                self._select = list(range(len(info.channels())))
            else:
                self._select = [i for i, r in enumerate(reductions) if r >= min_stride]
                if not self._select:
                    raise ValueError(f"timm model {name!r} has no feature at stride >= {min_stride} "
                                     f"(strides {reductions})")
        else:
            self._select = list(range(len(info.channels())))
        self.model = model
        channels, strides = info.channels(), info.reduction()
        self.channels = [int(channels[i]) for i in self._select]
        self.strides = [int(strides[i]) for i in self._select]
        self._nhwc = str(getattr(model, "output_fmt", "NCHW")).upper().endswith("NHWC")
        # Patch embeddings need divisible sizes and some CNN stems floor odd sizes; timm's
        # ResNets pad every strided layer, so their features already come at ceil sizes.
        ceil_native = is_model_in_modules(name.split(".")[0], ["resnet"])
        self.size_divisibility = 1 if ceil_native else max(int(s) for s in info.reduction())
        self._stage_modules = self._timm_stage_modules(model, info)

    @staticmethod
    def _timm_stage_modules(model: nn.Module, info) -> list[list[str]] | None:
        """Names of the children of a flattened timm feature model grouped as ``[stem, stage1, ...]``.

        Stages end at the modules producing the features at stride >= 4; ``None`` when the
        model is not a flat sequence of children (e.g. a ViT feature getter).
        """
        if not hasattr(model, "return_layers"):
            return None
        ends = [m.replace(".", "_") for m, r in zip(info.module_name(), info.reduction()) if r >= 4]
        groups: list[list[str]] = []
        pending: list[str] = []
        for child_name, _ in model.named_children():
            pending.append(child_name)
            if child_name in ends:
                groups.append(pending)
                pending = []
        if not groups:
            return None
        # Everything before the first stage module is the stem.
        return [groups[0][:-1], [groups[0][-1]], *groups[1:]]

    def _build_torchvision(self, name, out_indices, output_stride, pretrained, min_stride) -> None:
        import torchvision

        if name not in _TORCHVISION_RESNETS:
            raise ValueError(f"torchvision backbone must be one of {_TORCHVISION_RESNETS}, got {name!r}")
        if output_stride != 32 and name in ("resnet18", "resnet34"):
            raise ValueError(f"torchvision {name} cannot be dilated (output_stride={output_stride}); "
                             "use source='timm' or a bottleneck ResNet such as resnet50")
        weights = "DEFAULT" if pretrained is True else None
        model = torchvision.models.get_model(name, weights=weights,
                                             replace_stride_with_dilation=_dilation_flags(output_stride))
        if isinstance(pretrained, str):
            path = Path(pretrained)
            if not path.is_file():
                raise FileNotFoundError(f"pretrained weights file for backbone {name!r} not found: {path}")
            state = torch.load(path, map_location="cpu", weights_only=True)
            missing, unexpected = model.load_state_dict(state, strict=False)
            missing = [k for k in missing if not k.startswith("fc.")]
            unexpected = [k for k in unexpected if not k.startswith("fc.")]
            if missing or unexpected:
                raise ValueError(f"{path}: not a {name} state dict "
                                 f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
        del model.fc, model.avgpool
        self.model = model
        expansion = 1 if name in ("resnet18", "resnet34") else 4
        widths = [64, 64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion]
        all_strides = [2, 4] + [min(4 * 2**i, output_stride) for i in (1, 2, 3)]
        if out_indices is not None:
            self._select = list(out_indices)
        else:
            self._select = [0, 1, 2, 3, 4] if min_stride <= 2 else [1, 2, 3, 4]
        if any(i < 0 or i > 4 for i in self._select):
            raise ValueError(f"torchvision ResNet out_indices must be in 0..4, got {list(self._select)}")
        self.channels = [widths[i] for i in self._select]
        self.strides = [all_strides[i] for i in self._select]
        self.size_divisibility = 1
        self._stage_modules = [["conv1", "bn1", "relu", "maxpool"]] + [[stage] for stage in _TORCHVISION_STAGES]

    def _freeze_stages(self, frozen_stages: int) -> None:
        if frozen_stages < 0:
            return
        if self._stage_modules is None:
            raise ValueError(f"frozen_stages is not supported for backbone {self.name!r} (not a staged model)")
        if frozen_stages >= len(self._stage_modules):
            raise ValueError(f"frozen_stages={frozen_stages} but backbone {self.name!r} has "
                             f"{len(self._stage_modules) - 1} stages")
        for group in self._stage_modules[: frozen_stages + 1]:
            for module_name in group:
                module = getattr(self.model, module_name)
                module.eval()
                for p in module.parameters():
                    p.requires_grad_(False)

    def train(self, mode: bool = True) -> Backbone:
        """Set train/eval mode, keeping frozen stages in eval mode (their BN statistics fixed)."""
        super().train(mode)
        if self.frozen_stages >= 0 and self._stage_modules is not None:
            for group in self._stage_modules[: self.frozen_stages + 1]:
                for module_name in group:
                    getattr(self.model, module_name).eval()
        return self

    # ------------------------------------------------------------------ forward
    def _forward_torchvision(self, x: Tensor) -> list[Tensor]:
        m = self.model
        feats = [m.relu(m.bn1(m.conv1(x)))]
        x = m.maxpool(feats[0])
        for stage in _TORCHVISION_STAGES[: max(self._select)]:
            x = getattr(m, stage)(x)
            feats.append(x)
        return [feats[i] for i in self._select]

    @property
    def feature_strides(self) -> dict[str, int]:
        """Stride of each feature by name (see :attr:`feature_names`)."""
        return dict(zip(self.feature_names, self.strides))

    def named_features(self, images: Tensor) -> OrderedDict[str, Tensor]:
        """The features of :meth:`forward` keyed by :attr:`feature_names`, finest first.

        Args:
            images: float ``[B, 3, H, W]`` in ``[0, 1]``.

        Returns:
            ``OrderedDict`` name -> float ``[B, C, ceil(H / stride), ceil(W / stride)]``.
        """
        return OrderedDict(zip(self.feature_names, self(images)))

    def forward(self, images: Tensor) -> list[Tensor]:
        """Normalise ``images`` and return the selected features.

        Args:
            images: float ``[B, 3, H, W]`` in ``[0, 1]``.

        Returns:
            ``len(self.channels)`` float NCHW tensors, feature ``i`` of shape
            ``[B, channels[i], ceil(H / strides[i]), ceil(W / strides[i])]``.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"Backbone {self.name!r} expects images [B,3,H,W], got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(f"Backbone {self.name!r} expects float images in [0,1], got {images.dtype}")
        h, w = images.shape[-2:]
        x = (images - self.pixel_mean.to(images.dtype)) / self.pixel_std.to(images.dtype)
        d = self.size_divisibility
        if d > 1 and (h % d or w % d):
            # Zero after normalisation = the mean colour, the least surprising fill.
            x = F.pad(x, (0, (-w) % d, 0, (-h) % d))
        if self.source == "torchvision":
            return self._forward_torchvision(x)
        feats = self.model(x)
        feats = [feats[i] for i in self._select]
        if self._nhwc:
            feats = [f.permute(0, 3, 1, 2) for f in feats]
        if self.pyramid is not None:
            feats = self.pyramid(feats)
        if d > 1 or self.pyramid is not None:
            feats = [f[..., : math.ceil(h / s), : math.ceil(w / s)] for f, s in zip(feats, self.strides)]
        return feats


def build_backbone(
    backbone: str = "resnet50",
    backbone_source: Literal["timm", "torchvision"] = "timm",
    pretrained: bool | str = False,
    out_indices: Sequence[int] | None = None,
    frozen_stages: int = -1,
    freeze_bn: bool = False,
    backbone_kwargs: dict | None = None,
    output_stride: int = 32,
    min_stride: int = 4,
) -> Backbone:
    """A :class:`Backbone` from the flat backbone arguments every model (and task) takes.

    Args:
        backbone: timm model name, or a torchvision ResNet name with ``backbone_source``.
        backbone_source: ``"timm"`` or ``"torchvision"``.
        pretrained: ``False``, ``True`` (hub weights) or a local weights file path.
        out_indices: backbone features to use (default: see :class:`Backbone`).
        frozen_stages: backbone stages to freeze (``-1`` = none).
        freeze_bn: freeze the backbone's BatchNorm layers.
        backbone_kwargs: extra ``timm.create_model`` arguments (``img_size``, ``drop_path_rate``,
            ...).
        output_stride: 8 / 16 dilate the last stages; 32 = plain.
        min_stride: with the default ``out_indices``, features at stride ``>= min_stride``.
    """
    return Backbone(backbone, source=backbone_source, out_indices=out_indices, output_stride=output_stride,
                    pretrained=pretrained, frozen_stages=frozen_stages, freeze_bn=freeze_bn,
                    min_stride=min_stride, **(backbone_kwargs or {}))

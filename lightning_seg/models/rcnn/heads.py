"""The RoI box and mask heads of Mask R-CNN (injectable ``nn.Module`` s, torchvision's key layout)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from lightning_seg.models.layers import ConvNormAct, Norm, c2_xavier_fill


class BoxHead(nn.Module):
    """RoI features -> one vector per RoI: ``num_convs`` 3x3 convs, then ``num_fc`` fc layers.

    ``num_convs=0, num_fc=2`` is detectron2's ``2fc`` / torchvision's ``TwoMLPHead`` (keys
    ``fc6``, ``fc7``); ``num_convs=4, num_fc=1`` with BN is torchvision v2's
    ``FastRCNNConvFCHead`` (keys ``0`` .. ``3`` convs, ``5`` fc) and, with GN, detectron2's
    ``4conv1fc``.

    Args:
        in_channels: channels of the pooled features.
        resolution: side of the pooled features (7).
        num_convs, conv_dim, num_fc, fc_dim: the layers.
        norm: normalisation of the convs.
    """

    def __init__(self, in_channels: int, resolution: int = 7, num_convs: int = 0, conv_dim: int = 256,
                 num_fc: int = 2, fc_dim: int = 1024, norm: Norm = "none") -> None:
        super().__init__()
        self.num_convs = num_convs
        self.out_channels = fc_dim
        if num_convs == 0:
            if num_fc != 2:
                raise ValueError("a box head without convs has two fc layers (fc6, fc7)")
            self.fc6 = nn.Linear(in_channels * resolution**2, fc_dim)
            self.fc7 = nn.Linear(fc_dim, fc_dim)
            self.layers = None
        else:
            layers: list[nn.Module] = [ConvNormAct(in_channels if i == 0 else conv_dim, conv_dim, 3, norm=norm)
                                       for i in range(num_convs)]
            layers.append(nn.Flatten(1))
            width = conv_dim * resolution**2
            for _ in range(num_fc):
                layers += [nn.Linear(width, fc_dim), nn.ReLU(inplace=True)]
                width = fc_dim
            self.layers = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                c2_xavier_fill(m)  # detectron2's fc init

    def forward(self, x: Tensor) -> Tensor:
        """float ``[R, C, s, s]`` -> float ``[R, fc_dim]``."""
        if self.layers is not None:
            return self.layers(x)
        return self.fc7(self.fc6(x.flatten(1)).relu()).relu()


class BoxPredictor(nn.Module):
    """Class scores (``K`` classes + background last) and class-specific (or agnostic) box deltas.

    Args:
        in_channels: box head width.
        num_classes: ``K``.
        class_agnostic: one box per RoI instead of one per class.
    """

    def __init__(self, in_channels: int, num_classes: int, class_agnostic: bool = False) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes + 1)
        self.bbox_pred = nn.Linear(in_channels, 4 * (1 if class_agnostic else num_classes))
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """float ``[R, D]`` -> logits ``[R, K + 1]``, deltas ``[R, 4K]`` (or ``[R, 4]``)."""
        return self.cls_score(x), self.bbox_pred(x)


class MaskHead(nn.Module):
    """``num_convs`` 3x3 convs, a 2x transposed conv + ReLU, a 1x1 conv to one mask per class.

    Keys: ``convs.{i}`` (``0`` conv, ``1`` norm), ``deconv``, ``predictor``.

    Args:
        in_channels: channels of the pooled features (14x14).
        num_classes: ``K`` (ignored with ``class_agnostic``).
        conv_dims: width of each conv (detectron2: four of 256).
        norm: normalisation of the convs.
        class_agnostic: one mask per RoI.
    """

    def __init__(self, in_channels: int, num_classes: int, conv_dims: Sequence[int] = (256, 256, 256, 256),
                 norm: Norm = "none", class_agnostic: bool = False) -> None:
        super().__init__()
        widths = [in_channels, *conv_dims]
        self.convs = nn.Sequential(*[ConvNormAct(widths[i], widths[i + 1], 3, norm=norm)
                                     for i in range(len(conv_dims))])
        self.deconv = nn.ConvTranspose2d(widths[-1], widths[-1], 2, stride=2)
        self.predictor = nn.Conv2d(widths[-1], 1 if class_agnostic else num_classes, 1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and m is not self.predictor:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.zeros_(self.predictor.bias)

    def forward(self, x: Tensor) -> Tensor:
        """float ``[R, C, s, s]`` -> mask logits ``[R, K or 1, 2s, 2s]``."""
        return self.predictor(self.deconv(self.convs(x)).relu())

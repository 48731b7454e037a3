"""FPN necks shared by every body, and the ResNet (or MobileNetV2) + FPN builder of FCOS.

Two necks, one per family of methods; each body module registers its builders with
both (see the "Backbones" section of the README):

* `fcos_fpn`: FPN on ``MODEL.FPN.IN_FEATURES`` plus ``MODEL.FCOS.TOP_LEVELS`` levels
  computed from P5 by stride-2 3x3 convs: P3-P7 for FCOS, BlendMask, CondInst and BoxInst
  (builders ``build_fcos_<body>_fpn_backbone``, AdelaiDet's names);
* `maxpool_fpn`: Detectron2's original FPN, P2-P5 plus P6 by a stride-2 max pool of P5,
  the neck of SOLOv2's configs (builders ``build_<body>_fpn_backbone``, as Detectron2's
  ``build_resnet_fpn_backbone``).

SparseInst reads the body's own outputs (``build_<body>_backbone``).
"""
from typing import Sequence

import fvcore.nn.weight_init as weight_init
from torch import nn

from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BACKBONE_REGISTRY, FPN, Backbone, build_resnet_backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool, LastLevelP6P7

from .mobilenet_v2 import build_mnv2_backbone
from .resnet_deform import build_resnet_deform_backbone


class LastLevelP6(nn.Module):
    """One extra level, P6, from `in_feature` by a stride-2 3x3 conv."""

    def __init__(self, in_channels, out_channels, in_feature="p5"):
        super().__init__()
        self.num_levels = 1
        self.in_feature = in_feature
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        weight_init.c2_xavier_fill(self.p6)

    def forward(self, x):
        return [self.p6(x)]


def build_top_block(top_levels: int, channels: int, in_feature: str = "p5"):
    """P6/P7 (2), P6 (1) or nothing (0) on top of the FPN's last output."""
    if top_levels == 2:
        return LastLevelP6P7(channels, channels, in_feature)
    if top_levels == 1:
        return LastLevelP6(channels, channels, in_feature)
    if top_levels == 0:
        return None
    raise ValueError(f"MODEL.FCOS.TOP_LEVELS must be 0, 1 or 2, got {top_levels}")


def _check_backbone_options(cfg):
    if cfg.MODEL.BACKBONE.ANTI_ALIAS:
        raise NotImplementedError("MODEL.BACKBONE.ANTI_ALIAS=True is not supported yet")


def check_neck_inputs(bottom_up: Backbone, in_features: Sequence[str], key: str) -> None:
    """Raise a ValueError naming ``key`` if a neck input is not an output of the body."""
    missing = [f for f in in_features if f not in bottom_up.output_shape()]
    if missing:
        raise ValueError(
            f"{key} = {list(in_features)} asks for {missing}, which the backbone body does "
            f"not output (it outputs {list(bottom_up.output_shape())}; see its OUT_FEATURES key)"
        )


def fcos_fpn(cfg, bottom_up) -> FPN:
    """FPN on `bottom_up`'s MODEL.FPN.IN_FEATURES, plus MODEL.FCOS.TOP_LEVELS extra levels
    computed from P5: the neck every FCOS-based backbone builder shares."""
    check_neck_inputs(bottom_up, cfg.MODEL.FPN.IN_FEATURES, "MODEL.FPN.IN_FEATURES")
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=build_top_block(cfg.MODEL.FCOS.TOP_LEVELS, out_channels),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


def maxpool_fpn(cfg, bottom_up) -> FPN:
    """Detectron2's FPN on MODEL.FPN.IN_FEATURES (four inputs give P2-P5) plus P6 by max
    pooling P5, as ``build_resnet_fpn_backbone`` builds it: SOLOv2's P2-P6."""
    check_neck_inputs(bottom_up, cfg.MODEL.FPN.IN_FEATURES, "MODEL.FPN.IN_FEATURES")
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


def build_fcos_bottom_up(cfg, input_shape: ShapeSpec) -> Backbone:
    """The body of AdelaiDet's "resnet" builders: MobileNetV2 if MODEL.MOBILENET, else
    ResNet (Detectron2's, any depth it supports: 18, 34, 50, 101, 152). With
    MODEL.RESNETS.DEFORM_ON_PER_STAGE, the deformable stages use adet's deformable
    convolution (Detectron2's needs its compiled ops): see `resnet_deform`."""
    _check_backbone_options(cfg)
    if cfg.MODEL.MOBILENET:
        return build_mnv2_backbone(cfg, input_shape)
    if any(cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE):
        return build_resnet_deform_backbone(cfg, input_shape)
    return build_resnet_backbone(cfg, input_shape)


@BACKBONE_REGISTRY.register()
def build_fcos_resnet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """ResNet (or MobileNetV2, with MODEL.MOBILENET) + `fcos_fpn`: see `build_fcos_bottom_up`."""
    return fcos_fpn(cfg, build_fcos_bottom_up(cfg, input_shape))


@BACKBONE_REGISTRY.register()
def build_mnv2_fpn_backbone(cfg, input_shape: ShapeSpec):
    """MobileNetV2 + `maxpool_fpn` (P2-P6, e.g. for SOLOv2; FPN.IN_FEATURES res2..res5)."""
    return maxpool_fpn(cfg, build_mnv2_backbone(cfg, input_shape))


__all__ = [
    "LastLevelP6",
    "build_top_block",
    "check_neck_inputs",
    "fcos_fpn",
    "maxpool_fpn",
    "build_fcos_bottom_up",
    "build_fcos_resnet_fpn_backbone",
    "build_mnv2_fpn_backbone",
]

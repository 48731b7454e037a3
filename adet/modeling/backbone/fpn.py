"""ResNet + FPN with the extra P6/P7 levels FCOS-style detectors use."""
import fvcore.nn.weight_init as weight_init
from torch import nn

from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BACKBONE_REGISTRY, FPN, build_resnet_backbone
from detectron2.modeling.backbone.fpn import LastLevelP6P7

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


def fcos_fpn(cfg, bottom_up) -> FPN:
    """FPN on `bottom_up`'s MODEL.FPN.IN_FEATURES, plus MODEL.FCOS.TOP_LEVELS extra levels
    computed from P5: the neck every FCOS-based backbone builder shares."""
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=build_top_block(cfg.MODEL.FCOS.TOP_LEVELS, out_channels),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


@BACKBONE_REGISTRY.register()
def build_fcos_resnet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """ResNet (Detectron2's, any depth it supports: 18, 34, 50, 101, 152) + `fcos_fpn`.
    With MODEL.RESNETS.DEFORM_ON_PER_STAGE, the deformable stages use adet's deformable
    convolution (Detectron2's needs its compiled ops): see `resnet_deform`."""
    _check_backbone_options(cfg)
    if any(cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE):
        bottom_up = build_resnet_deform_backbone(cfg, input_shape)
    else:
        bottom_up = build_resnet_backbone(cfg, input_shape)
    return fcos_fpn(cfg, bottom_up)


__all__ = ["LastLevelP6", "build_top_block", "fcos_fpn", "build_fcos_resnet_fpn_backbone"]

"""Backbones, registered with Detectron2's BACKBONE_REGISTRY on import."""
from .fpn import (
    LastLevelP6,
    build_fcos_resnet_fpn_backbone,
    build_mnv2_fpn_backbone,
    build_top_block,
    fcos_fpn,
    maxpool_fpn,
)
from .dla import DLA, build_dla_backbone, build_fcos_dla_fpn_backbone
from .efficientnet_lite import (
    EfficientNetLite,
    build_efficientnet_lite_backbone,
    build_efficientnet_lite_fpn_backbone,
    build_fcos_efficientnet_lite_fpn_backbone,
)
from .mobilenet_v2 import MobileNetV2, build_mnv2_backbone
from .vovnet import VoVNet, build_fcos_vovnet_fpn_backbone, build_vovnet_backbone, build_vovnet_fpn_backbone
from .bifpn import BiFPN, build_fcos_resnet_bifpn_backbone
from .resnet_vd import build_resnet_vd_backbone

__all__ = [
    "LastLevelP6", "build_top_block", "fcos_fpn", "build_fcos_resnet_fpn_backbone",
    "DLA", "build_dla_backbone", "build_fcos_dla_fpn_backbone",
    "EfficientNetLite", "build_efficientnet_lite_backbone", "build_fcos_efficientnet_lite_fpn_backbone",
    "maxpool_fpn", "build_efficientnet_lite_fpn_backbone",
    "MobileNetV2", "build_mnv2_backbone", "build_mnv2_fpn_backbone",
    "VoVNet", "build_vovnet_backbone", "build_vovnet_fpn_backbone", "build_fcos_vovnet_fpn_backbone",
    "BiFPN", "build_fcos_resnet_bifpn_backbone",
    "build_resnet_vd_backbone",
]

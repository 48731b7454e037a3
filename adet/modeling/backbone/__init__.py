"""Backbones, registered with Detectron2's BACKBONE_REGISTRY on import."""
from .fpn import LastLevelP6, build_fcos_resnet_fpn_backbone, build_top_block, fcos_fpn
from .dla import DLA, build_dla_backbone, build_fcos_dla_fpn_backbone
from .efficientnet_lite import (
    EfficientNetLite,
    build_efficientnet_lite_backbone,
    build_fcos_efficientnet_lite_fpn_backbone,
)

__all__ = [
    "LastLevelP6", "build_top_block", "fcos_fpn", "build_fcos_resnet_fpn_backbone",
    "DLA", "build_dla_backbone", "build_fcos_dla_fpn_backbone",
    "EfficientNetLite", "build_efficientnet_lite_backbone", "build_fcos_efficientnet_lite_fpn_backbone",
]

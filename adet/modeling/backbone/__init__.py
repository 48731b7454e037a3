from .fpn import LastLevelP6, build_fcos_resnet_fpn_backbone, build_top_block
from .dla import DLA, build_dla_backbone, build_fcos_dla_fpn_backbone
from .efficientnet_lite import EfficientNetLite, build_fcos_efficientnet_lite_fpn_backbone

__all__ = ["LastLevelP6", "build_fcos_resnet_fpn_backbone", "build_top_block"]

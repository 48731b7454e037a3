from .fpn import LastLevelP6, build_fcos_resnet_fpn_backbone, build_top_block
from .dla import DLA, build_dla_backbone, build_fcos_dla_fpn_backbone

__all__ = ["LastLevelP6", "build_fcos_resnet_fpn_backbone", "build_top_block"]

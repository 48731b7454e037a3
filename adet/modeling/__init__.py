"""Models; importing this registers them with Detectron2's registries."""
from .backbone import build_fcos_resnet_fpn_backbone
from .fcos import FCOS
from .one_stage_detector import OneStageDetector

__all__ = ["build_fcos_resnet_fpn_backbone", "FCOS", "OneStageDetector"]

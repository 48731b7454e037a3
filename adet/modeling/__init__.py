"""Models; importing this registers them with Detectron2's registries."""
from .backbone import build_fcos_resnet_fpn_backbone
from .fcos import FCOS
from .condinst import CondInst  # noqa: F401  (registers the meta-architecture)
from .one_stage_detector import OneStageDetector
from .blendmask import BlendMask  # noqa: F401  (registers the meta-architecture)
from .solov2 import SOLO, SOLOv2  # noqa: F401  (registers the meta-architectures)
from .sparseinst import SparseInst  # noqa: F401  (registers the meta-architecture)

__all__ = ["build_fcos_resnet_fpn_backbone", "FCOS", "OneStageDetector"]

from .condinst import CondInst
from .dynamic_mask_head import DynamicMaskHead
from .mask_branch import MaskBranch

__all__ = ["CondInst", "DynamicMaskHead", "MaskBranch"]

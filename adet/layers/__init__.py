"""Ops and losses shared by several methods."""
from .deform_conv import DeformConv, DFConv2d, ModulatedDeformConv, deform_conv2d
from .dice_loss import dice_loss
from .iou_loss import IOULoss, ltrb_iou
from .mask_nms import mask_iou_matrix, mask_nms
from .masks import masks_to_boxes, mass_centers
from .matrix_nms import matrix_nms
from .ml_nms import ml_nms
from .norm import NaiveGroupNorm, PerLevelNorm, head_norm, run_per_level

__all__ = ["DeformConv", "DFConv2d", "ModulatedDeformConv", "deform_conv2d", "dice_loss", "matrix_nms",
           "mask_iou_matrix", "mask_nms", "masks_to_boxes", "mass_centers",
           "IOULoss", "ltrb_iou", "ml_nms", "NaiveGroupNorm", "PerLevelNorm", "head_norm", "run_per_level"]

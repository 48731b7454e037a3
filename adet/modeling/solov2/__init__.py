"""The SOLO family: SOLO, Decoupled SOLO and SOLOv2 (instance segmentation by locations),
one implementation of targets, losses and inference; the variants differ in the mask part."""
from .base import SOLOBase
from .heads import SOLOInstanceHead, SOLOv2InsHead, SOLOv2MaskHead
from .solo import SOLO
from .solo_heads import DecoupledSOLOInsHead, SOLOInsHead
from .solov2 import SOLOv2

__all__ = ["SOLO", "SOLOBase", "SOLOv2", "SOLOInstanceHead", "SOLOInsHead", "DecoupledSOLOInsHead",
           "SOLOv2InsHead", "SOLOv2MaskHead"]

"""SOLOv2: instance segmentation by locations, dynamic mask kernels, Matrix NMS."""
from .heads import SOLOv2InsHead, SOLOv2MaskHead
from .solov2 import SOLOv2

__all__ = ["SOLOv2", "SOLOv2InsHead", "SOLOv2MaskHead"]

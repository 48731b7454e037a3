"""Class-aware (multi-label) NMS on Detectron2 Instances."""
from detectron2.layers import batched_nms


def ml_nms(instances, nms_thresh: float, max_proposals: int = -1):
    """Non-maximum suppression done independently per class.

    `instances` needs `pred_boxes`, `scores` and `pred_classes`. The kept instances
    come out sorted by decreasing score; at most `max_proposals` when it is > 0.
    A threshold <= 0 disables NMS.
    """
    if nms_thresh <= 0:
        return instances
    keep = batched_nms(instances.pred_boxes.tensor, instances.scores, instances.pred_classes, nms_thresh)
    if max_proposals > 0:
        keep = keep[:max_proposals]
    return instances[keep]

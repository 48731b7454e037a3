"""IoU-family losses on boxes given as distances (left, top, right, bottom) from a point."""
import torch
from torch import nn

_LOSS_TYPES = ("iou", "linear_iou", "giou")


def ltrb_iou(pred: torch.Tensor, target: torch.Tensor):
    """IoU and GIoU of boxes that share their anchor point.

    Both inputs are (N, 4) distances (l, t, r, b) from the same location, so the
    intersection and enclosing box follow from element-wise min / max of the distances.
    Returns (iou, giou), each of shape (N,). The +1 smoothing keeps empty boxes finite.
    """
    pred_area = (pred[:, 0] + pred[:, 2]) * (pred[:, 1] + pred[:, 3])
    target_area = (target[:, 0] + target[:, 2]) * (target[:, 1] + target[:, 3])
    inner = torch.minimum(pred, target)
    outer = torch.maximum(pred, target)
    intersection = (inner[:, 0] + inner[:, 2]) * (inner[:, 3] + inner[:, 1])
    enclosing = (outer[:, 0] + outer[:, 2]) * (outer[:, 3] + outer[:, 1])
    union = target_area + pred_area - intersection
    iou = (intersection + 1.0) / (union + 1.0)
    giou = iou - (enclosing - union) / enclosing
    return iou, giou


class IOULoss(nn.Module):
    """IoU loss of UnitBox ("iou": -log IoU), its linear form ("linear_iou": 1 - IoU) and
    GIoU ("giou": 1 - GIoU), summed over boxes, optionally weighted per box.
    """

    def __init__(self, loc_loss_type: str = "iou"):
        super().__init__()
        if loc_loss_type not in _LOSS_TYPES:
            raise ValueError(f"LOC_LOSS_TYPE must be one of {_LOSS_TYPES}, got {loc_loss_type!r}")
        self.loc_loss_type = loc_loss_type

    def forward(self, pred, target, weight=None, return_iou=False):
        iou, giou = ltrb_iou(pred, target)
        if self.loc_loss_type == "iou":
            losses = -torch.log(iou)
        elif self.loc_loss_type == "linear_iou":
            losses = 1 - iou
        else:
            losses = 1 - giou
        loss = (losses * weight).sum() if weight is not None else losses.sum()
        return (loss, iou) if return_iou else loss

"""FCOS losses: focal loss on classes, IoU loss on boxes, BCE on box quality."""
import torch
from torch.nn import functional as F
from fvcore.nn import sigmoid_focal_loss_jit

from detectron2.layers import cat
from detectron2.utils import comm


def reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of `tensor` over all processes (a copy; the input is untouched)."""
    if comm.get_world_size() == 1:
        return tensor
    tensor = tensor.clone()
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
    return tensor


def centerness_targets(reg_targets: torch.Tensor) -> torch.Tensor:
    """sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)) for (N, 4) ltrb distances."""
    if len(reg_targets) == 0:
        return reg_targets.new_zeros(len(reg_targets))
    left_right = reg_targets[:, [0, 2]]
    top_bottom = reg_targets[:, [1, 3]]
    ctrness = (left_right.min(dim=-1).values / left_right.max(dim=-1).values) * \
              (top_bottom.min(dim=-1).values / top_bottom.max(dim=-1).values)
    return torch.sqrt(ctrness)


class FCOSLoss:
    """Computes the FCOS losses from flattened predictions and targets (see
    `FCOSOutputs`). Keeps the moving foreground count for LOSS_NORMALIZER_CLS="moving_fg".
    """

    MOVING_FG_MOMENTUM = 0.9

    def __init__(self, loc_loss_func, focal_alpha: float, focal_gamma: float, box_quality: str,
                 loss_normalizer_cls: str, loss_weight_cls: float):
        if box_quality not in ("ctrness", "iou"):
            raise ValueError(f"MODEL.FCOS.BOX_QUALITY must be 'ctrness' or 'iou', got {box_quality!r}")
        if loss_normalizer_cls not in ("fg", "moving_fg", "all"):
            raise ValueError(
                f"MODEL.FCOS.LOSS_NORMALIZER_CLS must be 'fg', 'moving_fg' or 'all', got {loss_normalizer_cls!r}"
            )
        self.loc_loss_func = loc_loss_func
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.box_quality = box_quality
        self.loss_normalizer_cls = loss_normalizer_cls
        self.loss_weight_cls = loss_weight_cls
        self.moving_num_fg = 100.0  # a start value; the average quickly forgets it

    def _class_normalizer(self, num_pos_avg: float, num_locations: int) -> float:
        if self.loss_normalizer_cls == "fg":
            return num_pos_avg
        if self.loss_normalizer_cls == "moving_fg":
            m = self.MOVING_FG_MOMENTUM
            self.moving_num_fg = m * self.moving_num_fg + (1 - m) * num_pos_avg
            return self.moving_num_fg
        total = reduce_sum(torch.tensor([float(num_locations)])).item()
        return max(total / comm.get_world_size(), 1.0)

    def __call__(self, instances, num_classes: int):
        """`instances` holds one row per location (level-major) with fields labels,
        reg_targets, logits_pred, reg_pred, ctrness_pred. Returns (losses, positives),
        where positives are the rows with a foreground label, with `pos_inds` and the
        quality target (`gt_ctrs`, or `gt_ious` for BOX_QUALITY="iou") added."""
        labels = instances.labels.flatten()
        pos_inds = torch.nonzero(labels != num_classes).squeeze(1)
        world_size = comm.get_world_size()
        total_num_pos = reduce_sum(pos_inds.new_tensor([pos_inds.numel()])).item()
        num_pos_avg = max(total_num_pos / world_size, 1.0)

        class_target = torch.zeros_like(instances.logits_pred)
        class_target[pos_inds, labels[pos_inds]] = 1
        class_loss = sigmoid_focal_loss_jit(instances.logits_pred, class_target, alpha=self.focal_alpha,
                                            gamma=self.focal_gamma, reduction="sum")
        class_loss = class_loss / self._class_normalizer(num_pos_avg, len(labels)) * self.loss_weight_cls

        positives = instances[pos_inds]
        positives.pos_inds = pos_inds
        losses = {"loss_fcos_cls": class_loss}
        if self.box_quality == "ctrness":
            losses.update(self._ctrness_losses(positives, num_pos_avg, world_size))
        else:
            losses.update(self._iou_quality_losses(positives, num_pos_avg))
        return losses, positives

    def _ctrness_losses(self, positives, num_pos_avg: float, world_size: int):
        ctrness_targets = centerness_targets(positives.reg_targets)
        positives.gt_ctrs = ctrness_targets
        # Box loss weighted by centerness and normalised by its sum, so that locations
        # near box centres, which give the best boxes, dominate.
        loss_denorm = max(reduce_sum(ctrness_targets.sum()).item() / world_size, 1e-6)
        if len(positives) == 0:
            zero = positives.reg_pred.sum() * 0 + positives.ctrness_pred.sum() * 0
            return {"loss_fcos_loc": zero, "loss_fcos_ctr": zero}
        reg_loss = self.loc_loss_func(positives.reg_pred, positives.reg_targets, ctrness_targets) / loss_denorm
        ctr_loss = F.binary_cross_entropy_with_logits(positives.ctrness_pred, ctrness_targets,
                                                      reduction="sum") / num_pos_avg
        return {"loss_fcos_loc": reg_loss, "loss_fcos_ctr": ctr_loss}

    def _iou_quality_losses(self, positives, num_pos_avg: float):
        if len(positives) == 0:
            positives.gt_ious = positives.reg_pred.new_zeros(0)
            zero = positives.reg_pred.sum() * 0 + positives.ctrness_pred.sum() * 0
            return {"loss_fcos_loc": zero, "loss_fcos_iou": zero}
        reg_loss, ious = self.loc_loss_func(positives.reg_pred, positives.reg_targets, return_iou=True)
        iou_targets = ious.detach()
        positives.gt_ious = iou_targets
        iou_loss = F.binary_cross_entropy_with_logits(positives.ctrness_pred, iou_targets,
                                                      reduction="sum") / num_pos_avg
        return {"loss_fcos_loc": reg_loss / num_pos_avg, "loss_fcos_iou": iou_loss}


def flatten_head_outputs(per_level, channels: int) -> torch.Tensor:
    """List over levels of (N, C, H, W) -> (sum N*H*W, C): level, then image, then location."""
    return cat([x.permute(0, 2, 3, 1).reshape(-1, channels) for x in per_level], dim=0)

"""SparseInst's training losses (Eq. 3-4) on the matched pairs: focal class loss,
IoU-aware objectness (BCE against the matched mask IoU), dice + pixel BCE mask loss."""
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from fvcore.nn import sigmoid_focal_loss_jit
from torch import nn

from detectron2.config import configurable
from detectron2.utils import comm
from detectron2.utils.registry import Registry

from adet.layers.dice_loss import dice_loss

from .matcher import build_sparse_inst_matcher, padded_target_masks, resize_target_masks

SPARSE_INST_CRITERION_REGISTRY = Registry("SPARSE_INST_CRITERION")
SPARSE_INST_CRITERION_REGISTRY.__doc__ = "Criteria of SparseInst: predictions x targets -> losses."

Indices = List[Tuple[torch.Tensor, torch.Tensor]]


def mask_iou(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """IoU of each (K, HW) predicted mask (probability >= 0.4) with its target (> 0.5)."""
    pred = (logits.sigmoid() >= 0.4).float()
    targets = (targets > 0.5).float()
    intersection = (pred * targets).sum(-1)
    union = targets.sum(-1) + pred.sum(-1) - intersection
    return intersection / (union + 1e-6)


def matched_prediction_index(indices: Indices) -> Tuple[torch.Tensor, torch.Tensor]:
    """(image index, prediction index) of every matched pair, image by image."""
    images = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    return images, torch.cat([src for src, _ in indices])


def matched_target_index(indices: Indices, sizes: Sequence[int]) -> torch.Tensor:
    """Index of every matched pair's target among all images' targets concatenated."""
    offsets = [0]
    for s in sizes[:-1]:
        offsets.append(offsets[-1] + s)
    return torch.cat([tgt + off for (_, tgt), off in zip(indices, offsets)])


@SPARSE_INST_CRITERION_REGISTRY.register()
class SparseInstCriterion(nn.Module):
    """SparseInst's losses on the matcher's pairs, weighted: focal class loss, dice and
    pixel BCE of the masks, BCE objectness against the matched masks' IoU. Everything runs
    in float32 with autocast off (under AMP the outputs are cast up; gradients flow back
    to the half-precision model)."""

    LOSS_NAMES = ("loss_ce", "loss_mask", "loss_dice", "loss_objectness")

    @configurable
    def __init__(self, *, matcher: nn.Module, num_classes: int, items: Sequence[str] = ("labels", "masks"),
                 class_weight: float = 2.0, mask_pixel_weight: float = 5.0, mask_dice_weight: float = 2.0,
                 objectness_weight: float = 1.0, focal_alpha: float = 0.25, focal_gamma: float = 2.0):
        super().__init__()
        self.matcher = matcher
        self.num_classes = num_classes
        self.items = list(items)
        self.weights = dict(zip(self.LOSS_NAMES, (class_weight, mask_pixel_weight, mask_dice_weight,
                                                  objectness_weight)))
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    @classmethod
    def from_config(cls, cfg):
        loss = cfg.MODEL.SPARSE_INST.LOSS
        return {
            "matcher": build_sparse_inst_matcher(cfg),
            "num_classes": cfg.MODEL.SPARSE_INST.DECODER.NUM_CLASSES,
            "items": loss.ITEMS,
            "class_weight": loss.CLASS_WEIGHT,
            "mask_pixel_weight": loss.MASK_PIXEL_WEIGHT,
            "mask_dice_weight": loss.MASK_DICE_WEIGHT,
            "objectness_weight": loss.OBJECTNESS_WEIGHT,
        }

    def loss_labels(self, outputs, targets, indices: Indices, num_instances: float, input_shape):
        logits = outputs["pred_logits"]
        onehot = torch.zeros_like(logits)
        images, preds = matched_prediction_index(indices)
        classes = torch.cat([t["labels"][tgt] for t, (_, tgt) in zip(targets, indices)])
        onehot[images, preds, classes] = 1
        loss = sigmoid_focal_loss_jit(logits.flatten(0, 1), onehot.flatten(0, 1), alpha=self.focal_alpha,
                                      gamma=self.focal_gamma, reduction="sum")
        return {"loss_ce": loss / num_instances}

    def loss_masks(self, outputs, targets, indices: Indices, num_instances: float, input_shape):
        """Dice and pixel BCE of the matched masks, and the objectness loss."""
        pred_masks, pred_scores = outputs["pred_masks"], outputs["pred_scores"]
        sizes = [len(t["labels"]) for t in targets]
        if sum(sizes) == 0:
            zero = pred_masks.sum() * 0.0
            return {"loss_dice": zero, "loss_mask": zero, "loss_objectness": pred_scores.sum() * 0.0}
        images, preds = matched_prediction_index(indices)
        with torch.no_grad():
            gt = padded_target_masks(targets, input_shape, pred_masks)
        gt = resize_target_masks(gt, pred_masks.shape[-2:])
        gt = gt[matched_target_index(indices, sizes)].flatten(1)
        masks = pred_masks[images, preds].flatten(1)
        with torch.no_grad():
            ious = mask_iou(masks, gt)
        return {
            "loss_objectness": F.binary_cross_entropy_with_logits(pred_scores[images, preds].flatten(), ious),
            "loss_dice": dice_loss(masks.sigmoid(), gt, eps=1e-4).sum() / num_instances,
            "loss_mask": F.binary_cross_entropy_with_logits(masks, gt),
        }

    def forward(self, outputs: Dict[str, torch.Tensor], targets: List[Dict], input_shape) -> Dict[str, torch.Tensor]:
        device = outputs["pred_logits"].device
        with torch.autocast(device.type, enabled=False):
            outputs = {k: v.float() if v.is_floating_point() else v for k, v in outputs.items()}
            return self.losses(outputs, targets, input_shape)

    def losses(self, outputs: Dict[str, torch.Tensor], targets: List[Dict], input_shape) -> Dict[str, torch.Tensor]:
        """The weighted losses of float32 ``outputs``."""
        indices = self.matcher(outputs, targets, input_shape)
        device = outputs["pred_logits"].device
        indices = [(src.to(device), tgt.to(device)) for src, tgt in indices]
        num_instances = torch.tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
        if comm.get_world_size() > 1:
            torch.distributed.all_reduce(num_instances)
        num_instances = torch.clamp(num_instances / comm.get_world_size(), min=1).item()
        item_losses = {"labels": self.loss_labels, "masks": self.loss_masks}
        losses = {}
        for item in self.items:
            losses.update(item_losses[item](outputs, targets, indices, num_instances, input_shape))
        return {k: v * self.weights[k] if k in self.weights else v for k, v in losses.items()}


def build_sparse_inst_criterion(cfg) -> nn.Module:
    return SPARSE_INST_CRITERION_REGISTRY.get(cfg.MODEL.SPARSE_INST.LOSS.NAME)(cfg)

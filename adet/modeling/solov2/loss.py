"""Losses of the SOLO family: sigmoid focal loss on the category grids, dice loss on the
masks of the positive cells. The mask part of each variant only supplies the mask
probabilities of given cells (``level_mask_probs``)."""
from typing import Callable, Dict, List, Sequence

import torch
import torch.nn.functional as F
from fvcore.nn import sigmoid_focal_loss_jit

from adet.layers import dice_loss

from .targets import LevelTargets

# The reference adds 1e-3 to each squared sum of its dice denominator.
DICE_EPS = 2e-3

# (image, level, flat cells) -> (n, H, W) mask probabilities of those cells.
LevelMaskProbs = Callable[[int, int, torch.Tensor], torch.Tensor]


def dynamic_masks(mask_features: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Mask logits (N, H, W) of one image: a 1x1 convolution of its (1, E, H, W) mask
    features with each of the (N, E) predicted kernels (SOLOv2)."""
    n, e = kernels.shape
    h, w = mask_features.shape[-2:]
    return F.conv2d(mask_features, kernels.view(n, e, 1, 1), stride=1).view(-1, h, w)


def mask_loss(level_mask_probs: LevelMaskProbs, targets: List[List[LevelTargets]], dice_weight: float,
              mask_outputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean dice loss over every positive entry (level-major, then image), times the weight.
    Without positives: a zero tied to all ``mask_outputs``, so every mask parameter still
    gets a (zero) gradient (DDP expects one)."""
    dice = []
    for level in range(len(targets[0])):
        for image, image_targets in enumerate(targets):
            t = image_targets[level]
            if t.grid_order.numel() == 0:
                continue
            dice.append(dice_loss(level_mask_probs(image, level, t.grid_order), t.masks.float(), eps=DICE_EPS))
    if not dice:
        return sum(t.sum() for t in mask_outputs) * 0.0
    return torch.cat(dice).mean() * dice_weight


def category_loss(cate_preds: List[torch.Tensor], targets: List[List[LevelTargets]], num_classes: int,
                  focal_alpha: float, focal_gamma: float, focal_weight: float) -> torch.Tensor:
    """Sigmoid focal loss over all cells of all levels, divided by (#positives + 1)."""
    num_positive = sum(t.positive.sum() for image_targets in targets for t in image_targets)
    labels = torch.cat([t[level].cate_labels.flatten() for level in range(len(cate_preds)) for t in targets])
    logits = torch.cat([p.permute(0, 2, 3, 1).reshape(-1, num_classes) for p in cate_preds])
    one_hot = torch.zeros_like(logits)
    positive = (labels != num_classes).nonzero().squeeze(1)
    one_hot[positive, labels[positive]] = 1
    return focal_weight * sigmoid_focal_loss_jit(
        logits, one_hot, alpha=focal_alpha, gamma=focal_gamma, reduction="sum") / (num_positive + 1)


def solo_losses(cate_preds: List[torch.Tensor], level_mask_probs: LevelMaskProbs, mask_outputs: Sequence[torch.Tensor],
                targets: List[List[LevelTargets]], num_classes: int, focal_alpha: float, focal_gamma: float,
                focal_weight: float, dice_weight: float) -> Dict[str, torch.Tensor]:
    """``targets[image][level]``; predictions are per level, batched over images."""
    return {"loss_ins": mask_loss(level_mask_probs, targets, dice_weight, mask_outputs),
            "loss_cate": category_loss(cate_preds, targets, num_classes, focal_alpha, focal_gamma, focal_weight)}

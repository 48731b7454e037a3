"""SOLOv2 losses: sigmoid focal loss on the category grids, dice loss on the masks that the
positive cells' kernels produce from the unified mask features."""
from typing import Dict, List

import torch
import torch.nn.functional as F
from fvcore.nn import sigmoid_focal_loss_jit

from adet.layers import dice_loss

from .targets import LevelTargets

# The reference adds 1e-3 to each squared sum of its dice denominator.
DICE_EPS = 2e-3


def dynamic_masks(mask_features: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Mask logits (N, H, W) of one image: a 1x1 convolution of its (1, E, H, W) mask
    features with each of the (N, E) predicted kernels."""
    n, e = kernels.shape
    h, w = mask_features.shape[-2:]
    return F.conv2d(mask_features, kernels.view(n, e, 1, 1), stride=1).view(-1, h, w)


def solov2_losses(cate_preds: List[torch.Tensor], kernel_preds: List[torch.Tensor], mask_features: torch.Tensor,
                  targets: List[List[LevelTargets]], num_classes: int, focal_alpha: float, focal_gamma: float,
                  focal_weight: float, dice_weight: float) -> Dict[str, torch.Tensor]:
    """``targets[image][level]``; predictions are per level, batched over images."""
    mask_logits, mask_targets = [], []
    for level, kernel_pred in enumerate(kernel_preds):
        for image, image_targets in enumerate(targets):
            t = image_targets[level]
            if t.grid_order.numel() == 0:
                continue
            kernels = kernel_pred[image].reshape(kernel_pred.shape[1], -1)[:, t.grid_order]
            mask_logits.append(dynamic_masks(mask_features[image:image + 1], kernels.t()))
            mask_targets.append(t.masks)
    if mask_logits:
        dice = dice_loss(torch.cat(mask_logits).sigmoid(), torch.cat(mask_targets).float(), eps=DICE_EPS)
        loss_ins = dice.mean() * dice_weight
    else:
        loss_ins = mask_features.sum() * 0.0

    num_positive = sum(t.positive.sum() for image_targets in targets for t in image_targets)
    labels = torch.cat([t[level].cate_labels.flatten() for level in range(len(cate_preds)) for t in targets])
    logits = torch.cat([p.permute(0, 2, 3, 1).reshape(-1, num_classes) for p in cate_preds])
    one_hot = torch.zeros_like(logits)
    positive = (labels != num_classes).nonzero().squeeze(1)
    one_hot[positive, labels[positive]] = 1
    loss_cate = focal_weight * sigmoid_focal_loss_jit(
        logits, one_hot, alpha=focal_alpha, gamma=focal_gamma, reduction="sum") / (num_positive + 1)
    return {"loss_ins": loss_ins, "loss_cate": loss_cate}

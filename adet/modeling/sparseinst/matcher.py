"""Hungarian matching of SparseInst's predictions to the ground truth (SparseInst, Eq. 1):
score(i, k) = dice(mask_i, gt_k) ** alpha * p_i(class_k) ** beta, maximised."""
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.utils.registry import Registry

SPARSE_INST_MATCHER_REGISTRY = Registry("SPARSE_INST_MATCHER")
SPARSE_INST_MATCHER_REGISTRY.__doc__ = "Matchers of SparseInst: predictions x targets -> (pred, gt) pairs."


def padded_target_masks(targets: List[Dict], size: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """All images' gt masks, zero-padded to the batch's padded input ``size``, stacked as
    (sum of instances, H, W) in the dtype of ``like``."""
    masks = [t["masks"] for t in targets]
    out = like.new_zeros((sum(len(m) for m in masks), *size))
    start = 0
    for m in masks:
        out[start:start + len(m), : m.shape[1], : m.shape[2]] = m.to(out)
        start += len(m)
    return out


def resize_target_masks(masks: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(K, H, W) padded gt masks -> (K, h, w) soft masks at the prediction's resolution."""
    return F.interpolate(masks[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def dice_score(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Pairwise dice of (P, HW) mask logits and (K, HW) targets -> (P, K)."""
    probs = logits.sigmoid()
    numerator = 2 * probs @ targets.t()
    denominator = (probs * probs).sum(-1)[:, None] + (targets * targets).sum(-1)
    return numerator / (denominator + 1e-4)


@SPARSE_INST_MATCHER_REGISTRY.register()
class SparseInstMatcher(nn.Module):
    """One-to-one matching of each image's N predictions to its targets, maximising
    ``dice ** alpha * p(class) ** beta`` (Hungarian algorithm). Scores are computed in
    float32, with autocast off, whatever the predictions' dtype."""

    @configurable
    def __init__(self, *, alpha: float = 0.8, beta: float = 0.2):
        super().__init__()
        self.alpha = alpha
        self.beta = beta

    @classmethod
    def from_config(cls, cfg):
        return {"alpha": cfg.MODEL.SPARSE_INST.MATCHER.ALPHA, "beta": cfg.MODEL.SPARSE_INST.MATCHER.BETA}

    def matching_score(self, mask_logits: torch.Tensor, class_probs: torch.Tensor,
                       target_masks: torch.Tensor, target_classes: torch.Tensor) -> torch.Tensor:
        """(P, HW) logits, (P, K) probabilities, (T, HW) masks, (T,) classes -> (P, T),
        computed in float32."""
        dice = dice_score(mask_logits.float(), target_masks.float())
        return dice ** self.alpha * class_probs.float()[:, target_classes] ** self.beta

    @torch.no_grad()
    def forward(self, outputs: Dict[str, torch.Tensor], targets: List[Dict],
                input_shape: Sequence[int]) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """For each image, (prediction indices, target indices) of the optimal matching."""
        b, n = outputs["pred_masks"].shape[:2]
        labels = torch.cat([t["labels"] for t in targets])
        if labels.numel() == 0:
            empty = torch.zeros(0, dtype=torch.int64)
            return [(empty, empty)] * b
        score = self.batch_score(outputs, targets, labels, input_shape)
        return assign(score, [len(t["labels"]) for t in targets])

    def batch_score(self, outputs: Dict[str, torch.Tensor], targets: List[Dict], labels: torch.Tensor,
                    input_shape: Sequence[int]) -> torch.Tensor:
        """(B, N, all targets) matching scores, in float32 whatever the outputs' dtype (AMP:
        float16 sums over the pixels overflow, and scores need float32 precision)."""
        pred_masks = outputs["pred_masks"].float()
        b, n = pred_masks.shape[:2]
        with torch.autocast(pred_masks.device.type, enabled=False):
            gt_masks = resize_target_masks(padded_target_masks(targets, input_shape, pred_masks), pred_masks.shape[-2:])
            class_probs = outputs["pred_logits"].float().sigmoid().reshape(b * n, -1)
            score = self.matching_score(pred_masks.reshape(b * n, -1), class_probs, gt_masks.flatten(1), labels)
        return score.view(b, n, -1)


def assign(score: torch.Tensor, sizes: Sequence[int]) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """Per image, the (prediction, target) pairs maximising the summed (B, N, sum(sizes))
    ``score`` (scipy's linear_sum_assignment); ``sizes``: targets per image."""
    from scipy.optimize import linear_sum_assignment  # only training needs scipy

    if not torch.isfinite(score).all():
        raise FloatingPointError("SparseInst matcher: the predictions hold NaN (the matching scores "
                                 "are not finite); training diverged")
    score = score.cpu()
    indices = []
    for i, s in enumerate(score.split(list(sizes), dim=-1)):
        rows, cols = linear_sum_assignment(s[i], maximize=True)
        indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
    return indices


def build_sparse_inst_matcher(cfg) -> nn.Module:
    return SPARSE_INST_MATCHER_REGISTRY.get(cfg.MODEL.SPARSE_INST.MATCHER.NAME)(cfg)

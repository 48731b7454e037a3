"""Standard (greedy) NMS on binary masks: a mask is dropped when a higher-scored kept mask of
the same class overlaps it with IoU above a threshold. The alternative to Matrix NMS for the
SOLO family (the SOLO paper's inference uses it)."""
import torch


def mask_iou_matrix(masks: torch.Tensor) -> torch.Tensor:
    """(N, N) IoU of every pair of (N, H, W) binary masks; pairs of empty masks get 0."""
    n = masks.shape[0]
    flat = masks.reshape(n, -1).float()
    inter = flat @ flat.t()
    areas = flat.sum(dim=1)
    union = areas[:, None] + areas[None, :] - inter
    return inter / union.clamp(min=1.0)


def mask_nms(masks: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
             iou_threshold: float = 0.5) -> torch.Tensor:
    """Class-aware greedy mask NMS, the mask analogue of torchvision's ``batched_nms``.

    Args:
        masks: (N, H, W) binary masks (bool or 0/1), in any order.
        scores: (N,) scores.
        labels: (N,) classes; only masks of the same class suppress each other.
        iou_threshold: masks with IoU > this against a kept, higher-scored mask are removed.

    Returns the int64 indices of the kept masks, by decreasing score (ties: input order).
    """
    n = scores.numel()
    if n == 0:
        return torch.zeros(0, dtype=torch.int64, device=scores.device)
    order = torch.argsort(scores, descending=True, stable=True)
    iou = mask_iou_matrix(masks[order])
    same_class = labels[order][:, None] == labels[order][None, :]
    # suppresses[i, j]: mask i (higher-scored, i < j) removes j if i itself is kept.
    suppresses = (iou > iou_threshold) & same_class & torch.ones_like(same_class).triu(diagonal=1)
    return order[_greedy_keep(suppresses)]


def _greedy_keep(suppresses: torch.Tensor) -> torch.Tensor:
    """Solve keep[j] = not any(keep[i] and suppresses[i, j] for i < j) without a loop over
    masks: iterate the whole vector from "keep all". After t rounds the first t + 1 entries
    are final (each depends only on earlier ones), and the recursion has one solution, so the
    first fixed point is the greedy result; it usually comes after a handful of rounds."""
    keep = torch.ones(suppresses.shape[0], dtype=torch.bool, device=suppresses.device)
    for _ in range(suppresses.shape[0]):
        updated = ~(suppresses & keep[:, None]).any(dim=0)
        if torch.equal(updated, keep):
            break
        keep = updated
    return keep

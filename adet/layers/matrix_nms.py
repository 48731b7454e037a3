"""Matrix NMS (SOLOv2): decay every mask's score by its overlap with higher-scored masks
of the same class, all pairs at once, with no sequential suppression."""
import torch


def matrix_nms(labels: torch.Tensor, masks: torch.Tensor, mask_areas: torch.Tensor, scores: torch.Tensor,
               sigma: float = 2.0, kernel: str = "gaussian") -> torch.Tensor:
    """Decayed scores of N masks sorted by descending score.

    Args:
        labels: (N,) class of each mask; only masks of the same class decay each other.
        masks: (N, H, W) binary masks (bool or 0/1), in descending score order.
        mask_areas: (N,) float pixel count of each mask.
        scores: (N,) scores, descending.
        sigma: Gaussian kernel parameter, decay = exp(-sigma * iou^2).
        kernel: "gaussian" or "linear" (decay = 1 - iou).

    For mask j, with IoU_ij against each higher-scored mask i of its class and
    comp_i = max IoU of mask i with the masks above *it*, the decay factor is
    min_i f(IoU_ij) / f(comp_i). Returns the (N,) updated scores.
    """
    n = labels.numel()
    if n == 0:
        return scores.new_zeros(0)
    flat = masks.reshape(n, -1).float()
    inter = flat @ flat.t()
    areas = mask_areas.float().expand(n, n)
    iou = (inter / (areas + areas.t() - inter)).triu(diagonal=1)
    same_class = (labels[None, :] == labels[:, None]).float().triu(diagonal=1)
    decay_iou = iou * same_class
    # For each mask i (row), the largest IoU it has with a higher-scored mask of its class.
    compensate = decay_iou.max(dim=0).values.expand(n, n).t()
    if kernel == "linear":
        factors = (1 - decay_iou) / (1 - compensate)
    elif kernel == "gaussian":
        factors = torch.exp(-1 * sigma * decay_iou ** 2) / torch.exp(-1 * sigma * compensate ** 2)
    else:
        raise ValueError(f"unknown Matrix NMS kernel {kernel!r} (gaussian or linear)")
    return scores * factors.min(dim=0).values

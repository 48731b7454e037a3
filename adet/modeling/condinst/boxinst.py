"""BoxInst: training CondInst's masks from boxes (Tian et al., 2021).

Two losses replace the mask loss. The projection term asks the mask's projections on
the x and y axes to match the box's. The pairwise term asks neighbouring pixels of
similar colour (in LAB space) inside the box to take the same label.
"""
import torch
from torch.nn import functional as F

from adet.layers import dice_loss

# sRGB (D65) -> CIE XYZ, and the D65 white point of the 2-degree observer.
_XYZ_FROM_RGB = ((0.412453, 0.357580, 0.180423),
                 (0.212671, 0.715160, 0.072169),
                 (0.019334, 0.119193, 0.950227))
_D65_WHITE = (0.95047, 1.0, 1.08883)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """CIE LAB of a (3, H, W) RGB image with values in 0..255 (computed in float64, as
    scikit-image's rgb2lab does, and returned in float32)."""
    x = rgb.double() / 255.0
    x = torch.where(x > 0.04045, ((x + 0.055) / 1.055) ** 2.4, x / 12.92)
    matrix = torch.tensor(_XYZ_FROM_RGB, dtype=torch.float64, device=x.device)
    xyz = torch.einsum("ij,jhw->ihw", matrix, x)
    xyz = xyz / torch.tensor(_D65_WHITE, dtype=torch.float64, device=x.device)[:, None, None]
    f = torch.where(xyz > 0.008856, xyz.clamp(min=0) ** (1.0 / 3.0), 7.787 * xyz + 16.0 / 116.0)
    lightness = 116.0 * f[1] - 16.0
    a = 500.0 * (f[0] - f[1])
    b = 200.0 * (f[1] - f[2])
    return torch.stack((lightness, a, b)).float()


def unfold_wo_center(x: torch.Tensor, kernel_size: int, dilation: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, k*k - 1, H, W): each pixel's dilated k x k neighbours (zero
    outside the map), the pixel itself left out."""
    if kernel_size % 2 != 1:
        raise ValueError(f"MODEL.BOXINST.PAIRWISE.SIZE must be odd, got {kernel_size}")
    padding = (kernel_size + (dilation - 1) * (kernel_size - 1)) // 2
    unfolded = F.unfold(x, kernel_size=kernel_size, padding=padding, dilation=dilation)
    unfolded = unfolded.reshape(x.shape[0], x.shape[1], -1, x.shape[2], x.shape[3])
    center = kernel_size ** 2 // 2
    return torch.cat((unfolded[:, :, :center], unfolded[:, :, center + 1:]), dim=2)


def image_color_similarity(image_lab: torch.Tensor, image_mask: torch.Tensor, kernel_size: int,
                           dilation: int) -> torch.Tensor:
    """(1, k*k - 1, H, W): exp(-||lab_i - lab_j|| / 2) between each pixel i and neighbour j,
    zero where the neighbour falls outside ``image_mask`` (H, W) (padding, removed rows)."""
    if image_lab.dim() != 4 or image_lab.shape[0] != 1:
        raise ValueError(f"expects one (1, 3, H, W) image, got shape {tuple(image_lab.shape)}")
    neighbours = unfold_wo_center(image_lab, kernel_size, dilation)
    similarity = torch.exp(-torch.norm(image_lab[:, :, None] - neighbours, dim=1) * 0.5)
    valid = unfold_wo_center(image_mask[None, None], kernel_size, dilation).max(dim=1).values
    return similarity * valid


def box_bitmasks(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, height, width) float masks, 1 on the pixels rows int(y0)..int(y1) and columns
    int(x0)..int(x1) of each XYXY box (inclusive, coordinates truncated)."""
    starts = boxes[:, :2].long()
    ends = (boxes[:, 2:] + 1).long()  # exclusive
    ys = torch.arange(height, device=boxes.device)
    xs = torch.arange(width, device=boxes.device)
    in_y = (ys[None] >= starts[:, 1:2]) & (ys[None] < ends[:, 1:2])
    in_x = (xs[None] >= starts[:, 0:1]) & (xs[None] < ends[:, 0:1])
    return (in_y[:, :, None] & in_x[:, None, :]).float()


def projection_loss(mask_scores: torch.Tensor, box_masks: torch.Tensor) -> torch.Tensor:
    """Dice loss between the max-projections of predicted and box masks on each axis,
    summed over the two axes and averaged over instances. Inputs are (N, 1, H, W)."""
    loss_y = dice_loss(mask_scores.max(dim=2, keepdim=True).values, box_masks.max(dim=2, keepdim=True).values)
    loss_x = dice_loss(mask_scores.max(dim=3, keepdim=True).values, box_masks.max(dim=3, keepdim=True).values)
    return (loss_x + loss_y).mean()


def pairwise_nll(mask_logits: torch.Tensor, kernel_size: int, dilation: int) -> torch.Tensor:
    """(N, k*k - 1, H, W): -log P(pixel and neighbour get the same label) for (N, 1, H, W)
    mask logits, with P = p_i p_j + (1 - p_i)(1 - p_j), computed in log space."""
    if mask_logits.dim() != 4:
        raise ValueError(f"expects (N, 1, H, W) logits, got shape {tuple(mask_logits.shape)}")
    log_fg = F.logsigmoid(mask_logits)
    log_bg = F.logsigmoid(-mask_logits)
    same_fg = log_fg[:, :, None] + unfold_wo_center(log_fg, kernel_size, dilation)
    same_bg = log_bg[:, :, None] + unfold_wo_center(log_bg, kernel_size, dilation)
    top = torch.max(same_fg, same_bg)
    log_same = torch.log(torch.exp(same_fg - top) + torch.exp(same_bg - top)) + top
    return -log_same[:, 0]


def pairwise_loss(mask_logits: torch.Tensor, color_similarity: torch.Tensor, box_masks: torch.Tensor,
                  kernel_size: int, dilation: int, color_thresh: float) -> torch.Tensor:
    """Mean pairwise NLL over the (pixel, neighbour) pairs of similar colour
    (similarity >= ``color_thresh``) whose pixel lies inside the instance's box."""
    weights = (color_similarity >= color_thresh).float() * box_masks.float()
    return (pairwise_nll(mask_logits, kernel_size, dilation) * weights).sum() / weights.sum().clamp(min=1.0)

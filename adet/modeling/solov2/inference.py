"""Inference of the SOLO family: point NMS on the category grids, candidate (cell, class)
pairs, mask scoring, Matrix NMS (or greedy mask NMS), masks at the output size. The mask part
of each variant only supplies the masks of given cells (a ``cell_probs`` callable).

Memory: the candidates above SCORE_THR can number tens of thousands, and a mask per
candidate would take gigabytes. Every quantity needed to rank them (mask area, maskness)
depends only on the cell, so it is computed once per cell, in chunks; only the NMS_PRE
best candidates get a mask. The result equals the reference's, which materialises all.
"""
import math
from typing import Callable, Sequence, Tuple

import torch
import torch.nn.functional as F

from detectron2.structures import Boxes, Instances

from adet.layers import mask_nms, masks_to_boxes, matrix_nms

NMS_TYPES = ("matrix", "mask")

# (n,) flat cell indices over all levels -> (n, Hf, Wf) mask probabilities at 1/4 scale.
CellProbs = Callable[[torch.Tensor], torch.Tensor]


def point_nms(heat: torch.Tensor, kernel: int = 2) -> torch.Tensor:
    """Keep only the local maxima of (N, C, S, S) scores over 2 x 2 windows (others -> 0)."""
    hmax = F.max_pool2d(heat, (kernel, kernel), stride=1, padding=1)
    keep = (hmax[:, :, :-1, :-1] == heat).float()
    return heat * keep


def _cell_mask_stats(cell_probs: CellProbs, cells: torch.Tensor, mask_thr: float, chunk: int):
    """Per cell: foreground area (float) and maskness (mean probability on the foreground)."""
    areas, maskness = [], []
    for start in range(0, cells.shape[0], chunk):
        probs = cell_probs(cells[start:start + chunk])
        masks = probs > mask_thr
        area = masks.sum((1, 2)).float()
        areas.append(area)
        maskness.append((probs * masks.float()).sum((1, 2)) / area)
    return torch.cat(areas), torch.cat(maskness)


def suppress_duplicates(labels: torch.Tensor, masks: torch.Tensor, scores: torch.Tensor, *, nms_type: str,
                        update_thr: float, nms_kernel: str, nms_sigma: float, nms_iou: float):
    """(keep (N,) bool, scores) for N masks in descending score order. "matrix": Matrix NMS
    decays the scores, which must stay >= update_thr; "mask": greedy mask NMS at IoU
    ``nms_iou``, scores unchanged."""
    if nms_type == "matrix":
        scores = matrix_nms(labels, masks, masks.sum((1, 2)).float(), scores, sigma=nms_sigma, kernel=nms_kernel)
        return scores >= update_thr, scores
    if nms_type == "mask":
        keep = torch.zeros_like(scores, dtype=torch.bool)
        keep[mask_nms(masks, scores, labels, nms_iou)] = True
        return keep, scores
    raise ValueError(f"unknown NMS type {nms_type!r} (one of {NMS_TYPES})")


def _empty(out_size: Tuple[int, int], device) -> Instances:
    result = Instances(out_size)
    result.scores = torch.zeros(0, device=device)
    result.pred_classes = torch.zeros(0, dtype=torch.int64, device=device)
    result.pred_masks = torch.zeros((0,) + tuple(out_size), dtype=torch.bool, device=device)
    result.pred_boxes = Boxes(torch.zeros(0, 4, device=device))
    return result


def inference_single_image(cate_scores: torch.Tensor, cell_probs: CellProbs, cell_strides: torch.Tensor,
                           mask_size: Tuple[int, int], image_size: Tuple[int, int], out_size: Tuple[int, int], *,
                           score_thr: float, mask_thr: float, update_thr: float, nms_pre: int, max_per_img: int,
                           nms_type: str = "matrix", nms_kernel: str = "gaussian", nms_sigma: float = 2.0,
                           nms_iou: float = 0.5, chunk: int = 1024) -> Instances:
    """One image. cate_scores: (L, C) after sigmoid and point NMS, all levels' cells in
    order; cell_probs: the mask probabilities of given cells, (Hf, Wf) = ``mask_size`` each;
    cell_strides: (L,) the stride of each cell's level (a mask must be larger than it).
    nms_type "matrix": Matrix NMS (nms_kernel, nms_sigma), then scores >= update_thr;
    "mask": greedy mask NMS at IoU ``nms_iou``, scores unchanged."""
    h, w = image_size
    f_h, f_w = mask_size
    device = cate_scores.device

    candidates = cate_scores > score_thr
    cells, labels = candidates.nonzero().unbind(1)
    scores = cate_scores[candidates]
    if scores.numel() == 0:
        return _empty(out_size, device)

    # Rank (cell, class) candidates with per-cell mask statistics, without keeping masks.
    used = candidates.any(dim=1).nonzero().squeeze(1)
    area = cate_scores.new_zeros(cate_scores.shape[0])
    maskness = cate_scores.new_zeros(cate_scores.shape[0])
    area[used], maskness[used] = _cell_mask_stats(cell_probs, used, mask_thr, chunk)
    keep = area[cells] > cell_strides[cells]
    if not keep.any():
        return _empty(out_size, device)
    cells, labels = cells[keep], labels[keep]
    scores = scores[keep] * maskness[cells]
    if scores.numel() > nms_pre:
        # The NMS_PRE best, in candidate order (as the reference would see them).
        chosen = torch.argsort(scores, descending=True)[:nms_pre].sort().values
        cells, labels, scores = cells[chosen], labels[chosen], scores[chosen]
    order = torch.argsort(scores, descending=True)
    cells, labels, scores = cells[order], labels[order], scores[order]

    probs = cell_probs(cells)
    keep, scores = suppress_duplicates(labels, probs > mask_thr, scores, nms_type=nms_type, update_thr=update_thr,
                                       nms_kernel=nms_kernel, nms_sigma=nms_sigma, nms_iou=nms_iou)
    if not keep.any():
        return _empty(out_size, device)
    probs, scores, labels = probs[keep], scores[keep], labels[keep]
    order = torch.argsort(scores, descending=True)[:max_per_img]
    probs, scores, labels = probs[order], scores[order], labels[order]

    # Back to the input's scale (feature stride), crop the padding, then to the output size.
    ratio = math.ceil(h / f_h)
    probs = F.interpolate(probs.unsqueeze(0), size=(int(f_h * ratio), int(f_w * ratio)), mode="bilinear",
                          align_corners=False)[:, :, :h, :w]
    masks = F.interpolate(probs, size=tuple(out_size), mode="bilinear", align_corners=False).squeeze(0) > mask_thr

    result = Instances(out_size)
    result.pred_classes = labels
    result.scores = scores
    result.pred_masks = masks
    # The reference emits zero boxes; boxes from the masks let box AP and the Visualizer work.
    result.pred_boxes = masks_to_boxes(masks)
    return result


def cell_strides(num_grids: Sequence[int], strides: Sequence[int], device) -> torch.Tensor:
    """(sum S^2,) float: the FPN stride of every grid cell, levels in order."""
    return torch.cat([torch.full((g * g,), float(s), device=device) for g, s in zip(num_grids, strides)])

"""SOLOv2 training targets: which grid cells of which level predict which instance.

An instance goes to every level whose scale range holds sqrt(box area). On that level's
S x S grid, its positive cells are the cells of its "center region" (the box scaled by
SIGMA around the mask's mass center), limited to the 3 x 3 cells around the cell of the
mass center. Each positive cell gets the instance's class and, as mask target, the
instance mask at 1/4 resolution.
"""
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import cv2
import numpy as np
import torch

from detectron2.structures import BitMasks, Instances, PolygonMasks

from adet.layers.masks import mass_centers

MASK_STRIDE = 4  # the unified mask features are at 1/4 of the (padded) input


@dataclass
class LevelTargets:
    """Targets of one image on one level."""
    cate_labels: torch.Tensor  # (S, S) int64, NUM_CLASSES where negative
    positive: torch.Tensor  # (S*S,) bool
    grid_order: torch.Tensor  # (P,) int64 flat cell index of each positive entry (may repeat)
    masks: torch.Tensor  # (P, Hf, Wf) uint8 mask target of each entry of grid_order


def downscale_masks(masks: torch.Tensor, stride: int = MASK_STRIDE) -> torch.Tensor:
    """(N, H, W) binary masks -> uint8 masks of size round(H/stride), round(W/stride),
    with OpenCV's bilinear resize as the reference uses (its fixed-point rounding matters)."""
    n, h, w = masks.shape
    size = (int(w / stride + 0.5), int(h / stride + 0.5))
    array = masks.to(dtype=torch.uint8).cpu().numpy()
    out = np.stack([cv2.resize(m, size, interpolation=cv2.INTER_LINEAR) for m in array]) if n else \
        np.zeros((0, size[1], size[0]), np.uint8)
    return torch.from_numpy(out).to(device=masks.device)


def _grid_index(coord: torch.Tensor, extent: int, num_grid: int) -> torch.Tensor:
    """Cell index (int64, truncated toward zero) of pixel coordinates along one axis."""
    return ((coord / extent) // (1.0 / num_grid)).long()


def image_targets(instances: Instances, mask_feat_size: Tuple[int, int], num_classes: int,
                  scale_ranges: Sequence[Sequence[float]], num_grids: Sequence[int],
                  sigma: float) -> List[LevelTargets]:
    boxes = instances.gt_boxes.tensor
    classes = instances.gt_classes
    masks = instances.gt_masks
    if isinstance(masks, PolygonMasks):  # INPUT.MASK_FORMAT "polygon": rasterise at the image size
        masks = BitMasks.from_polygon_masks(masks, *instances.image_size)
    masks = masks.tensor
    device = classes.device
    hf, wf = mask_feat_size
    up_h, up_w = hf * MASK_STRIDE, wf * MASK_STRIDE
    scales = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))

    targets = []
    for (lower, upper), num_grid in zip(scale_ranges, num_grids):
        cate_labels = torch.full((num_grid, num_grid), num_classes, dtype=torch.int64, device=device)
        positive = torch.zeros(num_grid ** 2, dtype=torch.bool, device=device)
        hits = ((scales >= lower) & (scales <= upper)).nonzero().flatten()
        order, sources = [], []
        level_masks = torch.zeros((0, hf, wf), dtype=torch.uint8, device=device)
        if len(hits):
            level_boxes, level_masks_full = boxes[hits], masks[hits]
            half_w = 0.5 * (level_boxes[:, 2] - level_boxes[:, 0]) * sigma
            half_h = 0.5 * (level_boxes[:, 3] - level_boxes[:, 1]) * sigma
            center_w, center_h = mass_centers(level_masks_full)
            valid = (level_masks_full.sum(dim=-1).sum(dim=-1) > 0).tolist()
            small = downscale_masks(level_masks_full)
            level_masks = small.new_zeros((len(hits), hf, wf))
            level_masks[:, :small.shape[1], :small.shape[2]] = small

            cell_w = _grid_index(center_w, up_w, num_grid).tolist()
            cell_h = _grid_index(center_h, up_h, num_grid).tolist()
            top_box = _grid_index(center_h - half_h, up_h, num_grid).tolist()
            down_box = _grid_index(center_h + half_h, up_h, num_grid).tolist()
            left_box = _grid_index(center_w - half_w, up_w, num_grid).tolist()
            right_box = _grid_index(center_w + half_w, up_w, num_grid).tolist()
            labels = classes[hits]
            for k in range(len(hits)):
                if not valid[k]:
                    continue
                top = max(max(0, top_box[k]), cell_h[k] - 1)
                down = min(min(num_grid - 1, down_box[k]), cell_h[k] + 1)
                left = max(max(0, left_box[k]), cell_w[k] - 1)
                right = min(min(num_grid - 1, right_box[k]), cell_w[k] + 1)
                cate_labels[top:down + 1, left:right + 1] = labels[k]
                cells = [i * num_grid + j for i in range(top, down + 1) for j in range(left, right + 1)]
                order += cells
                sources += [k] * len(cells)
        grid_order = torch.tensor(order, dtype=torch.int64, device=device)
        positive[grid_order] = True
        masks_out = level_masks[torch.tensor(sources, dtype=torch.int64, device=device)]
        targets.append(LevelTargets(cate_labels, positive, grid_order, masks_out))
    return targets

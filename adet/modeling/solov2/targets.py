"""Training targets of the SOLO family: which grid cells of which level predict which
instance, and the mask each of them must produce.

An instance goes to every level whose scale range holds sqrt(box area). On that level's
S x S grid, its positive cells are the cells of its "center region" (the box scaled by
SIGMA around the mask's mass center), limited to the 3 x 3 cells around the cell of the
mass center. Each positive cell gets the instance's class and, as mask target, the
instance mask at the level's mask resolution: 1/4 of the input for SOLOv2's unified mask
features, 1/4, 1/4, 1/8, 1/16, 1/16 for SOLO's per-level masks. The assignment is the same
for every variant; only the mask resolution differs.
"""
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np
import torch

from detectron2.structures import BitMasks, Instances, PolygonMasks

from adet.layers.masks import mass_centers

MASK_STRIDE = 4  # SOLOv2's unified mask features are at 1/4 of the (padded) input


@dataclass
class LevelTargets:
    """Targets of one image on one level."""
    cate_labels: torch.Tensor  # (S, S) int64, NUM_CLASSES where negative
    positive: torch.Tensor  # (S*S,) bool
    grid_order: torch.Tensor  # (P,) int64 flat cell index (row * S + column) of each positive entry (may repeat)
    masks: torch.Tensor  # (P, Hm, Wm) uint8 mask target of each entry of grid_order


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


def _bitmasks(instances: Instances) -> torch.Tensor:
    """The instances' masks as an (N, H, W) tensor on the device of their boxes."""
    masks = instances.gt_masks
    if isinstance(masks, PolygonMasks):  # INPUT.MASK_FORMAT "polygon": rasterise at the image size
        # Rasterised on the CPU whatever the device: move them to the boxes' (the GPU's).
        masks = BitMasks.from_polygon_masks(masks, *instances.image_size)
    return masks.tensor.to(instances.gt_boxes.device)


def _center_regions(boxes: torch.Tensor, masks: torch.Tensor, sigma: float, padded_size: Tuple[int, int],
                    num_grid: int) -> List[Tuple[int, int, int, int]]:
    """(top, down, left, right) inclusive cell range of each instance on an S x S grid: its
    center region, clipped to the grid and to the 3 x 3 cells around its mass center."""
    up_h, up_w = padded_size
    half_w = 0.5 * (boxes[:, 2] - boxes[:, 0]) * sigma
    half_h = 0.5 * (boxes[:, 3] - boxes[:, 1]) * sigma
    center_w, center_h = mass_centers(masks)
    cell_w = _grid_index(center_w, up_w, num_grid).tolist()
    cell_h = _grid_index(center_h, up_h, num_grid).tolist()
    top_box = _grid_index(center_h - half_h, up_h, num_grid).tolist()
    down_box = _grid_index(center_h + half_h, up_h, num_grid).tolist()
    left_box = _grid_index(center_w - half_w, up_w, num_grid).tolist()
    right_box = _grid_index(center_w + half_w, up_w, num_grid).tolist()
    return [(max(0, top_box[k], cell_h[k] - 1), min(num_grid - 1, down_box[k], cell_h[k] + 1),
             max(0, left_box[k], cell_w[k] - 1), min(num_grid - 1, right_box[k], cell_w[k] + 1))
            for k in range(len(cell_w))]


def assign_level(boxes: torch.Tensor, classes: torch.Tensor, masks: torch.Tensor, hits: torch.Tensor,
                 padded_size: Tuple[int, int], num_grid: int, num_classes: int, sigma: float):
    """Cell assignment of the instances ``hits`` on one level. Returns the (S, S) labels
    (later instances overwrite earlier ones), the flat positive cells in assignment order
    and, for each, the index of its instance."""
    cate_labels = torch.full((num_grid, num_grid), num_classes, dtype=torch.int64, device=classes.device)
    order, sources = [], []
    if len(hits):
        level_masks = masks[hits]
        valid = (level_masks.sum(dim=-1).sum(dim=-1) > 0).tolist()  # empty masks have no center
        regions = _center_regions(boxes[hits], level_masks, sigma, padded_size, num_grid)
        labels = classes[hits]
        for k, (top, down, left, right) in enumerate(regions):
            if not valid[k]:
                continue
            cate_labels[top:down + 1, left:right + 1] = labels[k]
            cells = [i * num_grid + j for i in range(top, down + 1) for j in range(left, right + 1)]
            order += cells
            sources += [int(hits[k])] * len(cells)
    device = classes.device
    return cate_labels, torch.tensor(order, dtype=torch.int64, device=device), \
        torch.tensor(sources, dtype=torch.int64, device=device)


def _padded_mask_targets(masks: torch.Tensor, shape: Tuple[int, int], stride: int) -> torch.Tensor:
    """Downscaled masks, zero-padded at the bottom and right to the prediction's shape."""
    small = downscale_masks(masks, stride)
    out = small.new_zeros((masks.shape[0],) + tuple(shape))
    out[:, :small.shape[1], :small.shape[2]] = small
    return out


def image_targets(instances: Instances, mask_shapes: Sequence[Tuple[int, int]], mask_strides: Sequence[int],
                  num_classes: int, scale_ranges: Sequence[Sequence[float]], num_grids: Sequence[int],
                  sigma: float) -> List[LevelTargets]:
    """Targets of one image on every level. ``mask_shapes[l]`` is the (H, W) of level l's
    mask predictions and ``mask_strides[l]`` their stride in input pixels (their product is
    the padded input size)."""
    boxes, classes, masks = instances.gt_boxes.tensor, instances.gt_classes, _bitmasks(instances)
    padded_size = (mask_shapes[0][0] * mask_strides[0], mask_shapes[0][1] * mask_strides[0])
    scales = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    downscaled: Dict[Tuple, torch.Tensor] = {}  # per (shape, stride): every instance once

    targets = []
    for (lower, upper), num_grid, shape, stride in zip(scale_ranges, num_grids, mask_shapes, mask_strides):
        hits = ((scales >= lower) & (scales <= upper)).nonzero().flatten()
        cate_labels, grid_order, sources = assign_level(boxes, classes, masks, hits, padded_size, num_grid,
                                                        num_classes, sigma)
        positive = torch.zeros(num_grid ** 2, dtype=torch.bool, device=classes.device)
        positive[grid_order] = True
        key = (tuple(shape), stride)
        if grid_order.numel() and key not in downscaled:
            downscaled[key] = _padded_mask_targets(masks, shape, stride)
        level_masks = downscaled[key][sources] if grid_order.numel() else \
            torch.zeros((0,) + tuple(shape), dtype=torch.uint8, device=classes.device)
        targets.append(LevelTargets(cate_labels, positive, grid_order, level_masks))
    return targets

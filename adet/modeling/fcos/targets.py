"""FCOS training targets: which ground-truth box every location regresses, if any.

A location is positive for a box when it lies inside it (or inside its centre region
with center sampling) and the box's largest regression distance falls in the size
range of the location's level; among several such boxes it takes the smallest.
"""
from typing import Dict, List, Optional, Sequence

import torch

from adet.layers.masks import mass_centers

INF = 100000000


def compute_locations(features: Sequence[torch.Tensor], strides: Sequence[int]) -> List[torch.Tensor]:
    """(x, y) image coordinates of every feature-map cell centre, per level, row-major.
    A cell at (i, j) of a level of stride s sits at (j * s + s // 2, i * s + s // 2)."""
    locations = []
    for feature, stride in zip(features, strides):
        h, w = feature.shape[-2:]
        device = feature.device
        xs = torch.arange(0, w * stride, step=stride, dtype=torch.float32, device=device)
        ys = torch.arange(0, h * stride, step=stride, dtype=torch.float32, device=device)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        locations.append(torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)), dim=1) + stride // 2)
    return locations


def level_size_ranges(sizes_of_interest: Sequence[float], num_levels: int) -> List[List[float]]:
    """[[-1, s0], [s0, s1], ..., [s_last, INF]]: the box sizes each level is responsible for."""
    bounds = [-1] + list(sizes_of_interest) + [INF]
    if len(bounds) - 1 != num_levels:
        raise ValueError(
            f"MODEL.FCOS.SIZES_OF_INTEREST has {len(sizes_of_interest)} values; "
            f"{num_levels} levels need {num_levels - 1}"
        )
    return [[bounds[i], bounds[i + 1]] for i in range(num_levels)]


def center_sample_region(boxes, location_strides, xs, ys, radius: float, bitmasks=None):
    """(num_locations, num_boxes) bool: location inside the box's centre region, a square
    of half-size stride * radius around the box centre (or mask centre of mass),
    clipped to the box."""
    if bitmasks is not None:
        cx, cy = mass_centers(bitmasks)
    else:
        cx = boxes[:, [0, 2]].sum(dim=-1) * 0.5
        cy = boxes[:, [1, 3]].sum(dim=-1) * 0.5
    half = (location_strides * radius)[:, None]
    x0 = torch.maximum(cx[None] - half, boxes[None, :, 0])
    y0 = torch.maximum(cy[None] - half, boxes[None, :, 1])
    x1 = torch.minimum(cx[None] + half, boxes[None, :, 2])
    y1 = torch.minimum(cy[None] + half, boxes[None, :, 3])
    dist = torch.stack((xs[:, None] - x0, ys[:, None] - y0, x1 - xs[:, None], y1 - ys[:, None]), dim=2)
    return dist.min(dim=2).values > 0


def targets_for_image(locations, location_strides, size_ranges, gt_instances, num_classes: int,
                      center_sample: bool, radius: float):
    """Label, (l, t, r, b) regression target in pixels, and matched box index for every
    location of one image; background gets label `num_classes` (box index -1 when the
    image has no boxes)."""
    num_locations = locations.shape[0]
    boxes = gt_instances.gt_boxes.tensor
    if boxes.numel() == 0:
        labels = torch.full((num_locations,), num_classes, dtype=torch.long, device=locations.device)
        return labels, locations.new_zeros((num_locations, 4)), labels.new_full((num_locations,), -1)

    xs, ys = locations[:, 0], locations[:, 1]
    ltrb = torch.stack((xs[:, None] - boxes[None, :, 0], ys[:, None] - boxes[None, :, 1],
                        boxes[None, :, 2] - xs[:, None], boxes[None, :, 3] - ys[:, None]), dim=2)
    if center_sample:
        bitmasks = gt_instances.gt_bitmasks_full if gt_instances.has("gt_bitmasks_full") else None
        inside = center_sample_region(boxes, location_strides, xs, ys, radius, bitmasks)
    else:
        inside = ltrb.min(dim=2).values > 0
    max_dist = ltrb.max(dim=2).values
    in_level_range = (max_dist >= size_ranges[:, [0]]) & (max_dist <= size_ranges[:, [1]])

    areas = gt_instances.gt_boxes.area()[None].repeat(num_locations, 1)
    areas[~inside] = INF
    areas[~in_level_range] = INF
    min_area, box_inds = areas.min(dim=1)

    reg_targets = ltrb[torch.arange(num_locations, device=locations.device), box_inds]
    labels = gt_instances.gt_classes[box_inds]
    labels[min_area == INF] = num_classes
    return labels, reg_targets, box_inds


def fcos_targets(locations: List[torch.Tensor], gt_instances, strides: Sequence[int],
                 sizes_of_interest: Sequence[float], num_classes: int, center_sample: bool = True,
                 radius: float = 1.5, norm_reg_targets: bool = True) -> Dict[str, torch.Tensor]:
    """Targets for a batch, flattened level-major: level, then image, then location
    (the order in which the head's outputs are flattened for the losses).

    Returns a dict of (L,) tensors: labels, reg_targets (L, 4; in stride units when
    `norm_reg_targets`), gt_inds (index into the batch's ground truth concatenated over
    images, -1 for background), im_inds, fpn_levels, and locations (L, 2).
    """
    num_per_level = [len(loc) for loc in locations]
    device = locations[0].device
    all_locations = torch.cat(locations, dim=0)
    level_of = torch.cat([torch.full((n,), lvl, dtype=torch.long, device=device)
                          for lvl, n in enumerate(num_per_level)])
    location_strides = torch.as_tensor(strides, dtype=torch.float32, device=device)[level_of]
    size_ranges = torch.as_tensor(level_size_ranges(sizes_of_interest, len(locations)),
                                  dtype=torch.float32, device=device)[level_of]

    per_image = {k: [] for k in ("labels", "reg_targets", "gt_inds", "im_inds")}
    num_gt_before = 0
    for im_index, instances in enumerate(gt_instances):
        labels, reg, box_inds = targets_for_image(all_locations, location_strides, size_ranges,
                                                  instances, num_classes, center_sample, radius)
        if norm_reg_targets:
            reg = reg / location_strides[:, None]
        per_image["labels"].append(labels)
        per_image["reg_targets"].append(reg)
        per_image["gt_inds"].append(box_inds + num_gt_before if len(instances) else box_inds)
        per_image["im_inds"].append(torch.full_like(labels, im_index))
        num_gt_before += len(instances)
    per_image["locations"] = [all_locations] * len(gt_instances)
    per_image["fpn_levels"] = [level_of] * len(gt_instances)
    return {k: level_major(v, num_per_level) for k, v in per_image.items()}


def level_major(per_image: List[torch.Tensor], num_per_level: List[int]) -> torch.Tensor:
    """Reorder per-image tensors (each over all levels) into level, image, location order."""
    split = [t.split(num_per_level, dim=0) for t in per_image]
    return torch.cat([chunk for level in zip(*split) for chunk in level], dim=0)

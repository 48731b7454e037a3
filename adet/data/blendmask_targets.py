"""BlendMask's basis-module targets: a "thing" semantic map from the instance annotations.

The reference toolbox prepares these maps offline (one file per training image); here
they are made on the fly with the same rule: at the original image size, every
annotation of the image, crowd ones included, in file order (a later one overwrites an
earlier one where they overlap), paints its contiguous class id + 1 (0 = background);
the map then follows the image's geometric transforms with nearest-neighbour sampling.
"""
from typing import Dict, List, Optional

import numpy as np
import pycocotools.mask as mask_util
import torch

from detectron2.data import transforms as T
from detectron2.data.detection_utils import polygons_to_bitmask

__all__ = ["annotation_bitmask", "thing_semantic_map", "basis_sem_target"]


def annotation_bitmask(segmentation, height: int, width: int) -> np.ndarray:
    """(H, W) bool mask of one annotation's "segmentation": polygons (list of flat xy
    lists), COCO RLE (compressed or uncompressed), or an (H, W) array."""
    if isinstance(segmentation, list):
        if len(segmentation) == 0:
            return np.zeros((height, width), dtype=bool)
        return polygons_to_bitmask([np.asarray(p, dtype=np.float64) for p in segmentation], height, width)
    if isinstance(segmentation, dict):
        rle = segmentation
        if isinstance(rle["counts"], list):
            rle = mask_util.frPyObjects(rle, *rle["size"])
        mask = mask_util.decode(rle).astype(bool)
    else:
        mask = np.asarray(segmentation).astype(bool)
    if mask.shape != (height, width):
        raise ValueError(f"segmentation mask of shape {mask.shape} for an image of size {(height, width)}")
    return mask


def thing_semantic_map(annotations: List[Dict], height: int, width: int) -> np.ndarray:
    """(H, W) uint8 map: contiguous `category_id` + 1 of the annotation covering each pixel
    (the last one in list order), 0 elsewhere. Annotations without a segmentation are
    skipped. `category_id` must already be contiguous (as in Detectron2's dataset dicts)."""
    sem = np.zeros((height, width), dtype=np.uint8)
    for anno in annotations:
        segm = anno.get("segmentation")
        if segm is None:
            continue
        sem[annotation_bitmask(segm, height, width)] = anno["category_id"] + 1
    return sem


def basis_sem_target(annotations: List[Dict], height: int, width: int,
                     transforms: Optional[T.TransformList] = None) -> torch.Tensor:
    """The `basis_sem` target of one image: `thing_semantic_map` at the original size
    (height, width), transformed like the image (`apply_segmentation`: nearest-neighbour
    resize, flips, crops), as an int64 tensor."""
    sem = thing_semantic_map(annotations, height, width)
    if transforms is not None:
        sem = transforms.apply_segmentation(sem)
    return torch.as_tensor(np.ascontiguousarray(sem).astype(np.int64))

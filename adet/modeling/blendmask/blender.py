"""BlendMask's blender: combine the bases cropped to each box with the instance's
attention maps into mask logits, and the mask loss."""
from typing import List, Optional

import torch
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Instances

from adet.modeling.fcos.losses import reduce_sum
from detectron2.utils import comm


def blend(rois: torch.Tensor, attns: torch.Tensor, attn_size: int, interp: str = "bilinear") -> torch.Tensor:
    """(N, K, R, R) cropped bases and (N, K * A * A) attentions -> (N, R * R) mask logits:
    the attentions are resized to R x R, softmax-normalised over the K bases, and weight
    the bases' sum."""
    n, k, h, w = rois.shape
    attns = attns.view(n, -1, attn_size, attn_size)
    attns = F.interpolate(attns, (h, w), mode=interp).softmax(dim=1)
    return (rois * attns).sum(dim=1).view(n, -1)


class Blender:
    """Crops the bases with each box (ROIAlign at BOTTOM_RESOLUTION), blends them with the
    instance's attentions (the FCOS head's `top_feats` / `top_feat`).

    Training: one mask per FCOS positive location, predicted in its ground-truth box,
    BCE against the gt mask cropped and resized to that box, averaged per mask, weighted
    by the location's centerness target and normalised by the sum of those targets
    (the FCOS box-loss normaliser). Inference: `pred_masks` (N, 1, R, R) mask
    probabilities in each predicted box, to be pasted into the image by
    Detectron2's `detector_postprocess`.
    """

    @configurable
    def __init__(self, *, resolution: int, attn_size: int, top_interp: str, pooler_scales,
                 sampling_ratio: int, pooler_type: str):
        self.resolution = resolution
        self.attn_size = attn_size
        self.top_interp = top_interp
        self.pooler = ROIPooler(output_size=resolution, scales=tuple(pooler_scales),
                                sampling_ratio=sampling_ratio, pooler_type=pooler_type, canonical_level=2)

    @classmethod
    def from_config(cls, cfg):
        bm = cfg.MODEL.BLENDMASK
        return {
            "resolution": bm.BOTTOM_RESOLUTION,
            "attn_size": bm.ATTN_SIZE,
            "top_interp": bm.TOP_INTERP,
            "pooler_scales": bm.POOLER_SCALES,
            "sampling_ratio": bm.POOLER_SAMPLING_RATIO,
            "pooler_type": bm.POOLER_TYPE,
        }

    def mask_logits(self, bases: List[torch.Tensor], boxes, attns: torch.Tensor) -> torch.Tensor:
        rois = self.pooler(bases, boxes)
        return blend(rois, attns, self.attn_size, self.top_interp)

    def loss(self, bases: List[torch.Tensor], positives: Instances, gt_instances: List[Instances]):
        """`positives`: the FCOS positive locations (fields top_feats, gt_inds, gt_ctrs)."""
        if len(positives) == 0:
            return {"loss_mask": positives.top_feats.sum() * 0 + sum(b.sum() for b in bases) * 0}
        gt_inds = positives.gt_inds
        # One crop per gt box, then one row per positive location.
        rois = self.pooler(bases, [x.gt_boxes for x in gt_instances])[gt_inds]
        logits = blend(rois, positives.top_feats, self.attn_size, self.top_interp)
        targets = cat([x.gt_masks.crop_and_resize(x.gt_boxes.tensor, self.resolution).to(logits.device)
                       for x in gt_instances if len(x) > 0], dim=0)[gt_inds]
        per_mask = F.binary_cross_entropy_with_logits(logits, targets.view(len(targets), -1).float(),
                                                      reduction="none").mean(dim=1)
        ctr = positives.gt_ctrs
        # Same normaliser as FCOS's box loss: the centerness targets' sum over all GPUs.
        denorm = max(reduce_sum(ctr.sum()).item() / comm.get_world_size(), 1e-6)
        return {"loss_mask": (per_mask * ctr).sum() / denorm}

    def predict(self, bases: List[torch.Tensor], detections: List[Instances]) -> List[Instances]:
        """Adds `pred_masks` (N, 1, R, R) mask probabilities to each image's detections."""
        num = [len(x) for x in detections]
        if sum(num) == 0:
            for x in detections:
                x.pred_masks = bases[0].new_zeros((0, 1, self.resolution, self.resolution))
            return detections
        attns = cat([x.top_feat for x in detections], dim=0)
        masks = self.mask_logits(bases, [x.pred_boxes for x in detections], attns).sigmoid()
        masks = masks.view(-1, 1, self.resolution, self.resolution)
        for x, m in zip(detections, masks.split(num, dim=0)):
            x.pred_masks = m
        return detections

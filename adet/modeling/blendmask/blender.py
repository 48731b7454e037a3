"""BlendMask's blender: combine the bases cropped to each box with the instance's
attention maps into mask logits, and the mask loss."""
from typing import List, Optional

import torch
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling.poolers import ROIPooler, convert_boxes_to_pooler_format
from detectron2.structures import Instances

from adet.layers import blender_op
from adet.modeling.fcos.losses import reduce_sum
from detectron2.utils import comm


def blend(rois: torch.Tensor, attns: torch.Tensor, attn_size: int, interp: str = "bilinear") -> torch.Tensor:
    """(N, K, R, R) cropped bases and (N, K * A * A) attentions -> (N, R * R) mask logits:
    the attentions are resized to R x R, softmax-normalised over the K bases, and weight
    the bases' sum."""
    n = rois.shape[0]
    attns = attns.view(n, -1, attn_size, attn_size)
    return blender_op.blend_crops(rois, attns, interp).view(n, -1)


class Blender:
    """Crops the bases with each box (ROIAlign at BOTTOM_RESOLUTION), blends them with the
    instance's attentions (the FCOS head's `top_feats` / `top_feat`).

    Training: one mask per FCOS positive location, predicted in its ground-truth box,
    BCE against the gt mask cropped and resized to that box, averaged per mask, weighted
    by the location's centerness target and normalised by the sum of those targets
    (the FCOS box-loss normaliser). Inference: `pred_masks` (N, 1, R, R) mask
    probabilities in each predicted box, to be pasted into the image by
    Detectron2's `detector_postprocess`.

    Two paths with the same results: the plain one (Detectron2's ROIPooler, then
    :func:`blend`), the reference; and the fused op of `adet.layers.blender_op` (crop,
    resize, softmax and sum in one compiled kernel, forward and backward), taken when
    `fused` is on, the pooler has one level of ROIAlign/ROIAlignV2, and the kernel is
    available for the bases (`blender_op.fused_available`; `ADET_BLENDER=plain` forces
    the plain path).
    """

    @configurable
    def __init__(self, *, resolution: int, attn_size: int, top_interp: str, pooler_scales,
                 sampling_ratio: int, pooler_type: str, fused: bool = True):
        self.resolution = resolution
        self.attn_size = attn_size
        self.top_interp = top_interp
        self.pooler = ROIPooler(output_size=resolution, scales=tuple(pooler_scales),
                                sampling_ratio=sampling_ratio, pooler_type=pooler_type, canonical_level=2)
        # The fused op is one level of torchvision-style ROIAlign: the plain path does the rest.
        self.fused = fused and len(pooler_scales) == 1 and pooler_type in ("ROIAlign", "ROIAlignV2")
        self.roi_align_args = dict(spatial_scale=float(pooler_scales[0]), sampling_ratio=sampling_ratio,
                                   aligned=pooler_type == "ROIAlignV2")

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

    def mask_logits(self, bases: List[torch.Tensor], boxes, attns: torch.Tensor,
                    index: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(N, R * R) mask logits: the bases cropped by `boxes` (one Boxes per image),
        taken at rows `index` when given (one row per attention set), blended with `attns`
        (N, K * A * A)."""
        if self.fused and blender_op.fused_available(bases[0], self.top_interp):
            return self._fused_logits(bases, boxes, attns, index)
        rois = self.pooler(bases, boxes)
        return blend(rois if index is None else rois[index], attns, self.attn_size, self.top_interp)

    def _fused_logits(self, bases, boxes, attns, index):
        assert len(boxes) == bases[0].size(0), "one Boxes per image"
        rois = convert_boxes_to_pooler_format(boxes)
        if index is not None:
            rois = rois[index]
        n = rois.shape[0]
        attns = attns.reshape(n, -1, self.attn_size, self.attn_size)
        masks = blender_op.blend(bases[0], rois, attns, self.resolution, interp=self.top_interp,
                                 impl="fused", **self.roi_align_args)
        return masks.view(n, -1)

    def loss(self, bases: List[torch.Tensor], positives: Instances, gt_instances: List[Instances]):
        """`positives`: the FCOS positive locations (fields top_feats, gt_inds, gt_ctrs)."""
        if len(positives) == 0:
            return {"loss_mask": positives.top_feats.sum() * 0 + sum(b.sum() for b in bases) * 0}
        gt_inds = positives.gt_inds
        # Crops of the gt boxes, one row per positive location.
        logits = self.mask_logits(bases, [x.gt_boxes for x in gt_instances], positives.top_feats, gt_inds)
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

"""FCOS inference: boxes from per-location predictions, then NMS over all levels."""
from typing import List, Optional

import torch

from detectron2.structures import Boxes, Instances

from adet.layers import ml_nms


class FCOSPredictor:
    """Turns head outputs into per-image `Instances` with pred_boxes, scores,
    pred_classes, locations, fpn_levels (and top_feats when given)."""

    def __init__(self, pre_nms_thresh: float, pre_nms_topk: int, nms_thresh: float,
                 post_nms_topk: int, thresh_with_ctr: bool, num_classes: int):
        self.pre_nms_thresh = pre_nms_thresh
        self.pre_nms_topk = pre_nms_topk
        self.nms_thresh = nms_thresh
        self.post_nms_topk = post_nms_topk
        self.thresh_with_ctr = thresh_with_ctr
        self.num_classes = num_classes

    def __call__(self, locations, logits, reg, ctrness, image_sizes, top_feats=None,
                 reg_scales=None) -> List[Instances]:
        """Lists over levels; `reg_scales` multiplies each level's box distances
        (the level's stride when the head regresses in stride units)."""
        per_level = []
        for level in range(len(locations)):
            level_reg = reg[level] * reg_scales[level] if reg_scales is not None else reg[level]
            level_top = top_feats[level] if top_feats else None
            results = self.decode_level(locations[level], logits[level], level_reg, ctrness[level],
                                        image_sizes, level_top)
            for r in results:
                r.fpn_levels = torch.full((len(r),), level, dtype=torch.long, device=r.scores.device)
            per_level.append(results)
        return [self.select_over_levels(Instances.cat(list(levels))) for levels in zip(*per_level)]

    def decode_level(self, locations, logits, reg, ctrness, image_sizes, top_feat: Optional[torch.Tensor]):
        n, c, h, w = logits.shape
        scores = logits.permute(0, 2, 3, 1).reshape(n, -1, c).sigmoid()
        boxes_ltrb = reg.permute(0, 2, 3, 1).reshape(n, -1, 4)
        quality = ctrness.permute(0, 2, 3, 1).reshape(n, -1).sigmoid()
        if top_feat is not None:
            top_feat = top_feat.permute(0, 2, 3, 1).reshape(n, h * w, -1)
        # The score is sqrt(class prob * quality); THRESH_WITH_CTR decides whether the
        # candidate threshold sees the product or the class probability alone.
        if self.thresh_with_ctr:
            scores = scores * quality[:, :, None]
        candidates = scores > self.pre_nms_thresh
        topk_per_image = candidates.reshape(n, -1).sum(1).clamp(max=self.pre_nms_topk)
        if not self.thresh_with_ctr:
            scores = scores * quality[:, :, None]

        results = []
        for i in range(n):
            cand_scores = scores[i][candidates[i]]
            loc_inds, classes = candidates[i].nonzero().unbind(dim=1)
            k = int(topk_per_image[i])
            if cand_scores.numel() > k:
                cand_scores, top = cand_scores.topk(k, sorted=False)
                loc_inds, classes = loc_inds[top], classes[top]
            ltrb = boxes_ltrb[i][loc_inds]
            locs = locations[loc_inds]
            boxes = torch.stack([locs[:, 0] - ltrb[:, 0], locs[:, 1] - ltrb[:, 1],
                                 locs[:, 0] + ltrb[:, 2], locs[:, 1] + ltrb[:, 3]], dim=1)
            result = Instances(image_sizes[i])
            result.pred_boxes = Boxes(boxes)
            result.scores = torch.sqrt(cand_scores)
            result.pred_classes = classes
            result.locations = locs
            if top_feat is not None:
                result.top_feat = top_feat[i][loc_inds]
            results.append(result)
        return results

    def select_over_levels(self, instances: Instances) -> Instances:
        """Class-wise NMS, then keep the `post_nms_topk` best (ties at the cut-off kept)."""
        result = ml_nms(instances, self.nms_thresh)
        num = len(result)
        if num > self.post_nms_topk > 0:
            threshold, _ = torch.kthvalue(result.scores.cpu(), num - self.post_nms_topk + 1)
            result = result[result.scores >= threshold.item()]
        return result

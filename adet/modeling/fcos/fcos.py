"""FCOS as a Detectron2 proposal generator: the one place FCOS lives.

BlendMask and CondInst build on it through two hooks: `top_module`, applied to the box
tower of every level (its outputs come back as `top_feats` in training and `top_feat` on
each detection), and the sampled positive locations returned in training.
"""
from typing import Dict, List, Optional

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.proposal_generator.build import PROPOSAL_GENERATOR_REGISTRY
from detectron2.structures import Instances

from adet.layers import IOULoss

from .head import FCOSHead
from .inference import FCOSPredictor
from .losses import FCOSLoss, flatten_head_outputs
from .targets import compute_locations, fcos_targets


@PROPOSAL_GENERATOR_REGISTRY.register()
class FCOS(nn.Module):
    """Fully convolutional one-stage detection (Tian et al., 2019), as configured by
    MODEL.FCOS.*.

    `forward(images, features, gt_instances, top_module)` returns `(results, losses)`:
    in training, `results["instances"]` are the positive locations (fields labels,
    gt_inds, im_inds, fpn_levels, locations, reg_targets, logits_pred, reg_pred,
    ctrness_pred, top_feats, pos_inds, gt_ctrs); in inference, `results` is a list of
    per-image `Instances` (pred_boxes at the network input size, scores, pred_classes,
    locations, fpn_levels, top_feat).
    """

    @configurable
    def __init__(self, *, head: FCOSHead, in_features: List[str], strides: List[int],
                 sizes_of_interest: List[float], center_sample: bool, pos_radius: float,
                 norm_reg_targets: bool, loss: FCOSLoss, train_predictor: FCOSPredictor,
                 test_predictor: FCOSPredictor, yield_proposal: bool = False,
                 yield_box_features: bool = False):
        super().__init__()
        self.fcos_head = head
        self.in_features = in_features
        self.strides = strides
        self.sizes_of_interest = sizes_of_interest
        self.center_sample = center_sample
        self.pos_radius = pos_radius
        self.norm_reg_targets = norm_reg_targets
        self.loss = loss
        self.train_predictor = train_predictor
        self.test_predictor = test_predictor
        self.yield_proposal = yield_proposal
        self.yield_box_features = yield_box_features

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        fcos = cfg.MODEL.FCOS
        if len(fcos.FPN_STRIDES) != len(fcos.IN_FEATURES):
            raise ValueError(f"MODEL.FCOS.FPN_STRIDES {fcos.FPN_STRIDES} must have one stride per "
                             f"MODEL.FCOS.IN_FEATURES {fcos.IN_FEATURES}")
        missing = [f for f in fcos.IN_FEATURES if f not in input_shape]
        if missing:
            raise ValueError(f"MODEL.FCOS.IN_FEATURES {missing} not produced by the backbone "
                             f"(it gives {sorted(input_shape)})")

        def predictor(thresh, pre_topk, post_topk):
            return FCOSPredictor(thresh, pre_topk, fcos.NMS_TH, post_topk, fcos.THRESH_WITH_CTR, fcos.NUM_CLASSES)

        return {
            "head": FCOSHead(cfg, [input_shape[f] for f in fcos.IN_FEATURES]),
            "in_features": list(fcos.IN_FEATURES),
            "strides": list(fcos.FPN_STRIDES),
            "sizes_of_interest": list(fcos.SIZES_OF_INTEREST),
            "center_sample": fcos.CENTER_SAMPLE,
            "pos_radius": fcos.POS_RADIUS,
            "norm_reg_targets": fcos.NORM_REG_TARGETS,
            "loss": FCOSLoss(IOULoss(fcos.LOC_LOSS_TYPE), fcos.LOSS_ALPHA, fcos.LOSS_GAMMA,
                             fcos.BOX_QUALITY, fcos.LOSS_NORMALIZER_CLS, fcos.LOSS_WEIGHT_CLS),
            "train_predictor": predictor(fcos.INFERENCE_TH_TRAIN, fcos.PRE_NMS_TOPK_TRAIN, fcos.POST_NMS_TOPK_TRAIN),
            "test_predictor": predictor(fcos.INFERENCE_TH_TEST, fcos.PRE_NMS_TOPK_TEST, fcos.POST_NMS_TOPK_TEST),
            "yield_proposal": fcos.YIELD_PROPOSAL,
            "yield_box_features": fcos.YIELD_BOX_FEATURES,
        }

    @property
    def num_classes(self) -> int:
        return self.fcos_head.num_classes

    def forward(self, images, features: Dict[str, torch.Tensor], gt_instances: Optional[List[Instances]] = None,
                top_module: Optional[nn.Module] = None):
        features = [features[f] for f in self.in_features]
        locations = compute_locations(features, self.strides)
        yield_towers = self.yield_proposal or self.yield_box_features
        logits, reg, ctrness, top_feats, bbox_towers = self.fcos_head(features, top_module, yield_towers)

        results = {}
        if yield_towers:
            results["features"] = dict(zip(self.in_features, bbox_towers))
        if not self.training:
            return self.predict(locations, logits, reg, ctrness, images.image_sizes, top_feats), {}

        results["instances"], losses = self.losses(locations, logits, reg, ctrness, top_feats, gt_instances)
        if self.yield_proposal:
            with torch.no_grad():
                results["proposals"] = self.predict(locations, logits, reg, ctrness, images.image_sizes, top_feats)
        return results, losses

    def losses(self, locations, logits, reg, ctrness, top_feats, gt_instances):
        """(positive-location Instances, loss dict) for a batch."""
        targets = fcos_targets(locations, gt_instances, self.strides, self.sizes_of_interest, self.num_classes,
                               self.center_sample, self.pos_radius, self.norm_reg_targets)
        rows = Instances((0, 0))
        for name, value in targets.items():
            setattr(rows, name, value)
        rows.logits_pred = flatten_head_outputs(logits, self.num_classes)
        rows.reg_pred = flatten_head_outputs(reg, 4)
        rows.ctrness_pred = flatten_head_outputs(ctrness, 1).squeeze(1)
        if top_feats:
            rows.top_feats = flatten_head_outputs(top_feats, top_feats[0].shape[1])
        losses, positives = self.loss(rows, self.num_classes)
        return positives, losses

    def predict(self, locations, logits, reg, ctrness, image_sizes, top_feats):
        predictor = self.train_predictor if self.training else self.test_predictor
        reg_scales = self.strides if self.norm_reg_targets else None
        return predictor(locations, logits, reg, ctrness, image_sizes, top_feats, reg_scales)

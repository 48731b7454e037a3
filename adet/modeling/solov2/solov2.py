"""SOLOv2 (Wang et al., "SOLOv2: Dynamic and Fast Instance Segmentation", NeurIPS 2020):
segment objects by location. An S x S grid per FPN level predicts, per cell, a category
and the weights of a 1x1 convolution that turns the unified mask features into the mask
of the object centred in that cell."""
from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.structures import ImageList, Instances

from ..one_stage_detector import normalize_and_pad
from .heads import SOLOv2InsHead, SOLOv2MaskHead
from .inference import cell_strides, inference_single_image, point_nms
from .loss import solov2_losses
from .targets import image_targets


@META_ARCH_REGISTRY.register()
class SOLOv2(nn.Module):
    """Backbone (FPN) -> instance head on INSTANCE_IN_FEATURES, mask head on
    MASK_IN_FEATURES -> losses (training) or [{"instances": Instances}] (inference) with
    `pred_masks` at each input's "height" x "width"."""

    @configurable
    def __init__(self, *, backbone: Backbone, ins_head: SOLOv2InsHead, mask_head: SOLOv2MaskHead,
                 instance_in_features: List[str], mask_in_features: List[str], pixel_mean, pixel_std,
                 num_classes: int, num_grids: List[int], instance_strides: List[int], scale_ranges, sigma: float,
                 focal_alpha: float, focal_gamma: float, focal_weight: float, dice_weight: float,
                 score_thr: float, mask_thr: float, update_thr: float, nms_pre: int, max_per_img: int,
                 nms_type: str, nms_kernel: str, nms_sigma: float):
        super().__init__()
        self.backbone = backbone
        self.ins_head = ins_head
        self.mask_head = mask_head
        self.instance_in_features = instance_in_features
        self.mask_in_features = mask_in_features
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.num_classes = num_classes
        self.num_grids = list(num_grids)
        self.instance_strides = list(instance_strides)
        self.scale_ranges = [tuple(r) for r in scale_ranges]
        self.sigma = sigma
        self.loss_params = dict(focal_alpha=focal_alpha, focal_gamma=focal_gamma, focal_weight=focal_weight,
                                dice_weight=dice_weight)
        if nms_type != "matrix":
            raise NotImplementedError(f"MODEL.SOLOV2.NMS_TYPE {nms_type!r}: only 'matrix' is implemented")
        self.test_params = dict(score_thr=score_thr, mask_thr=mask_thr, update_thr=update_thr, nms_pre=nms_pre,
                                max_per_img=max_per_img, nms_kernel=nms_kernel, nms_sigma=nms_sigma)

    @classmethod
    def from_config(cls, cfg):
        solo = cfg.MODEL.SOLOV2
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        return {
            "backbone": backbone,
            "ins_head": SOLOv2InsHead(cfg, [shapes[f] for f in solo.INSTANCE_IN_FEATURES]),
            "mask_head": SOLOv2MaskHead(cfg, [shapes[f] for f in solo.MASK_IN_FEATURES]),
            "instance_in_features": solo.INSTANCE_IN_FEATURES, "mask_in_features": solo.MASK_IN_FEATURES,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN, "pixel_std": cfg.MODEL.PIXEL_STD,
            "num_classes": solo.NUM_CLASSES, "num_grids": solo.NUM_GRIDS,
            "instance_strides": solo.FPN_INSTANCE_STRIDES, "scale_ranges": solo.FPN_SCALE_RANGES,
            "sigma": solo.SIGMA, "focal_alpha": solo.LOSS.FOCAL_ALPHA, "focal_gamma": solo.LOSS.FOCAL_GAMMA,
            "focal_weight": solo.LOSS.FOCAL_WEIGHT, "dice_weight": solo.LOSS.DICE_WEIGHT,
            "score_thr": solo.SCORE_THR, "mask_thr": solo.MASK_THR, "update_thr": solo.UPDATE_THR,
            "nms_pre": solo.NMS_PRE, "max_per_img": solo.MAX_PER_IMG, "nms_type": solo.NMS_TYPE,
            "nms_kernel": solo.NMS_KERNEL, "nms_sigma": solo.NMS_SIGMA,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        return normalize_and_pad(batched_inputs, self.pixel_mean, self.pixel_std, self.backbone.size_divisibility)

    @staticmethod
    def rescale_instance_features(features: List[torch.Tensor]) -> List[torch.Tensor]:
        """The reference's level scaling: the finest level is halved, the coarsest is resized
        to the size of the one before it (P2 -> 1/8, P6 -> 1/32 with strides 8,8,16,32,32)."""
        features = list(features)
        features[0] = F.interpolate(features[0], scale_factor=0.5, mode="bilinear", align_corners=False)
        features[-1] = F.interpolate(features[-1], size=features[-2].shape[-2:], mode="bilinear",
                                     align_corners=False)
        return features

    def forward(self, batched_inputs: List[Dict]):
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        ins_features = self.rescale_instance_features([features[f] for f in self.instance_in_features])
        cate_preds, kernel_preds = self.ins_head(ins_features)
        mask_features = self.mask_head([features[f] for f in self.mask_in_features])

        if self.training:
            if "instances" not in batched_inputs[0]:
                raise ValueError("Training needs 'instances' (with gt_masks) in every input dict")
            gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
            targets = self.targets(gt_instances, tuple(mask_features.shape[-2:]))
            return solov2_losses(cate_preds, kernel_preds, mask_features, targets, self.num_classes,
                                 **self.loss_params)
        return self.inference(cate_preds, kernel_preds, mask_features, images.image_sizes, batched_inputs)

    @torch.no_grad()
    def targets(self, gt_instances: List[Instances], mask_feat_size):
        return [image_targets(inst, mask_feat_size, self.num_classes, self.scale_ranges, self.num_grids, self.sigma)
                for inst in gt_instances]

    def inference(self, cate_preds, kernel_preds, mask_features, image_sizes, batched_inputs) -> List[Dict]:
        cate_scores = [point_nms(p.sigmoid()).permute(0, 2, 3, 1) for p in cate_preds]
        strides = cell_strides(self.num_grids, self.instance_strides, mask_features.device)
        results = []
        for i, (inputs, size) in enumerate(zip(batched_inputs, image_sizes)):
            out_size = (inputs.get("height", size[0]), inputs.get("width", size[1]))
            scores = torch.cat([s[i].reshape(-1, self.num_classes) for s in cate_scores])
            kernels = torch.cat([k[i].permute(1, 2, 0).reshape(-1, k.shape[1]) for k in kernel_preds])
            instances = inference_single_image(scores.detach(), kernels.detach(), strides, mask_features[i:i + 1],
                                               tuple(size), out_size, **self.test_params)
            results.append({"instances": instances})
        return results

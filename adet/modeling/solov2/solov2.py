"""SOLOv2 (Wang et al., "SOLOv2: Dynamic and Fast Instance Segmentation", NeurIPS 2020):
segment objects by location. An S x S grid per FPN level predicts, per cell, a category
and the weights of a 1x1 convolution that turns the unified mask features into the mask
of the object centred in that cell."""
from typing import Dict, List

import torch

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone

from .base import SOLOBase
from .heads import SOLOv2InsHead, SOLOv2MaskHead
from .inference import CellProbs
from .loss import dynamic_masks
from .targets import MASK_STRIDE


@META_ARCH_REGISTRY.register()
class SOLOv2(SOLOBase):
    """SOLO with dynamic mask kernels: the instance head predicts categories and kernels
    (INSTANCE_IN_FEATURES), the mask head one unified mask feature map (MASK_IN_FEATURES).
    Mask predictions: (kernel logits per level, mask features (N, E, H/4, W/4))."""

    @configurable
    def __init__(self, *, mask_head: SOLOv2MaskHead, mask_in_features: List[str], **kwargs):
        super().__init__(**kwargs)
        self.mask_head = mask_head
        self.mask_in_features = mask_in_features

    @classmethod
    def from_config(cls, cfg):
        solo = cfg.MODEL.SOLOV2
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        return {
            **cls.base_config(cfg),
            "backbone": backbone,
            "ins_head": SOLOv2InsHead(cfg, [shapes[f] for f in solo.INSTANCE_IN_FEATURES]),
            "mask_head": SOLOv2MaskHead(cfg, [shapes[f] for f in solo.MASK_IN_FEATURES]),
            "mask_in_features": solo.MASK_IN_FEATURES,
        }

    def predict(self, features: Dict[str, torch.Tensor]):
        cate_preds, kernel_preds = self.ins_head(self.instance_features(features))
        mask_features = self.mask_head([features[f] for f in self.mask_in_features])
        return cate_preds, (kernel_preds, mask_features)

    def mask_layout(self, mask_preds):
        size = tuple(mask_preds[1].shape[-2:])
        return [size] * len(self.num_grids), [MASK_STRIDE] * len(self.num_grids)

    def level_mask_probs(self, mask_preds, image: int, level: int, cells: torch.Tensor) -> torch.Tensor:
        kernel_preds, mask_features = mask_preds
        kernels = kernel_preds[level][image].reshape(kernel_preds[level].shape[1], -1)[:, cells]
        return dynamic_masks(mask_features[image:image + 1], kernels.t()).sigmoid()

    def cell_probs(self, mask_preds, image: int) -> CellProbs:
        kernel_preds, mask_features = mask_preds
        # (all cells of all levels, E): one kernel per row, levels in order.
        kernels = torch.cat([k[image].permute(1, 2, 0).reshape(-1, k.shape[1]) for k in kernel_preds]).detach()
        features = mask_features[image:image + 1]
        return lambda cells: dynamic_masks(features, kernels[cells]).sigmoid()

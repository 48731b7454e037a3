"""SOLO and Decoupled SOLO (Wang et al., "SOLO: Segmenting Objects by Locations", ECCV 2020):
the grid cell that holds an object's center predicts its category and, directly, its mask
(S^2 mask channels per level, or S X- and S Y-channels whose product is the mask)."""
from typing import Dict

import torch
import torch.nn.functional as F

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone

from .base import SOLOBase
from .inference import CellProbs
from .solo_heads import DecoupledSOLOInsHead, SOLOInsHead

# MODEL.SOLO.MASK_TYPE -> instance head.
MASK_HEADS = {"vanilla": SOLOInsHead, "decoupled": DecoupledSOLOInsHead}


@META_ARCH_REGISTRY.register()
class SOLO(SOLOBase):
    """SOLO v1 (MODEL.SOLO.MASK_TYPE "vanilla") or Decoupled SOLO ("decoupled"). Everything
    but the instance head's mask branch is SOLOv2's (targets, losses, inference); the
    MODEL.SOLOV2 keys configure it, those of the unified mask branch excepted."""

    @configurable
    def __init__(self, **kwargs):
        super().__init__(**kwargs)

    @classmethod
    def from_config(cls, cfg):
        mask_type = cfg.MODEL.SOLO.MASK_TYPE
        if mask_type not in MASK_HEADS:
            raise ValueError(f"MODEL.SOLO.MASK_TYPE must be one of {sorted(MASK_HEADS)}, got {mask_type!r}")
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        head = MASK_HEADS[mask_type](cfg, [shapes[f] for f in cfg.MODEL.SOLOV2.INSTANCE_IN_FEATURES])
        return {**cls.base_config(cfg), "backbone": backbone, "ins_head": head}

    def predict(self, features: Dict[str, torch.Tensor]):
        return self.ins_head(self.instance_features(features))

    def mask_layout(self, mask_preds):
        return self.ins_head.mask_shapes(mask_preds), self.ins_head.mask_strides(self.instance_strides)

    def level_mask_probs(self, mask_preds, image: int, level: int, cells: torch.Tensor) -> torch.Tensor:
        return self.ins_head.level_mask_probs(mask_preds, image, level, cells)

    def cell_probs(self, mask_preds, image: int) -> CellProbs:
        shapes = self.ins_head.mask_shapes(mask_preds)
        sizes = torch.tensor([g * g for g in self.num_grids], device=self.device)
        starts = torch.cumsum(sizes, 0) - sizes

        def probs(cells: torch.Tensor) -> torch.Tensor:
            """Masks of cells from any levels, each resized to level 0's resolution."""
            levels = torch.bucketize(cells, starts, right=True) - 1
            out = torch.zeros((cells.numel(),) + tuple(shapes[0]), device=self.device)
            for level in levels.unique().tolist():
                chosen = (levels == level).nonzero().squeeze(1)
                level_probs = self.ins_head.level_mask_probs(mask_preds, image, level, cells[chosen] - starts[level])
                if tuple(level_probs.shape[-2:]) != tuple(shapes[0]):
                    level_probs = F.interpolate(level_probs[None], size=shapes[0], mode="bilinear",
                                                align_corners=False)[0]
                out[chosen] = level_probs.detach()
            return out

        return probs

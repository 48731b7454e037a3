"""The FCOS head: class and box towers over every FPN level, with shared weights."""
import math
from typing import List, Optional

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.layers import ShapeSpec

from adet.layers import DFConv2d, head_norm, run_per_level


class Scale(nn.Module):
    """A learnable scalar that multiplies its input (one per FPN level)."""

    def __init__(self, init_value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([init_value], dtype=torch.float32))

    def forward(self, x):
        return x * self.scale


def _make_tower(num_convs: int, channels: int, norm: str, num_levels: int,
                deformable_last: bool = False) -> nn.Sequential:
    """conv3x3 (+ norm) + ReLU, repeated. Layer indices match the reference checkpoints
    (conv at 0, norm at 1, ReLU at 2, ... or conv, ReLU without norm). With
    `deformable_last`, the last conv is a modulated DFConv2d (`offset`, `conv` inside)."""
    layers = []
    for i in range(num_convs):
        if deformable_last and i == num_convs - 1:
            layers.append(DFConv2d(channels, channels, kernel_size=3, stride=1, padding=1, bias=True))
        else:
            layers.append(nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1, bias=True))
        norm_layer = head_norm(norm, channels, num_levels)
        if norm_layer is not None:
            layers.append(norm_layer)
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class FCOSHead(nn.Module):
    """Predicts, at every location of every level, class logits, box distances
    (l, t, r, b) and a box-quality logit (centerness or IoU).

    Extension point for methods built on FCOS: `forward(features, top_module)` applies
    `top_module` to the box tower of each level and returns its outputs as
    `top_feats` (BlendMask's attentions, CondInst's dynamic filter parameters).
    """

    @configurable
    def __init__(
        self,
        *,
        in_channels: int,
        num_levels: int,
        num_classes: int,
        num_cls_convs: int = 4,
        num_box_convs: int = 4,
        num_share_convs: int = 0,
        norm: str = "GN",
        prior_prob: float = 0.01,
        use_scale: bool = True,
        use_relu: bool = True,
        centerness_on_reg: bool = True,
        use_deformable: bool = False,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.use_relu = use_relu
        self.centerness_on_reg = centerness_on_reg
        # Attribute order fixes the state_dict order of the reference checkpoints.
        self.cls_tower = _make_tower(num_cls_convs, in_channels, norm, num_levels, use_deformable)
        self.bbox_tower = _make_tower(num_box_convs, in_channels, norm, num_levels, use_deformable)
        self.share_tower = _make_tower(num_share_convs, in_channels, norm, num_levels)
        self.cls_logits = nn.Conv2d(in_channels, num_classes, kernel_size=3, stride=1, padding=1)
        self.bbox_pred = nn.Conv2d(in_channels, 4, kernel_size=3, stride=1, padding=1)
        self.ctrness = nn.Conv2d(in_channels, 1, kernel_size=3, stride=1, padding=1)
        self.scales = nn.ModuleList([Scale(1.0) for _ in range(num_levels)]) if use_scale else None
        self._init_weights(prior_prob)

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        channels = {s.channels for s in input_shape}
        if len(channels) != 1:
            raise ValueError(f"FCOS head needs the same channels on every level, got {channels}")
        fcos = cfg.MODEL.FCOS
        return {
            "in_channels": channels.pop(),
            "num_levels": len(input_shape),
            "num_classes": fcos.NUM_CLASSES,
            "num_cls_convs": fcos.NUM_CLS_CONVS,
            "num_box_convs": fcos.NUM_BOX_CONVS,
            "num_share_convs": fcos.NUM_SHARE_CONVS,
            "norm": fcos.NORM,
            "prior_prob": fcos.PRIOR_PROB,
            "use_scale": fcos.USE_SCALE,
            "use_relu": fcos.USE_RELU,
            "centerness_on_reg": fcos.CENTERNESS_ON_REG,
            "use_deformable": fcos.USE_DEFORMABLE,
        }

    def _init_weights(self, prior_prob: float):
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.constant_(module.bias, 0)
        # Start every class at `prior_prob` so the focal loss is stable at iteration 0.
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, features: List[torch.Tensor], top_module: Optional[nn.Module] = None,
                yield_bbox_towers: bool = False):
        """Returns lists over levels: logits (N,C,H,W), bbox_reg (N,4,H,W) after scale and
        ReLU (or exp), ctrness (N,1,H,W), top_feats and bbox_towers (empty when unused)."""
        logits, bbox_reg, ctrness, top_feats, bbox_towers = [], [], [], [], []
        for level, feature in enumerate(features):
            feature = run_per_level(self.share_tower, feature, level)
            cls_tower = run_per_level(self.cls_tower, feature, level)
            bbox_tower = run_per_level(self.bbox_tower, feature, level)
            if yield_bbox_towers:
                bbox_towers.append(bbox_tower)
            logits.append(self.cls_logits(cls_tower))
            ctrness.append(self.ctrness(bbox_tower if self.centerness_on_reg else cls_tower))
            reg = self.bbox_pred(bbox_tower)
            if self.scales is not None:
                reg = self.scales[level](reg)
            bbox_reg.append(F.relu(reg) if self.use_relu else torch.exp(reg))
            if top_module is not None:
                top_feats.append(top_module(bbox_tower))
        return logits, bbox_reg, ctrness, top_feats, bbox_towers

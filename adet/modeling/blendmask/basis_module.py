"""BlendMask's bottom module: predicts K bases at stride 4 from FPN levels (ProtoNet),
with an optional auxiliary semantic-segmentation head used only for a training loss."""
from typing import Dict, List, Optional

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.utils.registry import Registry

from adet.layers.conv import conv_norm_relu

BASIS_MODULE_REGISTRY = Registry("BASIS_MODULE")
BASIS_MODULE_REGISTRY.__doc__ = "Bottom modules of BlendMask (MODEL.BASIS_MODULE.NAME)."


def build_basis_module(cfg, input_shape: Dict[str, ShapeSpec]) -> nn.Module:
    return BASIS_MODULE_REGISTRY.get(cfg.MODEL.BASIS_MODULE.NAME)(cfg, input_shape)


@BASIS_MODULE_REGISTRY.register()
class ProtoNet(nn.Module):
    """Refines each of IN_FEATURES to CONVS_DIM channels, sums them at the resolution of
    the first, then a tower (NUM_CONVS convs, 2x upsampling, conv, 1x1 conv) gives
    NUM_BASES bases. `forward(features, sem_targets)` -> ({"bases": [tensor]}, losses)."""

    @configurable
    def __init__(self, *, in_features: List[str], in_channels: Dict[str, int], num_bases: int,
                 convs_dim: int, num_convs: int, norm: str, loss_on: bool = False,
                 num_classes: int = 80, common_stride: int = 8, loss_weight: float = 0.3,
                 visualize: bool = False):
        super().__init__()
        self.in_features = in_features
        self.loss_on = loss_on
        self.common_stride = common_stride
        self.sem_loss_weight = loss_weight
        self.visualize = visualize
        self.refine = nn.ModuleList([conv_norm_relu(in_channels[f], convs_dim, norm) for f in in_features])
        tower = [conv_norm_relu(convs_dim, convs_dim, norm) for _ in range(num_convs)]
        tower.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
        tower.append(conv_norm_relu(convs_dim, convs_dim, norm))
        tower.append(nn.Conv2d(convs_dim, num_bases, 1))
        self.tower = nn.Sequential(*tower)
        if loss_on:
            # Classes + background; plain BatchNorm, as in the reference.
            self.seg_head = nn.Sequential(
                nn.Conv2d(in_channels[in_features[0]], convs_dim, 3, padding=1, bias=False),
                nn.BatchNorm2d(convs_dim),
                nn.ReLU(),
                nn.Conv2d(convs_dim, convs_dim, 3, padding=1, bias=False),
                nn.BatchNorm2d(convs_dim),
                nn.ReLU(),
                nn.Conv2d(convs_dim, num_classes + 1, 1),
            )

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        basis = cfg.MODEL.BASIS_MODULE
        missing = [f for f in basis.IN_FEATURES if f not in input_shape]
        if missing:
            raise ValueError(f"MODEL.BASIS_MODULE.IN_FEATURES {missing} not produced by the backbone")
        return {
            "in_features": list(basis.IN_FEATURES),
            "in_channels": {k: v.channels for k, v in input_shape.items()},
            "num_bases": basis.NUM_BASES,
            "convs_dim": basis.CONVS_DIM,
            "num_convs": basis.NUM_CONVS,
            "norm": basis.NORM,
            "loss_on": basis.LOSS_ON,
            "num_classes": basis.NUM_CLASSES,
            "common_stride": basis.COMMON_STRIDE,
            "loss_weight": basis.LOSS_WEIGHT,
            "visualize": cfg.MODEL.BLENDMASK.VISUALIZE,
        }

    def forward(self, features: Dict[str, torch.Tensor], sem_targets: Optional[torch.Tensor] = None):
        x = None
        for refine, name in zip(self.refine, self.in_features):
            y = refine(features[name])
            # Coarser levels are resized bilinearly (half-pixel centres) to the first's size.
            x = y if x is None else x + F.interpolate(y, x.shape[-2:], mode="bilinear", align_corners=False)
        outputs = {"bases": [self.tower(x)]}
        losses = {}
        if self.training and self.loss_on:
            if sem_targets is None:
                raise ValueError("MODEL.BASIS_MODULE.LOSS_ON needs 'basis_sem' in every training input")
            losses["loss_basis_sem"] = self.sem_loss(features[self.in_features[0]], sem_targets)
        elif self.visualize and self.loss_on:
            outputs["seg_thing_out"] = self.seg_head(features[self.in_features[0]])
        return outputs, losses

    def sem_loss(self, feature: torch.Tensor, sem_targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the semantic head against the targets nearest-downsampled by
        COMMON_STRIDE (0 = background, c + 1 = class c)."""
        logits = self.seg_head(feature)
        targets = F.interpolate(sem_targets[:, None].float(), scale_factor=1 / self.common_stride)
        return F.cross_entropy(logits, targets[:, 0].long()) * self.sem_loss_weight

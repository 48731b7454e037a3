"""CondInst's mask branch: one shared feature map (F_mask) that every instance's dynamic
mask head reads, plus an optional auxiliary semantic-segmentation loss."""
import math
from typing import Dict, List, Optional

import torch
from torch import nn
from fvcore.nn import sigmoid_focal_loss_jit

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.structures import Instances

from adet.layers.conv import conv_norm_relu

from .utils import aligned_bilinear

INF = 100000000


def semantic_targets(gt_instances: List[Instances], stride: int) -> torch.Tensor:
    """(N, 1, H/stride, W/stride) class + 1 of the smallest ground-truth mask covering each
    pixel (0: background), sampled at the stride's cell centres from `gt_bitmasks_full`."""
    targets = []
    for gt in gt_instances:
        masks = gt.gt_bitmasks_full
        h, w = masks.shape[-2:]
        if len(gt) == 0:
            targets.append(torch.zeros((h, w), dtype=torch.long, device=masks.device))
            continue
        areas = masks.sum(dim=(1, 2))[:, None, None].repeat(1, h, w)
        areas[masks == 0] = INF
        min_areas, inds = areas.permute(1, 2, 0).reshape(h * w, -1).min(dim=1)
        labels = gt.gt_classes[inds] + 1
        labels[min_areas == INF] = 0
        targets.append(labels.reshape(h, w))
    start = stride // 2
    return torch.stack(targets)[:, None, start::stride, start::stride]


class MaskBranch(nn.Module):
    """Refines each input level to CHANNELS, sums them at the finest level's resolution
    (aligned bilinear upsampling), then NUM_CONVS convs and a 1x1 conv to OUT_CHANNELS.

    `forward(features, gt_instances)` -> (mask features (N, OUT_CHANNELS, H, W) at stride
    `out_stride`, loss dict with "loss_sem" when the semantic loss is on in training).
    """

    @configurable
    def __init__(self, *, in_features: List[str], in_channels: List[int], out_stride: int, channels: int,
                 out_channels: int, num_convs: int, norm: str, num_classes: Optional[int] = None,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0, prior_prob: float = 0.01):
        super().__init__()
        self.in_features = in_features
        self.out_stride = out_stride
        self.num_outputs = out_channels
        self.refine = nn.ModuleList([conv_norm_relu(c, channels, norm) for c in in_channels])
        tower = [conv_norm_relu(channels, channels, norm) for _ in range(num_convs)]
        tower.append(nn.Conv2d(channels, max(out_channels, 1), kernel_size=1))
        self.tower = nn.Sequential(*tower)

        self.sem_loss_on = num_classes is not None
        if self.sem_loss_on:
            self.focal_alpha = focal_alpha
            self.focal_gamma = focal_gamma
            self.seg_head = nn.Sequential(conv_norm_relu(in_channels[0], channels, norm),
                                          conv_norm_relu(channels, channels, norm))
            self.logits = nn.Conv2d(channels, num_classes, kernel_size=1)
            nn.init.constant_(self.logits.bias, -math.log((1 - prior_prob) / prior_prob))

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        branch = cfg.MODEL.CONDINST.MASK_BRANCH
        missing = [f for f in branch.IN_FEATURES if f not in input_shape]
        if missing:
            raise ValueError(f"MODEL.CONDINST.MASK_BRANCH.IN_FEATURES {missing} not produced by the backbone")
        return {
            "in_features": list(branch.IN_FEATURES),
            "in_channels": [input_shape[f].channels for f in branch.IN_FEATURES],
            "out_stride": input_shape[branch.IN_FEATURES[0]].stride,
            "channels": branch.CHANNELS,
            "out_channels": branch.OUT_CHANNELS,
            "num_convs": branch.NUM_CONVS,
            "norm": branch.NORM,
            "num_classes": cfg.MODEL.FCOS.NUM_CLASSES if branch.SEMANTIC_LOSS_ON else None,
            "focal_alpha": cfg.MODEL.FCOS.LOSS_ALPHA,
            "focal_gamma": cfg.MODEL.FCOS.LOSS_GAMMA,
            "prior_prob": cfg.MODEL.FCOS.PRIOR_PROB,
        }

    def forward(self, features: Dict[str, torch.Tensor], gt_instances: Optional[List[Instances]] = None):
        x = None
        for refine, name in zip(self.refine, self.in_features):
            y = refine(features[name])
            if x is None:
                x = y
                continue
            factor_h, factor_w = x.shape[2] // y.shape[2], x.shape[3] // y.shape[3]
            if factor_h != factor_w or factor_h * y.shape[2] != x.shape[2] or factor_w * y.shape[3] != x.shape[3]:
                raise ValueError(f"mask branch levels {tuple(x.shape[2:])} and {tuple(y.shape[2:])} "
                                 "are not an integer factor apart")
            x = x + aligned_bilinear(y, factor_h)
        mask_feats = self.tower(x)
        if self.num_outputs == 0:
            mask_feats = mask_feats[:, :0]

        losses = {}
        if self.training and self.sem_loss_on:
            losses["loss_sem"] = self.semantic_loss(features[self.in_features[0]], gt_instances)
        return mask_feats, losses

    def semantic_loss(self, feature: torch.Tensor, gt_instances: List[Instances]) -> torch.Tensor:
        logits = self.logits(self.seg_head(feature))
        targets = semantic_targets(gt_instances, self.out_stride)
        classes = torch.arange(1, logits.shape[1] + 1, dtype=logits.dtype, device=logits.device)[:, None, None]
        one_hot = (targets == classes).to(logits.dtype)
        num_pos = (one_hot > 0).sum().float().clamp(min=1.0)
        return sigmoid_focal_loss_jit(logits, one_hot, alpha=self.focal_alpha, gamma=self.focal_gamma,
                                      reduction="sum") / num_pos

"""SOLOv2's two branches: the instance head (category and kernel per grid cell) and the
mask feature branch (one unified mask feature map at 1/4 of the input)."""
import math
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec


def coord_features(x: torch.Tensor) -> torch.Tensor:
    """(N, 2, H, W): normalised x then y coordinates in [-1, 1] (CoordConv)."""
    xs = torch.linspace(-1, 1, x.shape[-1], device=x.device)
    ys = torch.linspace(-1, 1, x.shape[-2], device=x.device)
    y, x_ = torch.meshgrid(ys, xs, indexing="ij")
    n = x.shape[0]
    return torch.cat([x_.expand([n, 1, -1, -1]), y.expand([n, 1, -1, -1])], 1)


def _conv_norm_relu(in_channels: int, out_channels: int, norm: str, inplace: bool) -> List[nn.Module]:
    layers = [nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=not norm)]
    if norm == "GN":
        layers.append(nn.GroupNorm(32, out_channels))
    elif norm:
        raise ValueError(f"SOLOv2 supports NORM 'GN' or 'none', got {norm!r}")
    layers.append(nn.ReLU(inplace=inplace))
    return layers


def _norm_name(norm: str) -> str:
    return "" if norm in ("none", "", None) else norm


class SOLOv2InsHead(nn.Module):
    """Category and kernel branches. Each level is resized (bilinear) to its S x S grid;
    the kernel branch sees two extra CoordConv channels.

    Output: per level, category logits (N, C, S, S) and kernel weights (N, K, S, S).
    Module names follow the reference checkpoints (cate_tower, kernel_tower, cate_pred,
    kernel_pred).
    """

    @configurable
    def __init__(self, *, in_channels: int, channels: int, num_classes: int, num_kernels: int,
                 num_grids: List[int], num_convs: int = 4, norm: str = "GN", use_coord_conv: bool = True,
                 prior_prob: float = 0.01):
        super().__init__()
        self.num_grids = list(num_grids)
        self.use_coord_conv = use_coord_conv
        norm = _norm_name(norm)
        for name, extra in (("cate", 0), ("kernel", 2 if use_coord_conv else 0)):
            tower = []
            for i in range(num_convs):
                tower += _conv_norm_relu(in_channels + extra if i == 0 else channels, channels, norm, True)
            self.add_module(f"{name}_tower", nn.Sequential(*tower))
        self.cate_pred = nn.Conv2d(channels, num_classes, 3, 1, 1)
        self.kernel_pred = nn.Conv2d(channels, num_kernels, 3, 1, 1)

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)
        nn.init.constant_(self.cate_pred.bias, -math.log((1 - prior_prob) / prior_prob))

    @classmethod
    def from_config(cls, cfg, input_shapes: List[ShapeSpec]):
        solo = cfg.MODEL.SOLOV2
        channels = {s.channels for s in input_shapes}
        assert channels == {solo.INSTANCE_IN_CHANNELS}, f"instance features have {channels} channels"
        if solo.USE_DCN_IN_INSTANCE:
            raise NotImplementedError("MODEL.SOLOV2.USE_DCN_IN_INSTANCE is not supported yet")
        return {
            "in_channels": solo.INSTANCE_IN_CHANNELS, "channels": solo.INSTANCE_CHANNELS,
            "num_classes": solo.NUM_CLASSES, "num_kernels": solo.NUM_KERNELS, "num_grids": solo.NUM_GRIDS,
            "num_convs": solo.NUM_INSTANCE_CONVS, "norm": solo.NORM, "use_coord_conv": solo.USE_COORD_CONV,
            "prior_prob": solo.PRIOR_PROB,
        }

    def forward(self, features: List[torch.Tensor]) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        cate_preds, kernel_preds = [], []
        for feature, grid in zip(features, self.num_grids):
            if self.use_coord_conv:
                feature = torch.cat([feature, coord_features(feature)], 1)
            feature = F.interpolate(feature, size=grid, mode="bilinear", align_corners=False)
            cate_feature = feature[:, :-2] if self.use_coord_conv else feature
            kernel_preds.append(self.kernel_pred(self.kernel_tower(feature)))
            cate_preds.append(self.cate_pred(self.cate_tower(cate_feature)))
        return cate_preds, kernel_preds


class SOLOv2MaskHead(nn.Module):
    """Unified mask features: level i gets i conv+2x-upsample steps to reach 1/4 scale
    (the coarsest level also gets CoordConv channels); the levels are summed and a 1x1
    conv + GN + ReLU gives NUM_MASKS channels."""

    @configurable
    def __init__(self, *, num_levels: int, in_channels: int, channels: int, num_masks: int, norm: str = "GN"):
        super().__init__()
        norm = _norm_name(norm)
        self.num_levels = num_levels
        self.convs_all_levels = nn.ModuleList()
        for level in range(num_levels):
            convs = nn.Sequential()
            for j in range(max(level, 1)):
                in_ch = channels if j > 0 else in_channels + (2 if level == num_levels - 1 and level > 0 else 0)
                convs.add_module(f"conv{j}", nn.Sequential(*_conv_norm_relu(in_ch, channels, norm, False)))
                if level > 0:
                    convs.add_module(f"upsample{j}", nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.convs_all_levels.append(convs)
        pred = [nn.Conv2d(channels, num_masks, 1, 1, 0, bias=not norm)]
        if norm == "GN":
            pred.append(nn.GroupNorm(32, num_masks))
        pred.append(nn.ReLU(inplace=True))
        self.conv_pred = nn.Sequential(*pred)

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)

    @classmethod
    def from_config(cls, cfg, input_shapes: List[ShapeSpec]):
        solo = cfg.MODEL.SOLOV2
        return {"num_levels": len(input_shapes), "in_channels": solo.MASK_IN_CHANNELS,
                "channels": solo.MASK_CHANNELS, "num_masks": solo.NUM_MASKS, "norm": solo.NORM}

    def forward(self, features: List[torch.Tensor]) -> torch.Tensor:
        assert len(features) == self.num_levels
        mask_feature = self.convs_all_levels[0](features[0])
        for level in range(1, self.num_levels):
            x = features[level]
            if level == self.num_levels - 1:
                x = torch.cat([x, coord_features(x)], 1)
            mask_feature = mask_feature + self.convs_all_levels[level](x)
        return self.conv_pred(mask_feature)

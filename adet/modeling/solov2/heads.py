"""Heads of the SOLO family.

Every variant shares the category branch: each level is resized (bilinear) to its S x S grid
and a conv tower + 3x3 conv gives class logits per cell (:class:`SOLOInstanceHead`). They
differ only in the mask part: SOLOv2 predicts, per cell, a kernel (:class:`SOLOv2InsHead`)
applied to one unified mask feature map (:class:`SOLOv2MaskHead`); SOLO and Decoupled SOLO
predict the masks directly (``solo_heads.py``).
"""
import math
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec

from adet.layers import DFConv2d

DCN_TYPES = {"DCN": False, "DCNv2": True}  # MODEL.SOLOV2.TYPE_DCN -> modulated (DCNv2) or not


def coord_features(x: torch.Tensor) -> torch.Tensor:
    """(N, 2, H, W): normalised x then y coordinates in [-1, 1] (CoordConv)."""
    xs = torch.linspace(-1, 1, x.shape[-1], device=x.device)
    ys = torch.linspace(-1, 1, x.shape[-2], device=x.device)
    y, x_ = torch.meshgrid(ys, xs, indexing="ij")
    n = x.shape[0]
    return torch.cat([x_.expand([n, 1, -1, -1]), y.expand([n, 1, -1, -1])], 1)


def _conv_norm_relu(in_channels: int, out_channels: int, norm: str, inplace: bool,
                    dcn_type: Optional[str] = None) -> List[nn.Module]:
    if dcn_type:
        modulated = DCN_TYPES[dcn_type]
        # DCNv1 has no bias; without a norm only the modulated conv can carry one.
        conv = DFConv2d(in_channels, out_channels, with_modulated_dcn=modulated, kernel_size=3,
                        bias=modulated and not norm)
    else:
        conv = nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=not norm)
    layers = [conv]
    if norm == "GN":
        layers.append(nn.GroupNorm(32, out_channels))
    elif norm:
        raise ValueError(f"SOLO heads support NORM 'GN' or 'none', got {norm!r}")
    layers.append(nn.ReLU(inplace=inplace))
    return layers


def build_tower(in_channels: int, channels: int, num_convs: int, norm: str,
                dcn_type: Optional[str] = None) -> nn.Sequential:
    """``num_convs`` (3x3 conv, GN, ReLU); with ``dcn_type`` the last conv is deformable."""
    layers = []
    for i in range(num_convs):
        last_dcn = dcn_type if i == num_convs - 1 else None
        layers += _conv_norm_relu(in_channels if i == 0 else channels, channels, norm, True, last_dcn)
    return nn.Sequential(*layers)


def _norm_name(norm: str) -> str:
    return "" if norm in ("none", "", None) else norm


def init_head_weights(module: nn.Module):
    """Normal(0, 0.01) convs with zero bias; deformable convs start as regular ones (zero
    offsets, mask logits 0)."""
    for m in module.modules():
        if isinstance(m, DFConv2d):
            nn.init.normal_(m.conv.weight, std=0.01)
            if m.conv.bias is not None:
                nn.init.constant_(m.conv.bias, 0)
        elif isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=0.01)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
    for m in module.modules():
        if isinstance(m, DFConv2d):
            nn.init.constant_(m.offset.weight, 0)
            nn.init.constant_(m.offset.bias, 0)


def instance_head_config(cfg) -> Dict:
    """The MODEL.SOLOV2 keys every SOLO variant's instance head reads."""
    solo = cfg.MODEL.SOLOV2
    dcn_type = None
    if solo.USE_DCN_IN_INSTANCE:
        if solo.TYPE_DCN not in DCN_TYPES:
            raise ValueError(f"MODEL.SOLOV2.TYPE_DCN must be one of {sorted(DCN_TYPES)}, got {solo.TYPE_DCN!r}")
        dcn_type = solo.TYPE_DCN
    return {
        "in_channels": solo.INSTANCE_IN_CHANNELS, "channels": solo.INSTANCE_CHANNELS,
        "num_classes": solo.NUM_CLASSES, "num_grids": solo.NUM_GRIDS, "num_convs": solo.NUM_INSTANCE_CONVS,
        "norm": solo.NORM, "use_coord_conv": solo.USE_COORD_CONV, "prior_prob": solo.PRIOR_PROB,
        "dcn_type": dcn_type,
    }


def check_in_channels(cfg, input_shapes: List[ShapeSpec]):
    channels = {s.channels for s in input_shapes}
    expected = cfg.MODEL.SOLOV2.INSTANCE_IN_CHANNELS
    assert channels == {expected}, f"instance features have {channels} channels, INSTANCE_IN_CHANNELS {expected}"


class SOLOInstanceHead(nn.Module):
    """Base of the SOLO instance heads: the category branch (``cate_tower``, ``cate_pred``)
    and one tower per mask-part branch (``<name>_tower``, with ``extra`` CoordConv input
    channels). Subclasses add their mask predictors, call :meth:`init_weights` and
    implement ``forward`` -> (category logits (N, C, S, S) per level, mask-part outputs).

    Modules are registered in the reference checkpoints' order (towers, then predictors).
    """

    def __init__(self, *, in_channels: int, channels: int, num_classes: int, num_grids: List[int],
                 num_convs: int, norm: str, use_coord_conv: bool, prior_prob: float, dcn_type: Optional[str],
                 mask_towers: Dict[str, int]):
        super().__init__()
        self.num_grids = list(num_grids)
        self.use_coord_conv = use_coord_conv
        self.prior_prob = prior_prob
        norm = _norm_name(norm)
        self.cate_tower = build_tower(in_channels, channels, num_convs, norm, dcn_type)
        for name, extra in mask_towers.items():
            self.add_module(f"{name}_tower", build_tower(in_channels + extra, channels, num_convs, norm, dcn_type))
        self.cate_pred = nn.Conv2d(channels, num_classes, 3, 1, 1)

    def init_weights(self):
        init_head_weights(self)
        nn.init.constant_(self.cate_pred.bias, -math.log((1 - self.prior_prob) / self.prior_prob))

    @staticmethod
    def to_grid(feature: torch.Tensor, grid: int) -> torch.Tensor:
        return F.interpolate(feature, size=grid, mode="bilinear", align_corners=False)

    def category_logits(self, grid_feature: torch.Tensor) -> torch.Tensor:
        """(N, C, S, S) class logits from a feature already resized to the S x S grid."""
        return self.cate_pred(self.cate_tower(grid_feature))


class SOLOv2InsHead(SOLOInstanceHead):
    """SOLOv2's instance head: the category branch and the kernel branch, which sees two
    extra CoordConv channels and predicts NUM_KERNELS weights per cell.

    Output: per level, category logits (N, C, S, S) and kernel weights (N, K, S, S).
    Module names follow the reference checkpoints (cate_tower, kernel_tower, cate_pred,
    kernel_pred).
    """

    @configurable
    def __init__(self, *, in_channels: int, channels: int, num_classes: int, num_kernels: int,
                 num_grids: List[int], num_convs: int = 4, norm: str = "GN", use_coord_conv: bool = True,
                 prior_prob: float = 0.01, dcn_type: Optional[str] = None):
        super().__init__(in_channels=in_channels, channels=channels, num_classes=num_classes, num_grids=num_grids,
                         num_convs=num_convs, norm=norm, use_coord_conv=use_coord_conv, prior_prob=prior_prob,
                         dcn_type=dcn_type, mask_towers={"kernel": 2 if use_coord_conv else 0})
        self.kernel_pred = nn.Conv2d(channels, num_kernels, 3, 1, 1)
        self.init_weights()

    @classmethod
    def from_config(cls, cfg, input_shapes: List[ShapeSpec]):
        check_in_channels(cfg, input_shapes)
        return {**instance_head_config(cfg), "num_kernels": cfg.MODEL.SOLOV2.NUM_KERNELS}

    def forward(self, features: List[torch.Tensor]) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        cate_preds, kernel_preds = [], []
        for feature, grid in zip(features, self.num_grids):
            if self.use_coord_conv:
                feature = torch.cat([feature, coord_features(feature)], 1)
            feature = self.to_grid(feature, grid)
            cate_feature = feature[:, :-2] if self.use_coord_conv else feature
            kernel_preds.append(self.kernel_pred(self.kernel_tower(feature)))
            cate_preds.append(self.category_logits(cate_feature))
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
        init_head_weights(self)

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

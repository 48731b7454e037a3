"""BiFPN (Tan, Pang and Le, "EfficientDet", CVPR 2020) on ResNet or MobileNetV2: AdelaiDet's
``build_fcos_resnet_bifpn_backbone`` of its CondInst / BoxInst BiFPN configs.

Structure:
* the body (ResNet, or MobileNetV2 with ``MODEL.MOBILENET``) gives ``MODEL.BiFPN.IN_FEATURES``
  (e.g. res3..res5); `BackboneWithTopLevels` adds ``MODEL.FCOS.TOP_LEVELS`` levels above
  the last one (res6, res7), each by a 1x1 conv + norm where the channels differ from
  ``MODEL.BiFPN.OUT_CHANNELS`` and a 3x3 stride-2 max pool;
* ``MODEL.BiFPN.NUM_REPEATS`` `SingleBiFPN` layers, each a top-down then a bottom-up path
  over the levels. Every node resizes its inputs to its level (3x3 stride-2 max pool from
  the level below, nearest upsampling from the level above; a 1x1 conv + norm first where
  a body output has other than OUT_CHANNELS channels), adds them with fast normalised
  fusion weights (``relu(w) / (sum(relu(w)) + 1e-4)``), applies swish, then a 3x3 conv +
  norm (``MODEL.BiFPN.NORM``; a bias only without norm);
* outputs ``p<k>`` for each input level ``res<k>`` (P3-P7), all OUT_CHANNELS wide.

Parameter names follow BiFPN as in AdelaiDet's published CondInst / BoxInst BiFPN checkpoints,
as far as we know them; no reference schema is available for BiFPN, so they are not
checked against one: ``backbone.bottom_up.backbone.*`` (the body), ``backbone.bottom_up.res6.
reduction.{weight,norm.*}``, and per repeat ``backbone.repeated_bifpn.<r>.`` +
``lateral_<i>_f<l>`` (1x1 conv of input ``i`` for a node at level ``l``, with bias),
``weights_f<l>_<inputs>`` (fusion weights) and ``outputs_f<l>_<inputs>`` (3x3 conv), where
levels count from 0 (the finest input) and nodes are numbered after the inputs, e.g.
``outputs_f1_1_7_8`` for the bottom-up node of level 1 fed by input 1 and nodes 7 and 8.
"""
from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling.backbone import BACKBONE_REGISTRY, Backbone

from .fpn import build_fcos_bottom_up, check_neck_inputs

__all__ = [
    "BiFPN",
    "BackboneWithTopLevels",
    "FeatureMapResampler",
    "SingleBiFPN",
    "bifpn_nodes",
    "build_fcos_resnet_bifpn_backbone",
]

FUSION_EPS = 1e-4


def split_name(name: str) -> Tuple[str, int]:
    """``"res5"`` -> ``("res", 5)``."""
    prefix = name.rstrip("0123456789")
    if prefix == name:
        raise ValueError(f"Feature name {name!r} does not end with its level number")
    return prefix, int(name[len(prefix):])


def _downsample(x):
    return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class FeatureMapResampler(nn.Module):
    """A new level above another: 1x1 conv + norm (``reduction``, only where the channels
    change) and a 3x3 stride-2 max pool."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = ""):
        super().__init__()
        self.reduction = None
        if in_channels != out_channels:
            self.reduction = Conv2d(in_channels, out_channels, kernel_size=1, bias=not norm,
                                    norm=get_norm(norm, out_channels))

    def forward(self, x):
        if self.reduction is not None:
            x = self.reduction(x)
        return _downsample(x)


class BackboneWithTopLevels(Backbone):
    """A body (``self.backbone``) plus ``num_top_levels`` levels above its last output,
    named after it (``res5`` -> ``res6``, ``res7``)."""

    def __init__(self, backbone: Backbone, out_channels: int, num_top_levels: int, norm: str = ""):
        super().__init__()
        self.backbone = backbone
        shapes = backbone.output_shape()
        self._out_features = list(shapes)
        self._out_feature_channels = {k: s.channels for k, s in shapes.items()}
        self._out_feature_strides = {k: s.stride for k, s in shapes.items()}
        self.last_feature = max(shapes, key=lambda k: split_name(k)[1])
        self.top_names = []
        prefix, level = split_name(self.last_feature)
        channels, stride = shapes[self.last_feature].channels, shapes[self.last_feature].stride
        for i in range(1, num_top_levels + 1):
            name = f"{prefix}{level + i}"
            self.add_module(name, FeatureMapResampler(channels, out_channels, norm))
            channels, stride = out_channels, stride * 2
            self.top_names.append(name)
            self._out_features.append(name)
            self._out_feature_channels[name] = channels
            self._out_feature_strides[name] = stride

    def forward(self, x) -> Dict[str, torch.Tensor]:
        outputs = self.backbone(x)
        top = outputs[self.last_feature]
        for name in self.top_names:
            top = getattr(self, name)(top)
            outputs[name] = top
        return outputs


def bifpn_nodes(num_levels: int) -> List[Tuple[int, Tuple[int, ...]]]:
    """The fusion nodes of one BiFPN layer over ``num_levels`` inputs (0 = finest), in
    order, as (level, input indices); nodes get the indices ``num_levels``, ... The
    top-down path fuses each level's input with the node above; the bottom-up path fuses
    a level's input, its top-down node (none at the top level) and the node below; the
    finest top-down node is also the finest output."""
    if num_levels < 2:
        raise ValueError(f"BiFPN needs at least 2 levels, got {num_levels}")
    top = num_levels - 1
    nodes, above = [], top
    td = {}
    for level in range(top - 1, -1, -1):
        nodes.append((level, (level, above)))
        above = td[level] = num_levels + len(nodes) - 1
    below = td[0]
    for level in range(1, num_levels):
        inputs = (level, td[level], below) if level < top else (level, below)
        nodes.append((level, inputs))
        below = num_levels + len(nodes) - 1
    return nodes


class SingleBiFPN(nn.Module):
    """One BiFPN layer (see `bifpn_nodes`) from inputs with ``in_channels_list`` channels
    to outputs with ``out_channels``, one per input level."""

    def __init__(self, in_channels_list: Sequence[int], out_channels: int, norm: str = ""):
        super().__init__()
        self.out_channels = out_channels
        self.num_levels = len(in_channels_list)
        self.nodes = bifpn_nodes(self.num_levels)
        for level, inputs in self.nodes:
            for i in inputs:
                if i < self.num_levels and in_channels_list[i] != out_channels:
                    self.add_module(f"lateral_{i}_f{level}", Conv2d(
                        in_channels_list[i], out_channels, kernel_size=1, norm=get_norm(norm, out_channels)))
            suffix = self._suffix(level, inputs)
            setattr(self, f"weights_{suffix}", nn.Parameter(torch.ones(len(inputs))))
            self.add_module(f"outputs_{suffix}", Conv2d(
                out_channels, out_channels, kernel_size=3, padding=1, bias=not norm,
                norm=get_norm(norm, out_channels)))

    @staticmethod
    def _suffix(level: int, inputs: Sequence[int]) -> str:
        return f"f{level}_" + "_".join(map(str, inputs))

    def _resized(self, x, i: int, level: int, size) -> torch.Tensor:
        """Input ``i`` of a node at ``level``: lateral conv if needed, then resized."""
        if x.shape[1] != self.out_channels:
            x = getattr(self, f"lateral_{i}_f{level}")(x)
        h, w = x.shape[-2:]
        if h > size[0] and w > size[1]:
            return _downsample(x)
        if h < size[0] or w < size[1]:
            return F.interpolate(x, size=size, mode="nearest")
        return x

    def forward(self, feats: List[torch.Tensor]) -> List[torch.Tensor]:
        feats = list(feats)
        last = {}
        for level, inputs in self.nodes:
            size = feats[level].shape[-2:]
            suffix = self._suffix(level, inputs)
            weights = F.relu(getattr(self, f"weights_{suffix}"))
            weights = weights / (weights.sum() + FUSION_EPS)
            fused = sum(w * self._resized(feats[i], i, level, size) for w, i in zip(weights, inputs))
            feats.append(getattr(self, f"outputs_{suffix}")(F.silu(fused)))
            last[level] = len(feats) - 1
        return [feats[last[level]] for level in range(self.num_levels)]


class BiFPN(Backbone):
    """Body + top levels (`BackboneWithTopLevels`, ``self.bottom_up``) + ``num_repeats``
    `SingleBiFPN` layers (``self.repeated_bifpn``); outputs ``p<k>`` (see module doc)."""

    def __init__(self, bottom_up: Backbone, in_features: Sequence[str], out_channels: int,
                 num_top_levels: int, num_repeats: int, norm: str = ""):
        super().__init__()
        check_neck_inputs(bottom_up, in_features, "MODEL.BiFPN.IN_FEATURES")
        in_features = sorted(in_features, key=lambda k: split_name(k)[1])
        self._size_divisibility = bottom_up.output_shape()[in_features[-1]].stride
        self.bottom_up = BackboneWithTopLevels(bottom_up, out_channels, num_top_levels, norm)
        shapes = self.bottom_up.output_shape()
        self.in_features = in_features + self.bottom_up.top_names
        self._out_features = [f"p{split_name(k)[1]}" for k in self.in_features]
        self._out_feature_strides = {p: shapes[k].stride for p, k in zip(self._out_features, self.in_features)}
        self._out_feature_channels = {p: out_channels for p in self._out_features}
        channels = [shapes[k].channels for k in self.in_features]
        self.repeated_bifpn = nn.ModuleList()
        for _ in range(num_repeats):
            self.repeated_bifpn.append(SingleBiFPN(channels, out_channels, norm))
            channels = [out_channels] * len(channels)

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    def forward(self, x) -> Dict[str, torch.Tensor]:
        features = self.bottom_up(x)
        feats = [features[k] for k in self.in_features]
        for layer in self.repeated_bifpn:
            feats = layer(feats)
        return dict(zip(self._out_features, feats))


@BACKBONE_REGISTRY.register()
def build_fcos_resnet_bifpn_backbone(cfg, input_shape: ShapeSpec):
    """ResNet (MobileNetV2 with MODEL.MOBILENET) + BiFPN from MODEL.BiFPN (IN_FEATURES,
    OUT_CHANNELS, NUM_REPEATS, NORM) with MODEL.FCOS.TOP_LEVELS extra levels."""
    b = cfg.MODEL.BiFPN
    return BiFPN(build_fcos_bottom_up(cfg, input_shape), b.IN_FEATURES, b.OUT_CHANNELS,
                 cfg.MODEL.FCOS.TOP_LEVELS, b.NUM_REPEATS, b.NORM)

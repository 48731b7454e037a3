"""DLA (Deep Layer Aggregation, Yu et al., CVPR 2018) body and DLA + FPN for FCOS-RT.

Module and parameter names follow the original DLA implementation (``base_layer.0``,
``level0``..``level5``, ``tree1``/``tree2``, ``root.conv``/``root.bn``, ``project.0/1``),
so its ImageNet checkpoints load once ``backbone.bottom_up.`` is prefixed and the
classifier (``fc.*``) dropped. adet's checkpointer does that by itself when
``MODEL.WEIGHTS`` is such a file (as the DLA configs' is, ``dla34-ba72cf86.pth``): see
``RENAMES`` in `adet.checkpoint.convert`, the one conversion table.

Structure of a tree (``levels`` deep, ``in_ch`` -> ``out_ch``, ``stride``):
  * ``downsample``: max-pool by ``stride`` (only if stride > 1);
  * ``project``: 1x1 conv + norm where the channels change, giving the residual of the
    first block;
  * ``tree1``/``tree2``: two BasicBlocks (levels == 1) or two sub-trees (levels > 1);
  * ``root`` (levels == 1 only): 1x1 conv + norm (+ residual from the first child) + ReLU
    over the concatenation of both blocks' outputs and the children handed down;
  * ``level_root``: the tree's downsampled input is one of the children its root sees.
In a tree with levels > 1 the first sub-tree computes its own residual, so the outer
``project`` of the original is never used; we keep its parameters (the checkpoints carry
them) but skip it in `forward` and mark it ``requires_grad=False`` (no dead weights for
DDP or the optimizer).
"""
import math
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.layers import FrozenBatchNorm2d, ShapeSpec, get_norm
from detectron2.modeling.backbone import BACKBONE_REGISTRY, Backbone

from .fpn import fcos_fpn

__all__ = [
    "DLA",
    "DLA_SPECS",
    "BasicBlock",
    "Root",
    "Tree",
    "build_dla_backbone",
    "build_fcos_dla_fpn_backbone",
]

# name -> (levels per stage 0..5, channels per stage 0..5, residual root)
DLA_SPECS = {
    "DLA34": ((1, 1, 1, 2, 2, 1), (16, 32, 64, 128, 256, 512), False),
}


def _norm(norm: str, channels: int) -> nn.Module:
    """`get_norm`, except that GN uses fewer groups than 32 where the channels need it
    (DLA's first stages have 16 and 32 channels)."""
    if norm == "GN" and channels % 32:
        return nn.GroupNorm(math.gcd(32, channels), channels)
    return get_norm(norm, channels)


def _conv(in_ch, out_ch, kernel_size, stride=1, dilation=1):
    pad = (kernel_size - 1) // 2 * dilation
    return nn.Conv2d(in_ch, out_ch, kernel_size, stride, pad, dilation=dilation, bias=False)


class BasicBlock(nn.Module):
    """3x3 conv-norm-ReLU, 3x3 conv-norm, plus a residual (the input unless given)."""

    def __init__(self, in_ch, out_ch, stride=1, dilation=1, norm="BN"):
        super().__init__()
        self.conv1 = _conv(in_ch, out_ch, 3, stride, dilation)
        self.bn1 = _norm(norm, out_ch)
        self.conv2 = _conv(out_ch, out_ch, 3, 1, dilation)
        self.bn2 = _norm(norm, out_ch)

    def forward(self, x, residual: Optional[torch.Tensor] = None):
        if residual is None:
            residual = x
        out = F.relu_(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu_(out + residual)


class Root(nn.Module):
    """Aggregation node: conv over the concatenated children, norm, optional residual
    from the first child, ReLU."""

    def __init__(self, in_ch, out_ch, kernel_size=1, residual=False, norm="BN"):
        super().__init__()
        self.conv = _conv(in_ch, out_ch, kernel_size)
        self.bn = _norm(norm, out_ch)
        self.residual = residual

    def forward(self, *children):
        x = self.bn(self.conv(torch.cat(children, dim=1)))
        if self.residual:
            x = x + children[0]
        return F.relu_(x)


class Tree(nn.Module):
    """A hierarchical aggregation tree (see the module docstring)."""

    def __init__(self, levels, in_ch, out_ch, stride=1, level_root=False, root_dim=0,
                 root_kernel_size=1, dilation=1, root_residual=False, norm="BN"):
        super().__init__()
        if root_dim == 0:
            root_dim = 2 * out_ch
        if level_root:
            root_dim += in_ch
        self.levels = levels
        self.level_root = level_root
        if levels == 1:
            self.tree1 = BasicBlock(in_ch, out_ch, stride, dilation, norm)
            self.tree2 = BasicBlock(out_ch, out_ch, 1, dilation, norm)
            self.root = Root(root_dim, out_ch, root_kernel_size, root_residual, norm)
        else:
            sub = dict(root_kernel_size=root_kernel_size, dilation=dilation,
                       root_residual=root_residual, norm=norm)
            self.tree1 = Tree(levels - 1, in_ch, out_ch, stride, root_dim=0, **sub)
            # the second sub-tree's root also aggregates this tree's children and tree1
            self.tree2 = Tree(levels - 1, out_ch, out_ch, 1, root_dim=root_dim + out_ch, **sub)
        self.downsample = nn.MaxPool2d(stride, stride) if stride > 1 else None
        self.project = None
        if in_ch != out_ch:
            self.project = nn.Sequential(_conv(in_ch, out_ch, 1), _norm(norm, out_ch))
            if levels > 1:  # kept for checkpoint compatibility only
                self.project.requires_grad_(False)

    def forward(self, x, children: Optional[List[torch.Tensor]] = None):
        children = [] if children is None else children
        bottom = self.downsample(x) if self.downsample is not None else x
        if self.level_root:
            children.append(bottom)
        if self.levels == 1:
            residual = self.project(bottom) if self.project is not None else bottom
            x1 = self.tree1(x, residual)
            x2 = self.tree2(x1)
            return self.root(x2, x1, *children)
        x1 = self.tree1(x)
        children.append(x1)
        return self.tree2(x1, children=children)


class DLA(Backbone):
    """DLA body: ``base_layer`` (7x7 conv, stride 1), ``level0``/``level1`` (plain 3x3
    conv stages, stride 1 and 2), ``level2``..``level5`` (trees, stride 2 each).
    Outputs ``level{i}`` at stride 2**i with ``channels[i]`` channels.
    """

    def __init__(self, levels: Sequence[int], channels: Sequence[int], *, norm: str = "BN",
                 residual_root: bool = False, out_features: Sequence[str] = ("level2", "level3", "level4", "level5")):
        super().__init__()
        assert len(levels) == len(channels) == 6, (levels, channels)
        self.channels = list(channels)
        self.base_layer = nn.Sequential(
            _conv(3, channels[0], 7), _norm(norm, channels[0]), nn.ReLU(inplace=True))
        self.level0 = self._conv_level(channels[0], channels[0], levels[0], 1, norm)
        self.level1 = self._conv_level(channels[0], channels[1], levels[1], 2, norm)
        for i in range(2, 6):
            tree = Tree(levels[i], channels[i - 1], channels[i], 2, level_root=i > 2,
                        root_residual=residual_root, norm=norm)
            self.add_module(f"level{i}", tree)

        names = [f"level{i}" for i in range(6)]
        unknown = set(out_features) - set(names)
        if unknown:
            raise ValueError(f"DLA has no output(s) {sorted(unknown)}; choose from {names}")
        self._out_features = [n for n in names if n in out_features]
        self._out_feature_channels = {f"level{i}": channels[i] for i in range(6)}
        self._out_feature_strides = {f"level{i}": 2 ** i for i in range(6)}
        self._last = max(int(n[len("level"):]) for n in self._out_features)
        self._init_weights()

    @staticmethod
    def _conv_level(in_ch, out_ch, num_convs, stride, norm):
        layers = []
        for i in range(num_convs):
            layers += [_conv(in_ch, out_ch, 3, stride if i == 0 else 1),
                       _norm(norm, out_ch), nn.ReLU(inplace=True)]
            in_ch = out_ch
        return nn.Sequential(*layers)

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def size_divisibility(self) -> int:
        # stride-2 convs round up and max-pools round down: sizes must divide by 32
        return 32

    def freeze(self, freeze_at: int = 0):
        """Detectron2's FREEZE_AT: 1 freezes the stem (base_layer, level0, level1),
        k >= 2 also level2..level{k}; <= 0 freezes nothing. Frozen stages get
        FrozenBatchNorm2d and no gradients."""
        stages = [("base_layer", "level0", "level1")] + [(f"level{i}",) for i in range(2, 6)]
        for names in stages[:max(freeze_at, 0)]:
            for name in names:
                module = getattr(self, name)
                module.requires_grad_(False)
                setattr(self, name, FrozenBatchNorm2d.convert_frozen_batchnorm(module))
        return self

    def forward(self, x) -> Dict[str, torch.Tensor]:
        assert x.dim() == 4, f"DLA takes (N, C, H, W) inputs, got shape {tuple(x.shape)}"
        outputs = {}
        x = self.base_layer(x)
        for i in range(self._last + 1):
            name = f"level{i}"
            x = getattr(self, name)(x)
            if name in self._out_features:
                outputs[name] = x
        return outputs


def _out_features(cfg) -> List[str]:
    """MODEL.DLA.OUT_FEATURES (the reference's "stageN" names mean "levelN") plus the
    FPN's inputs where they are DLA levels."""
    names = [n.replace("stage", "level", 1) if n.startswith("stage") else n
             for n in cfg.MODEL.DLA.OUT_FEATURES]
    names += [n for n in cfg.MODEL.FPN.IN_FEATURES if n.startswith("level")]
    return sorted(set(names))


@BACKBONE_REGISTRY.register()
def build_dla_backbone(cfg, input_shape: ShapeSpec):
    """The DLA body named by MODEL.DLA.CONV_BODY, normalised with MODEL.DLA.NORM."""
    body = cfg.MODEL.DLA.CONV_BODY
    if body not in DLA_SPECS:
        raise ValueError(f"MODEL.DLA.CONV_BODY must be one of {sorted(DLA_SPECS)}, got {body!r}")
    if input_shape.channels not in (None, 3):
        raise ValueError(f"DLA takes 3-channel images, got {input_shape.channels}")
    levels, channels, residual_root = DLA_SPECS[body]
    model = DLA(levels, channels, norm=cfg.MODEL.DLA.NORM, residual_root=residual_root,
                out_features=_out_features(cfg))
    return model.freeze(cfg.MODEL.BACKBONE.FREEZE_AT)


@BACKBONE_REGISTRY.register()
def build_fcos_dla_fpn_backbone(cfg, input_shape: ShapeSpec):
    """DLA body + FPN on MODEL.FPN.IN_FEATURES (e.g. level3..level5) plus
    MODEL.FCOS.TOP_LEVELS extra levels from P5 (FCOS-RT uses none)."""
    return fcos_fpn(cfg, build_dla_backbone(cfg, input_shape))

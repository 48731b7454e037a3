"""Detectron2's ResNet with deformable stages computed by adet's deformable convolution.

Detectron2's ``DeformBottleneckBlock`` calls its compiled ops, which a registry-only
Detectron2 build lacks. :class:`DeformBottleneckBlock` here has the same structure and
parameter names (``conv1``, ``conv2_offset``, ``conv2`` (deformable, with ``conv2.norm``),
``conv3``, ``shortcut``), so Detectron2 and AdelaiDet checkpoints load unchanged, and
computes with :mod:`adet.layers.deform_conv`.

``MODEL.RESNETS.DEFORM_INTERVAL`` (AdelaiDet's key; Detectron2 v0.6 has none): in a
deformable stage, block ``i`` (0-based) is deformable when ``i % DEFORM_INTERVAL == 0``,
the others are Detectron2's plain ``BottleneckBlock``. The default 1 makes every block
of the stage deformable, which is Detectron2's own behaviour.
"""
import fvcore.nn.weight_init as weight_init
from torch import nn
from torch.nn import functional as F

from detectron2.layers import CNNBlockBase, Conv2d, ShapeSpec, get_norm
from detectron2.modeling.backbone.resnet import BasicStem, BottleneckBlock, ResNet

from adet.layers.deform_conv import DeformConv, ModulatedDeformConv

__all__ = ["DeformBottleneckBlock", "make_deform_stage", "build_resnet_deform_backbone"]


class DeformBottleneckBlock(CNNBlockBase):
    """Bottleneck block (1x1, 3x3, 1x1) whose 3x3 conv is deformable: ``conv2_offset``
    (a regular 3x3 conv, zero-initialised) predicts the offsets (and, when modulated,
    the mask logits: channels ``[dy/dx pairs (2/3) | mask (1/3)]`` per deformable group
    set) from the output of ``conv1``."""

    def __init__(self, in_channels, out_channels, *, bottleneck_channels, stride=1,
                 num_groups=1, norm="BN", stride_in_1x1=False, dilation=1,
                 deform_modulated=False, deform_num_groups=1):
        super().__init__(in_channels, out_channels, stride)
        self.deform_modulated = deform_modulated
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)

        self.shortcut = None
        if in_channels != out_channels:
            self.shortcut = Conv2d(in_channels, out_channels, kernel_size=1, stride=stride,
                                   bias=False, norm=get_norm(norm, out_channels))
        self.conv1 = Conv2d(in_channels, bottleneck_channels, kernel_size=1, stride=stride_1x1,
                            bias=False, norm=get_norm(norm, bottleneck_channels))
        per_position = 3 if deform_modulated else 2  # (dy, dx[, mask]) per kernel position
        self.conv2_offset = Conv2d(bottleneck_channels, per_position * 9 * deform_num_groups,
                                   kernel_size=3, stride=stride_3x3, padding=dilation,
                                   dilation=dilation)
        conv_class = ModulatedDeformConv if deform_modulated else DeformConv
        self.conv2 = conv_class(bottleneck_channels, bottleneck_channels, kernel_size=3,
                                stride=stride_3x3, padding=dilation, dilation=dilation,
                                groups=num_groups, deformable_groups=deform_num_groups,
                                bias=False, norm=get_norm(norm, bottleneck_channels))
        self.conv3 = Conv2d(bottleneck_channels, out_channels, kernel_size=1, bias=False,
                            norm=get_norm(norm, out_channels))

        for layer in (self.conv1, self.conv2, self.conv3, self.shortcut):
            if layer is not None:
                weight_init.c2_msra_fill(layer)
        # Start as a regular convolution: zero offsets (and mask 0.5 when modulated).
        nn.init.constant_(self.conv2_offset.weight, 0)
        nn.init.constant_(self.conv2_offset.bias, 0)

    def forward(self, x):
        out = F.relu_(self.conv1(x))
        offset = self.conv2_offset(out)
        if self.deform_modulated:
            split = offset.shape[1] * 2 // 3
            out = self.conv2(out, offset[:, :split], offset[:, split:].sigmoid())
        else:
            out = self.conv2(out, offset)
        out = self.conv3(F.relu_(out))
        out = out + (x if self.shortcut is None else self.shortcut(x))
        return F.relu_(out)


def _bottleneck(*, deform, deform_modulated, deform_num_groups, **kwargs):
    """A deformable or plain bottleneck block (``ResNet.make_stage``'s ``block_class``)."""
    if deform:
        return DeformBottleneckBlock(deform_modulated=deform_modulated,
                                     deform_num_groups=deform_num_groups, **kwargs)
    return BottleneckBlock(**kwargs)


def make_deform_stage(num_blocks, *, deform_interval=1, deform_modulated=False,
                      deform_num_groups=1, **kwargs):
    """``ResNet.make_stage`` for a deformable stage: block ``i`` is a
    :class:`DeformBottleneckBlock` when ``i % deform_interval == 0``, else a
    ``BottleneckBlock``. ``kwargs`` are ``make_stage``'s (``*_per_block`` included)."""
    if deform_interval < 1:
        raise ValueError(f"MODEL.RESNETS.DEFORM_INTERVAL must be >= 1, got {deform_interval}")
    return ResNet.make_stage(
        _bottleneck, num_blocks,
        deform_per_block=[i % deform_interval == 0 for i in range(num_blocks)],
        deform_modulated=deform_modulated, deform_num_groups=deform_num_groups, **kwargs,
    )


_BLOCKS_PER_STAGE = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}


def build_resnet_deform_backbone(cfg, input_shape: ShapeSpec) -> ResNet:
    """Detectron2's ``build_resnet_backbone`` for bottleneck ResNets (50, 101, 152) with
    the stages of ``MODEL.RESNETS.DEFORM_ON_PER_STAGE`` built by :func:`make_deform_stage`.
    Same modules, names, strides, dilation and freezing as Detectron2's builder."""
    r = cfg.MODEL.RESNETS
    if r.DEPTH not in _BLOCKS_PER_STAGE:
        raise ValueError(f"MODEL.RESNETS.DEFORM_ON_PER_STAGE needs ResNet-50/101/152, got depth {r.DEPTH}")
    if r.RES5_DILATION not in (1, 2):
        raise ValueError(f"MODEL.RESNETS.RES5_DILATION must be 1 or 2, got {r.RES5_DILATION}")
    stem = BasicStem(in_channels=input_shape.channels, out_channels=r.STEM_OUT_CHANNELS, norm=r.NORM)
    in_channels, out_channels = r.STEM_OUT_CHANNELS, r.RES2_OUT_CHANNELS
    bottleneck_channels = r.NUM_GROUPS * r.WIDTH_PER_GROUP
    stages = []
    for idx, num_blocks in enumerate(_BLOCKS_PER_STAGE[r.DEPTH]):
        dilation = r.RES5_DILATION if idx == 3 else 1
        first_stride = 1 if idx == 0 or dilation == 2 else 2
        common = dict(
            stride_per_block=[first_stride] + [1] * (num_blocks - 1),
            in_channels=in_channels, out_channels=out_channels, norm=r.NORM,
            bottleneck_channels=bottleneck_channels, stride_in_1x1=r.STRIDE_IN_1X1,
            dilation=dilation, num_groups=r.NUM_GROUPS,
        )
        if r.DEFORM_ON_PER_STAGE[idx]:
            blocks = make_deform_stage(
                num_blocks, deform_interval=r.DEFORM_INTERVAL, deform_modulated=r.DEFORM_MODULATED,
                deform_num_groups=r.DEFORM_NUM_GROUPS, **common,
            )
        else:
            blocks = ResNet.make_stage(BottleneckBlock, num_blocks, **common)
        stages.append(blocks)
        in_channels = out_channels
        out_channels *= 2
        bottleneck_channels *= 2
    return ResNet(stem, stages, out_features=r.OUT_FEATURES, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)

"""VoVNet-V2 (Lee and Park, "CenterMask", CVPR 2020) body and VoVNet + FPN builders.

A stem of three 3x3 conv-norm-ReLU layers (64, 64, 128 channels; strides 2, 1, 2), then
four stages ``stage2``..``stage5`` of One-Shot Aggregation (OSA) modules. An OSA module
applies ``layers`` 3x3 conv-norm-ReLU layers in sequence, concatenates its input with all
their outputs, reduces that by a 1x1 conv-norm-ReLU to the stage's output channels, and
rescales it with effective squeeze-excitation (eSE: global average pool, a 1x1 conv with
bias, hard sigmoid); every module of a stage but the first adds its input (identity
mapping). Stages 3-5 start with a 3x3 stride-2 max pool (ceil mode). Every OSA module has
its eSE here, as in the VoVNet-V2 Detectron2 implementation as we know it (timm's VoVNet
puts eSE on the last module of each stage only: 1.6 M parameters fewer in V-39).

    body        layers  modules per stage   stage conv ch        stage out ch
    V-39-eSE      5       1, 1, 2, 2        128, 160, 192, 224   256, 512, 768, 1024
    V-57-eSE      5       1, 1, 4, 3        (same)               (same)
    V-99-eSE      5       1, 3, 9, 3        (same)               (same)

Outputs ``stage2``..``stage5`` at strides 4, 8, 16, 32 (``MODEL.VOVNET.OUT_FEATURES``).

Config: ``MODEL.VOVNET.CONV_BODY`` ("V-39-eSE", "V-57-eSE", "V-99-eSE"), ``.NORM``,
``.OUT_FEATURES``, ``MODEL.BACKBONE.FREEZE_AT`` (1: stem; k: stem and stage2..stage{k});
``MODEL.VOVNET.OUT_CHANNELS`` and ``.BACKBONE_OUT_CHANNELS`` are kept for compatibility
(the FPN's width is ``MODEL.FPN.OUT_CHANNELS``).

Parameter names follow the VoVNet-V2 Detectron2 implementation whose ImageNet checkpoints
AdelaiDet's configs name (``vovnet39_ese_detectron2.pth``), as far as we know them; no
reference schema is available for VoVNet, so they are unverified:
``stem.stem_<1..3>/{conv,norm}``, ``stage<s>.OSA<s>_<m>.layers.<i>.OSA<s>_<m>_<i>/{conv,norm}``,
``stage<s>.OSA<s>_<m>.concat.OSA<s>_<m>_concat/{conv,norm}``, ``stage<s>.OSA<s>_<m>.ese.fc``.
"""
from collections import OrderedDict
from typing import Dict, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.layers import FrozenBatchNorm2d, ShapeSpec, get_norm
from detectron2.modeling.backbone import BACKBONE_REGISTRY, Backbone

from .fpn import fcos_fpn, maxpool_fpn

__all__ = [
    "VOVNET_SPECS",
    "ESEModule",
    "OSAModule",
    "VoVNet",
    "build_vovnet_backbone",
    "build_vovnet_fpn_backbone",
    "build_fcos_vovnet_fpn_backbone",
]

_STEM = (64, 64, 128)
_STAGE_CONV = (128, 160, 192, 224)
_STAGE_OUT = (256, 512, 768, 1024)
# name -> (stem channels, stage conv channels, stage out channels, layers per module,
#          modules per stage)
VOVNET_SPECS = {
    "V-39-eSE": (_STEM, _STAGE_CONV, _STAGE_OUT, 5, (1, 1, 2, 2)),
    "V-57-eSE": (_STEM, _STAGE_CONV, _STAGE_OUT, 5, (1, 1, 4, 3)),
    "V-99-eSE": (_STEM, _STAGE_CONV, _STAGE_OUT, 5, (1, 3, 9, 3)),
}


def _conv_norm_relu(in_ch, out_ch, name, kernel_size=3, stride=1, norm="BN"):
    """``(name/conv, name/norm, name/relu)`` layers, for an ``nn.Sequential(OrderedDict)``."""
    conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride, kernel_size // 2, bias=False)
    return [(f"{name}/conv", conv), (f"{name}/norm", get_norm(norm, out_ch)),
            (f"{name}/relu", nn.ReLU(inplace=True))]


class ESEModule(nn.Module):
    """Effective squeeze-excitation: ``x * hard_sigmoid(fc(avg_pool(x)))`` with one 1x1 conv."""

    def __init__(self, channels):
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        weight = self.fc(F.adaptive_avg_pool2d(x, 1))
        return x * (F.relu6(weight + 3.0) / 6.0)


class OSAModule(nn.Module):
    """One-Shot Aggregation: conv layers in sequence, one concatenation of the input and
    every layer's output, 1x1 reduction, eSE, and the identity where ``identity``."""

    def __init__(self, in_ch, stage_ch, out_ch, num_layers, name, identity=False, norm="BN"):
        super().__init__()
        self.identity = identity
        self.layers = nn.ModuleList()
        ch = in_ch
        for i in range(num_layers):
            self.layers.append(nn.Sequential(OrderedDict(_conv_norm_relu(ch, stage_ch, f"{name}_{i}", norm=norm))))
            ch = stage_ch
        concat_ch = in_ch + num_layers * stage_ch
        self.concat = nn.Sequential(OrderedDict(_conv_norm_relu(concat_ch, out_ch, f"{name}_concat", 1, norm=norm)))
        self.ese = ESEModule(out_ch)

    def forward(self, x):
        outputs = [x]
        for layer in self.layers:
            outputs.append(layer(outputs[-1]))
        y = self.ese(self.concat(torch.cat(outputs, dim=1)))
        return y + x if self.identity else y


def _stage(index, in_ch, stage_ch, out_ch, num_layers, num_modules, norm):
    """``stage<index>``: [max pool (index > 2)] + ``OSA<index>_1``..``OSA<index>_<n>``."""
    modules = [] if index == 2 else [("Pooling", nn.MaxPool2d(3, 2, ceil_mode=True))]
    for m in range(1, num_modules + 1):
        name = f"OSA{index}_{m}"
        modules.append((name, OSAModule(in_ch if m == 1 else out_ch, stage_ch, out_ch, num_layers,
                                        name, identity=m > 1, norm=norm)))
    return nn.Sequential(OrderedDict(modules))


class VoVNet(Backbone):
    """VoVNet-V2 body (see the module docstring) as a Detectron2 `Backbone`."""

    def __init__(self, conv_body: str = "V-39-eSE", norm: str = "BN",
                 out_features: Sequence[str] = ("stage2", "stage3", "stage4", "stage5"), in_channels: int = 3):
        super().__init__()
        if conv_body not in VOVNET_SPECS:
            raise ValueError(f"MODEL.VOVNET.CONV_BODY must be one of {sorted(VOVNET_SPECS)}, got {conv_body!r}")
        names = ["stem", "stage2", "stage3", "stage4", "stage5"]
        if not out_features or set(out_features) - set(names):
            raise ValueError(f"VoVNet outputs are {names}, got {list(out_features)}")
        stem, stage_ch, stage_out, num_layers, num_modules = VOVNET_SPECS[conv_body]
        layers, ch = [], in_channels
        for i, (out_ch, stride) in enumerate(zip(stem, (2, 1, 2))):
            layers += _conv_norm_relu(ch, out_ch, f"stem_{i + 1}", stride=stride, norm=norm)
            ch = out_ch
        self.stem = nn.Sequential(OrderedDict(layers))
        in_chs = (stem[-1],) + tuple(stage_out[:-1])
        for i in range(4):
            self.add_module(f"stage{i + 2}", _stage(i + 2, in_chs[i], stage_ch[i], stage_out[i], num_layers,
                                                    num_modules[i], norm))
        self._out_features = [n for n in names if n in out_features]
        self._out_feature_channels = dict(zip(names, (stem[-1],) + tuple(stage_out)))
        self._out_feature_strides = dict(zip(names, (4, 4, 8, 16, 32)))
        self._init_weights()

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def freeze(self, freeze_at: int = 0):
        """Detectron2's FREEZE_AT: 1 freezes the stem, k >= 2 also stage2..stage{k}; frozen
        parts get FrozenBN and no gradients."""
        for name in ["stem", "stage2", "stage3", "stage4", "stage5"][: max(freeze_at, 0)]:
            module = getattr(self, name)
            module.requires_grad_(False)
            setattr(self, name, FrozenBatchNorm2d.convert_frozen_batchnorm(module))
        return self

    def forward(self, x) -> Dict[str, torch.Tensor]:
        outputs = {}
        last = self._out_features[-1]
        for name in ["stem", "stage2", "stage3", "stage4", "stage5"]:
            x = getattr(self, name)(x)
            if name in self._out_features:
                outputs[name] = x
            if name == last:
                break
        return outputs

    def output_shape(self):
        return {f: ShapeSpec(channels=self._out_feature_channels[f], stride=self._out_feature_strides[f])
                for f in self._out_features}


@BACKBONE_REGISTRY.register()
def build_vovnet_backbone(cfg, input_shape: ShapeSpec):
    """VoVNet body from MODEL.VOVNET (CONV_BODY, NORM, OUT_FEATURES) and
    MODEL.BACKBONE.FREEZE_AT."""
    c = cfg.MODEL.VOVNET
    body = VoVNet(c.CONV_BODY, norm=c.NORM, out_features=c.OUT_FEATURES, in_channels=input_shape.channels or 3)
    return body.freeze(cfg.MODEL.BACKBONE.FREEZE_AT)


@BACKBONE_REGISTRY.register()
def build_vovnet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """VoVNet + FPN with P6 by max pool (P2-P6 from stage2..stage5, e.g. for SOLOv2)."""
    return maxpool_fpn(cfg, build_vovnet_backbone(cfg, input_shape))


@BACKBONE_REGISTRY.register()
def build_fcos_vovnet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """VoVNet + FPN on MODEL.FPN.IN_FEATURES (stage3..stage5) plus MODEL.FCOS.TOP_LEVELS
    levels from P5: AdelaiDet's FCOS VoVNet configs."""
    return fcos_fpn(cfg, build_vovnet_backbone(cfg, input_shape))

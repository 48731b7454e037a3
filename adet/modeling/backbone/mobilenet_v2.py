"""MobileNetV2 (Sandler et al., CVPR 2018) body, AdelaiDet's ``MODEL.MOBILENET`` option.

A 3x3 stride-2 stem conv (32 channels), then 17 inverted-residual blocks (1x1 expansion,
depthwise 3x3, linear 1x1 projection; ReLU6; a residual where stride is 1 and channels
match) in 7 stages:

    expansion t     1    6    6    6    6    6    6
    channels  c    16   24   32   64   96  160  320
    blocks    n     1    2    3    4    3    3    1
    stride    s     1    2    2    2    1    2    1

The last 1x1 conv to 1280 channels and the classifier are not built. Outputs, named like
ResNet's so that configs written for ResNet work unchanged (AdelaiDet reads the body's
outputs from ``MODEL.RESNETS.OUT_FEATURES``): ``res2`` (24 ch, stride 4, ``features[3]``),
``res3`` (32 ch, stride 8, ``features[6]``), ``res4`` (96 ch, stride 16, ``features[13]``),
``res5`` (320 ch, stride 32, ``features[17]``).

Parameter names are those of the classic PyTorch MobileNetV2 that AdelaiDet's
``build_mnv2_backbone`` uses, as far as we know them (no reference schema is available
for it): ``features.0.{0,1}`` (stem conv, norm), ``features.<i>.conv.<j>`` with ``j`` in
``0, 1, 3, 4`` (t = 1: depthwise conv, norm, projection, norm) or ``0, 1, 3, 4, 6, 7``
(expansion, norm, depthwise, norm, projection, norm). torchvision's ``mobilenet_v2``
nests the same layers differently; `convert_torchvision_mobilenet_v2_state_dict` maps its
checkpoints.

Config: ``MODEL.MOBILENET: True`` makes ``build_fcos_resnet_fpn_backbone`` and
``build_fcos_resnet_bifpn_backbone`` use this body instead of ResNet (AdelaiDet's switch);
``MODEL.RESNETS.OUT_FEATURES`` names its outputs, ``MODEL.RESNETS.NORM`` its norm (adet's
choice: AdelaiDet has no key for it) and ``MODEL.BACKBONE.FREEZE_AT`` what is frozen.
"""
from typing import Dict, Sequence

import torch
from torch import nn

from detectron2.layers import FrozenBatchNorm2d, ShapeSpec, get_norm
from detectron2.modeling.backbone import BACKBONE_REGISTRY, Backbone

__all__ = [
    "MOBILENET_V2_SETTING",
    "InvertedResidual",
    "MobileNetV2",
    "build_mnv2_backbone",
    "convert_mobilenet_v2_imagenet_state_dict",
    "convert_torchvision_mobilenet_v2_state_dict",
]

# (expansion t, channels c, blocks n, stride s) per stage
MOBILENET_V2_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                        (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
STEM_CHANNELS = 32
# output name -> index in `features` of the module that ends it
_OUTPUTS = {"res2": 3, "res3": 6, "res4": 13, "res5": 17}


def _conv_norm(in_ch, out_ch, kernel_size, stride, norm, groups=1, act=True):
    layers = [nn.Conv2d(in_ch, out_ch, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
              get_norm(norm, out_ch)]
    return layers + [nn.ReLU6(inplace=True)] if act else layers


class InvertedResidual(nn.Module):
    """MobileNetV2 block: [1x1 expansion + norm + ReLU6] -> depthwise 3x3 + norm + ReLU6
    -> 1x1 projection + norm, plus the input where stride is 1 and channels match."""

    def __init__(self, in_ch, out_ch, stride, expansion, norm="BN"):
        super().__init__()
        hidden = int(round(in_ch * expansion))
        layers = _conv_norm(in_ch, hidden, 1, 1, norm) if expansion != 1 else []
        layers += _conv_norm(hidden, hidden, 3, stride, norm, groups=hidden)
        layers += _conv_norm(hidden, out_ch, 1, 1, norm, act=False)
        self.conv = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and in_ch == out_ch

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(Backbone):
    """MobileNetV2 body (no last conv, no classifier) as a Detectron2 `Backbone`."""

    def __init__(self, norm: str = "BN", out_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
                 in_channels: int = 3):
        super().__init__()
        unknown = [f for f in out_features if f not in _OUTPUTS]
        if unknown or not out_features:
            raise ValueError(f"MobileNetV2 outputs are {list(_OUTPUTS)}, got {list(out_features)}")
        features = [nn.Sequential(*_conv_norm(in_channels, STEM_CHANNELS, 3, 2, norm))]
        strides, channels, ch, stride = [2], [STEM_CHANNELS], STEM_CHANNELS, 2
        for t, c, n, s in MOBILENET_V2_SETTING:
            for i in range(n):
                features.append(InvertedResidual(ch, c, s if i == 0 else 1, t, norm))
                stride *= s if i == 0 else 1
                ch = c
                strides.append(stride)
                channels.append(c)
        self.features = nn.ModuleList(features)
        self._feature_strides = strides
        self._out_features = [f for f in _OUTPUTS if f in out_features]
        self._out_feature_strides = {f: strides[_OUTPUTS[f]] for f in self._out_features}
        self._out_feature_channels = {f: channels[_OUTPUTS[f]] for f in self._out_features}
        self._taps = {_OUTPUTS[f]: f for f in self._out_features}
        self._init_weights()

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def freeze(self, freeze_at: int = 0):
        """0: nothing; k >= 1: every module of `features` whose output stride is at most
        2**max(k, 1) (1: the stride-2 stem and first block; 2: up to ``res2``; ...),
        with FrozenBN and no gradients."""
        if freeze_at <= 0:
            return self
        limit = 2 ** max(freeze_at, 1)
        for i, s in enumerate(self._feature_strides):
            if s <= limit:
                self.features[i].requires_grad_(False)
                self.features[i] = FrozenBatchNorm2d.convert_frozen_batchnorm(self.features[i])
        return self

    def forward(self, x) -> Dict[str, torch.Tensor]:
        outputs = {}
        for i, module in enumerate(self.features[: max(self._taps) + 1]):
            x = module(x)
            if i in self._taps:
                outputs[self._taps[i]] = x
        return outputs


# torchvision's layer path inside ``features.<i>.conv`` -> ours, with / without expansion
_TORCHVISION_LAYERS = {
    True: {"0.0": "0", "0.1": "1", "1.0": "3", "1.1": "4", "2": "6", "3": "7"},
    False: {"0.0": "0", "0.1": "1", "1": "3", "2": "4"},
}


def convert_torchvision_mobilenet_v2_state_dict(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """torchvision's ``mobilenet_v2`` state dict -> this layout (the stem, the last conv
    and the classifier keep their names)."""
    out = {}
    for key, value in state_dict.items():
        block, sep, rest = key.partition(".conv.")
        if sep and block.startswith("features."):
            expands = f"{block}.conv.3.weight" in state_dict  # the projection's norm
            layer, param = rest.rsplit(".", 1)
            key = f"{block}.conv.{_TORCHVISION_LAYERS[expands][layer]}.{param}"
        out[key] = value
    return out


def convert_mobilenet_v2_imagenet_state_dict(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """An ImageNet MobileNetV2 checkpoint (this layout or torchvision's) as `MobileNetV2`'s
    state dict: the last conv (``features.18``) and the classifier are dropped."""
    if any(".conv.0.0." in k for k in state_dict):
        state_dict = convert_torchvision_mobilenet_v2_state_dict(state_dict)
    return {k: v for k, v in state_dict.items() if k.startswith("features.") and not k.startswith("features.18.")}


@BACKBONE_REGISTRY.register()
def build_mnv2_backbone(cfg, input_shape: ShapeSpec):
    """MobileNetV2 body with outputs MODEL.RESNETS.OUT_FEATURES (res2..res5), norm
    MODEL.RESNETS.NORM, frozen up to MODEL.BACKBONE.FREEZE_AT (AdelaiDet's builder name)."""
    body = MobileNetV2(norm=cfg.MODEL.RESNETS.NORM, out_features=list(cfg.MODEL.RESNETS.OUT_FEATURES),
                       in_channels=input_shape.channels or 3)
    return body.freeze(cfg.MODEL.BACKBONE.FREEZE_AT)

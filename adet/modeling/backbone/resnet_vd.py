"""ResNet-vd (ResNet-D of He et al., *Bag of Tricks for Image Classification with CNNs*,
2019), the backbone of SparseInst's ``sparse_inst_r50vd_*`` configs
(``MODEL.BACKBONE.NAME: build_resnet_vd_backbone``).

It is Detectron2's ResNet, built from ``MODEL.RESNETS`` as ``build_resnet_backbone`` builds
it (adet's deformable blocks on the stages of ``DEFORM_ON_PER_STAGE``, with
``DEFORM_MODULATED``, ``DEFORM_NUM_GROUPS`` and ``DEFORM_INTERVAL``, see
:mod:`adet.modeling.backbone.resnet_deform`), with two changes:

- :class:`DeepStem`: three 3x3 convs (stride 2, 1, 1; ``STEM_OUT_CHANNELS / 2``,
  ``/ 2`` and ``STEM_OUT_CHANNELS`` outputs: 32, 32, 64), each followed by the norm, ReLU
  after each, then the 3x3 max-pool of Detectron2's ``BasicStem``;
- :class:`AvgDownConv2d`: a projection shortcut that downsamples averages each 2x2 window
  (stride 2, ceil mode, padding not counted) and then projects with a stride-1 1x1 conv,
  instead of a stride-2 1x1 conv that reads one position in four.

Parameter names. Ours are Detectron2's (``stem.conv1.{0,1,2}.weight`` / ``.norm.*``,
``res2.0.conv1.weight``, ``res2.0.conv1.norm.*``, ``res2.0.shortcut.weight``, ...), so
every stage loads a Detectron2 ResNet checkpoint too. SparseInst's ResNet-vd and the
ImageNet weights its configs start from (timm's ``resnet50d_ra2-464e36ba.pth``) use
torchvision's names with a sequential stem: ``conv1.0`` / ``conv1.1`` (norm) / ``conv1.3``
/ ``conv1.4`` / ``conv1.6``, ``bn1``, ``layer1.0.conv1`` / ``bn1``, ``layer1.0.downsample.1``
(conv) / ``.2`` (norm); the deformable blocks' offset conv is ``conv2_offset`` in both.
:data:`REFERENCE_NAMES` (``adet.checkpoint.convert.RESNET_VD_NAMES``, with the other
checkpoint conversions) is the one table between the two; the backbone renames
reference-named keys when a state dict is loaded into it, so checkpoints in either naming
load with no missing or unexpected keys. :func:`to_reference_names` goes the other way
and :func:`convert_reference_state_dict` turns a bare ImageNet file (no ``backbone.``
prefix, with the classifier ``fc``) into our keys.
"""
import re
from typing import Dict, Iterable, Mapping, Optional

import fvcore.nn.weight_init as weight_init
from torch import nn
from torch.nn import functional as F

from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.resnet import BasicStem, ResNet, build_resnet_backbone

from adet.checkpoint.convert import RESNET_VD_NAMES as REFERENCE_NAMES

from .resnet_deform import build_resnet_deform_backbone

__all__ = [
    "DeepStem", "AvgDownConv2d", "build_resnet_vd_backbone", "REFERENCE_NAMES",
    "to_reference_names", "from_reference_names", "convert_reference_state_dict",
]


def _conv3x3(in_channels: int, out_channels: int, stride: int, norm: str, relu: bool) -> Conv2d:
    conv = Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False,
                  norm=get_norm(norm, out_channels), activation=nn.ReLU(inplace=True) if relu else None)
    weight_init.c2_msra_fill(conv)
    return conv


class DeepStem(BasicStem):
    """ResNet-C/D stem: ``conv1`` is three 3x3 convs with norm (stride 2, 1, 1;
    ``out_channels / 2``, ``out_channels / 2``, ``out_channels``), ReLU after the first
    two; ``BasicStem.forward`` then applies ReLU and the 3x3 stride-2 max-pool. Stride 4."""

    def __init__(self, in_channels: int = 3, out_channels: int = 64, norm: str = "BN"):
        super().__init__(in_channels, out_channels, norm)
        width = out_channels // 2
        self.conv1 = nn.Sequential(
            _conv3x3(in_channels, width, 2, norm, relu=True),
            _conv3x3(width, width, 1, norm, relu=True),
            _conv3x3(width, out_channels, 1, norm, relu=False),
        )


class AvgDownConv2d(Conv2d):
    """ResNet-D projection shortcut: ``pool`` x ``pool`` average pooling (stride ``pool``,
    ceil mode, padding not counted), then a 1x1 stride-1 conv with norm. Parameters are
    those of Detectron2's ``Conv2d`` (``weight``, ``norm.*``)."""

    def __init__(self, in_channels: int, out_channels: int, pool: int, norm: str):
        super().__init__(in_channels, out_channels, kernel_size=1, bias=False, norm=get_norm(norm, out_channels))
        self.pool = pool
        weight_init.c2_msra_fill(self)

    def forward(self, x):
        if self.pool > 1:
            x = F.avg_pool2d(x, self.pool, self.pool, ceil_mode=True, count_include_pad=False)
        return super().forward(x)

    def extra_repr(self):
        return f"{super().extra_repr()}, avg_pool={self.pool}"


def use_avg_down_shortcuts(resnet: ResNet, norm: str) -> None:
    """Replace each strided projection shortcut of ``resnet`` by an :class:`AvgDownConv2d`."""
    for stage in resnet.stages:
        for block in stage:
            if getattr(block, "shortcut", None) is not None and block.stride > 1:
                block.shortcut = AvgDownConv2d(block.in_channels, block.out_channels, block.stride, norm)


def _reference_name(name: str) -> str:
    for ours, reference in REFERENCE_NAMES:
        if re.fullmatch(ours, name):
            renamed = re.sub(ours, reference, name)
            return re.sub(r"layer<(\d)>", lambda m: f"layer{int(m.group(1)) - 1}", renamed)
    raise KeyError(f"{name!r} is not a ResNet-vd parameter name")


def to_reference_names(names: Iterable[str]) -> Dict[str, str]:
    """{our name: reference name} for backbone-relative names (no ``backbone.`` prefix)."""
    return {name: _reference_name(name) for name in names}


def from_reference_names(resnet: ResNet) -> Dict[str, str]:
    """{reference name: our name} of every entry of ``resnet``'s state dict."""
    return {ref: ours for ours, ref in to_reference_names(resnet.state_dict()).items()}


def _rename_reference_keys(module, state_dict, prefix, *args) -> None:
    """load_state_dict pre-hook: rename reference-named keys under ``prefix`` to ours."""
    table = from_reference_names(module)
    for key in [k for k in state_dict if k.startswith(prefix)]:
        ours = table.get(key[len(prefix):])
        if ours is not None and prefix + ours not in state_dict:
            state_dict[prefix + ours] = state_dict.pop(key)


def convert_reference_state_dict(state_dict: Mapping, resnet: ResNet, prefix: str = "backbone.",
                                 drop: Optional[str] = r"fc\..*|.*\.num_batches_tracked") -> Dict:
    """A bare reference/ImageNet state dict (``conv1.0.weight``, ..., ``fc.*``) -> ours with
    ``prefix``: ready for ``model.load_state_dict`` or Detectron2's checkpointer. Keys that
    ``resnet`` has no place for and that match ``drop`` (the classifier; BatchNorm's
    counters, which FrozenBN lacks) are left out; any other unknown key raises."""
    table = from_reference_names(resnet)
    out = {}
    for key, value in state_dict.items():
        if key in table:
            out[prefix + table[key]] = value
        elif not (drop and re.fullmatch(drop, key)):
            raise KeyError(f"{key!r} is not a reference ResNet-vd key")
    return out


@BACKBONE_REGISTRY.register()
def build_resnet_vd_backbone(cfg, input_shape: ShapeSpec) -> ResNet:
    """ResNet-vd from ``MODEL.RESNETS``: Detectron2's ResNet (deformable stages by adet's
    :func:`build_resnet_deform_backbone`) with :class:`DeepStem` and :class:`AvgDownConv2d`
    shortcuts; loads reference-named checkpoints (see the module doc)."""
    r = cfg.MODEL.RESNETS
    build = build_resnet_deform_backbone if any(r.DEFORM_ON_PER_STAGE) else build_resnet_backbone
    resnet = build(cfg, input_shape)
    resnet.stem = DeepStem(input_shape.channels, r.STEM_OUT_CHANNELS, r.NORM)
    use_avg_down_shortcuts(resnet, r.NORM)
    resnet.freeze(cfg.MODEL.BACKBONE.FREEZE_AT)  # the new modules too
    resnet.register_load_state_dict_pre_hook(_rename_reference_keys)
    return resnet

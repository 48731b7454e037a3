"""Deformable convolution (DCNv1) and modulated deformable convolution (DCNv2).

Detectron2's ``DeformConv`` / ``ModulatedDeformConv`` call its compiled ops; these
modules have the same constructor arguments and parameter names (``weight``, ``bias``,
``norm``) but compute with ``torchvision.ops.deform_conv2d``, which runs on the CPU and
the GPU and is the exact pure path. A compiled ``adet._C`` kernel, when built with the
op ``deform_conv``, is chosen at run time instead (see ``adet.layers._ext``).

Layout of ``offset`` (the same in Detectron2, mmcv and torchvision): ``(N, 2 * G * kh * kw,
Ho, Wo)`` for ``G`` deformable groups, ordered group, kernel position (row-major), then
(dy, dx). ``mask`` is ``(N, G * kh * kw, Ho, Wo)``, ordered group then kernel position.
Samples outside the input read zeros (bilinear interpolation with zero padding).
"""
import functools
from typing import Optional, Tuple, Union

import torch
from torch import nn
from torch.nn.modules.utils import _pair
from torchvision.ops import deform_conv2d as _tv_deform_conv2d

from detectron2.layers.wrappers import _NewEmptyTensorOp

from ._ext import has_op, load_ext

__all__ = ["deform_conv2d", "DeformConv", "ModulatedDeformConv", "DFConv2d"]

_IntPair = Union[int, Tuple[int, int]]


@functools.lru_cache(maxsize=None)
def _compiled_backends() -> frozenset:
    """Devices ("cpu", "cuda") with a compiled deform_conv kernel; cached, like load_ext."""
    if not has_op("deform_conv"):
        return frozenset()
    return frozenset(load_ext().op_backends().get("deform_conv", []))


def _use_compiled(*tensors: Optional[torch.Tensor]) -> bool:
    """The compiled kernel serves the forward pass only (no autograd): inference, or
    tensors that need no gradient."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return False
    return ("cuda" if tensors[0].is_cuda else "cpu") in _compiled_backends()


def _needs_float32(x: torch.Tensor, *others: Optional[torch.Tensor]) -> bool:
    """Under autocast, or with float16/bfloat16 inputs (e.g. SOLVER.AMP on the CPU)."""
    half = (torch.float16, torch.bfloat16)
    return torch.is_autocast_enabled(x.device.type) or any(
        t is not None and t.dtype in half for t in (x, *others))


def _float32(*tensors: Optional[torch.Tensor]):
    return tuple(t.float() if t is not None else None for t in tensors)


def deform_conv2d(
    x: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: _IntPair = 1,
    padding: _IntPair = 0,
    dilation: _IntPair = 1,
    mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """(Modulated) deformable convolution. Convolution groups are ``C_in // weight.shape[1]``
    and deformable groups ``offset.shape[1] // (2 * kh * kw)``, as in torchvision."""
    if _needs_float32(x, offset, weight, mask):
        # Neither torchvision's CPU kernel nor ours has half types; like other precision-
        # sensitive ops under autocast, run in float32 and return float32.
        with torch.autocast(x.device.type, enabled=False):
            return deform_conv2d(*_float32(x, offset, weight, bias), stride, padding, dilation,
                                 *_float32(mask))
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    if x.numel() == 0:
        out_hw = [
            (size + 2 * p - (d * (k - 1) + 1)) // s + 1
            for size, p, d, k, s in zip(x.shape[-2:], padding, dilation, weight.shape[-2:], stride)
        ]
        return _NewEmptyTensorOp.apply(x, [x.shape[0], weight.shape[0]] + out_hw)
    if _use_compiled(x, offset, weight, bias, mask):
        ext = load_ext()
        return ext.deform_conv_forward(
            x.contiguous(), offset.contiguous(), mask.contiguous() if mask is not None else None,
            weight.contiguous(), bias, *stride, *padding, *dilation,
        )
    return _tv_deform_conv2d(
        x, offset, weight, bias, stride=stride, padding=padding, dilation=dilation, mask=mask
    )


class _DeformConvBase(nn.Module):
    """Shared parameters and repr of the two deformable convolutions."""

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation,
                 groups, deformable_groups, bias, norm, activation):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels ({in_channels}) and out_channels ({out_channels}) must be "
                f"divisible by groups ({groups})"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups
        self.deformable_groups = deformable_groups
        self.with_bias = bias
        self.norm = norm
        self.activation = activation
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, nonlinearity="relu")

    def _conv(self, x, offset, mask=None):
        x = deform_conv2d(x, offset, self.weight, self.bias, self.stride, self.padding,
                          self.dilation, mask)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x

    def extra_repr(self):
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"dilation={self.dilation}, groups={self.groups}, "
            f"deformable_groups={self.deformable_groups}, bias={self.with_bias}"
        )


class DeformConv(_DeformConvBase):
    """Deformable convolution (DCNv1): ``forward(x, offset)``. No bias, like Detectron2's."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, deformable_groups=1, bias=False, norm=None, activation=None):
        if bias:
            raise ValueError("DeformConv has no bias (as Detectron2's); use ModulatedDeformConv")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, deformable_groups, False, norm, activation)

    def forward(self, x, offset):
        return self._conv(x, offset)


class ModulatedDeformConv(_DeformConvBase):
    """Modulated deformable convolution (DCNv2): ``forward(x, offset, mask)``, the mask in
    [0, 1] (callers apply the sigmoid)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, deformable_groups=1, bias=True, norm=None, activation=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, deformable_groups, bias, norm, activation)

    def forward(self, x, offset, mask):
        return self._conv(x, offset, mask)


class DFConv2d(nn.Module):
    """A deformable convolution that predicts its own offsets (and mask, when modulated)
    from its input with a regular convolution of the same geometry.

    Submodules, as in AdelaiDet's ``DFConv2d``: ``offset`` (nn.Conv2d, ``G * 3 * kh * kw``
    channels when modulated: dy/dx pairs first, then the mask logits; ``G * 2 * kh * kw``
    otherwise) and ``conv`` (:class:`ModulatedDeformConv` or :class:`DeformConv`).
    ``padding=None`` keeps the spatial size (``dilation * (k - 1) // 2``).
    """

    def __init__(self, in_channels, out_channels, with_modulated_dcn=True, kernel_size=3,
                 stride=1, groups=1, dilation=1, deformable_groups=1, bias=False, padding=None):
        super().__init__()
        kh, kw = _pair(kernel_size)
        dh, dw = _pair(dilation)
        if padding is None:
            padding = (dh * (kh - 1) // 2, dw * (kw - 1) // 2)
        self.with_modulated_dcn = with_modulated_dcn
        self.offset_split = 2 * deformable_groups * kh * kw  # offset channels; the rest is mask
        per_position = 3 if with_modulated_dcn else 2
        self.offset = nn.Conv2d(in_channels, deformable_groups * per_position * kh * kw,
                                kernel_size=(kh, kw), stride=stride, padding=padding,
                                dilation=dilation)
        nn.init.kaiming_uniform_(self.offset.weight, a=1)
        nn.init.constant_(self.offset.bias, 0.0)
        conv_class = ModulatedDeformConv if with_modulated_dcn else DeformConv
        self.conv = conv_class(in_channels, out_channels, kernel_size=(kh, kw), stride=stride,
                               padding=padding, dilation=dilation, groups=groups,
                               deformable_groups=deformable_groups, bias=bias)

    def forward(self, x, return_offset: bool = False):
        offset_mask = self.offset(x)
        if self.with_modulated_dcn:
            offset = offset_mask[:, : self.offset_split]
            mask = offset_mask[:, self.offset_split:].sigmoid()
            out = self.conv(x, offset, mask)
        else:
            out = self.conv(x, offset_mask)
        return (out, offset_mask) if return_offset else out

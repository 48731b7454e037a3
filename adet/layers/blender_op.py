"""BlendMask's blender as one op: crop the bases by box, resize the attentions, softmax over
the bases, weighted sum.

The plain path (:func:`blend_plain`) is the reference: torchvision's ``roi_align`` crops
``(N, K, R, R)`` from the bases, ``F.interpolate`` resizes the ``(N, K, A, A)`` attentions
to ``R x R``, and :func:`blend_crops` blends them. The fused path computes the same numbers
in one compiled kernel of ``adet._C`` (op ``blender``, CPU and CUDA) without materialising
the crops or the resized attentions, forward and backward (gradients for the bases and
the attentions; none for the boxes, as ``roi_align``). It is chosen at run time
(:func:`fused_available`); ``ADET_BLENDER=plain`` (or ``ADET_DISABLE_EXT=1``) forces the
plain path.
"""
import functools
import os

import torch
from torch.autograd import Function
from torch.autograd.function import once_differentiable
from torch.nn import functional as F
from torchvision.ops import roi_align

from ._ext import has_op, load_ext

__all__ = ["blend", "blend_crops", "blend_plain", "fused_available", "FORCE_PLAIN_ENV"]

FORCE_PLAIN_ENV = "ADET_BLENDER"  # "plain": never use the fused kernel
_FUSED_DTYPES = (torch.float32, torch.float64)


def blend_crops(crops: torch.Tensor, attns: torch.Tensor, interp: str = "bilinear") -> torch.Tensor:
    """(N, K, R, R) cropped bases and (N, K, A, A) attention logits -> (N, R, R): the
    attentions resized to R x R, softmax-normalised over K, weight the bases' sum."""
    weights = F.interpolate(attns, crops.shape[-2:], mode=interp).softmax(dim=1)
    return (crops * weights).sum(dim=1)


def blend_plain(bases, rois, attns, resolution, spatial_scale, sampling_ratio, aligned=True,
                interp="bilinear"):
    """The reference path of :func:`blend`, in plain PyTorch (torchvision's ``roi_align``)."""
    crops = roi_align(bases, rois.to(bases.dtype), resolution, spatial_scale, sampling_ratio, aligned)
    return blend_crops(crops, attns, interp)


@functools.lru_cache(maxsize=None)
def _compiled_backends() -> frozenset:
    """Devices ("cpu", "cuda") with a compiled blender kernel; cached, like load_ext."""
    if not has_op("blender"):
        return frozenset()
    return frozenset(load_ext().op_backends().get("blender", []))


def _forced_plain() -> bool:
    return os.environ.get(FORCE_PLAIN_ENV, "").strip().lower() == "plain"


def fused_available(bases: torch.Tensor, interp: str = "bilinear") -> bool:
    """True when :func:`blend` would run the compiled kernel for these bases: built for
    their device, float32/float64, bilinear resize, and not forced off."""
    return (
        not _forced_plain()
        and interp == "bilinear"
        and bases.dtype in _FUSED_DTYPES
        and bases.device.type in _compiled_backends()
    )


def _check_batch_indices(rois: torch.Tensor, batch: int) -> None:
    """Refuse ROIs of images outside the batch before the CPU kernel would read there
    (cheap on the CPU; the CUDA kernel, to stay sync-free, gives such ROIs zeros). The
    kernel checks again, but a C++ exception is a poorer message, and one GPU image's
    build of the extension crashed on it instead of raising."""
    if len(rois) and not (0 <= rois[:, 0].min() and rois[:, 0].max() < batch):
        raise RuntimeError(f"blender: a ROI's batch index is outside [0, {batch})")


class _FusedBlend(Function):
    """Autograd wrapper of the compiled kernels; saves only the inputs (the backward
    recomputes the crops and weights instead of storing them)."""

    @staticmethod
    def forward(ctx, bases, rois, attns, resolution, spatial_scale, sampling_ratio, aligned):
        ctx.params = (int(resolution), float(spatial_scale), int(sampling_ratio), bool(aligned))
        ctx.save_for_backward(bases, rois, attns)
        return load_ext().blender_forward(bases, rois, attns, *ctx.params)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        bases, rois, attns = ctx.saved_tensors
        grad_bases, grad_attns = load_ext().blender_backward(grad_out.contiguous(), bases, rois, attns,
                                                             *ctx.params)
        return (grad_bases if ctx.needs_input_grad[0] else None, None,
                grad_attns if ctx.needs_input_grad[2] else None, None, None, None, None)


def blend(bases: torch.Tensor, rois: torch.Tensor, attns: torch.Tensor, resolution: int,
          spatial_scale: float, sampling_ratio: int, aligned: bool = True, interp: str = "bilinear",
          impl: str = "auto") -> torch.Tensor:
    """Blend the bases inside each ROI with that ROI's attentions.

    Args:
        bases: (B, K, H, W) basis maps of the batch.
        rois: (N, 5) boxes as (batch index, x0, y0, x1, y1) in image coordinates
            (Detectron2's pooler format).
        attns: (N, K, A, A) attention logits, one set per ROI.
        resolution, spatial_scale, sampling_ratio, aligned: as torchvision's ``roi_align``
            (``sampling_ratio <= 0``: adaptive; ``aligned=True``: Detectron2's ROIAlignV2).
        interp: resize mode of the attentions; the fused kernel does "bilinear" only.
        impl: "auto" (fused when :func:`fused_available`), "fused" (error if not) or "plain".

    Returns:
        (N, R, R) mask logits in each box.
    """
    if impl not in ("auto", "fused", "plain"):
        raise ValueError(f"impl must be auto, fused or plain, not {impl!r}")
    fused = impl != "plain" and fused_available(bases, interp)
    if impl == "fused" and not fused:
        raise RuntimeError(f"the fused blender is not available for {bases.dtype} on {bases.device} "
                           f"with interp={interp!r} ({FORCE_PLAIN_ENV}={os.environ.get(FORCE_PLAIN_ENV)!r})")
    if not fused:
        return blend_plain(bases, rois, attns, resolution, spatial_scale, sampling_ratio, aligned, interp)
    if not bases.is_cuda:
        _check_batch_indices(rois, len(bases))
    return _FusedBlend.apply(bases, rois.to(bases.dtype), attns.to(bases.dtype), resolution,
                             spatial_scale, sampling_ratio, aligned)

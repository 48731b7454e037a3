"""Upsampling that keeps pixel centres aligned across strides."""
import torch
from torch.nn import functional as F


def aligned_bilinear(tensor: torch.Tensor, factor: int) -> torch.Tensor:
    """Upsample an (N, C, H, W) map by an integer ``factor`` to (N, C, H*factor, W*factor).

    A cell (i, j) of a stride-s map sits at pixel (i*s + s//2, j*s + s//2) in the image;
    this interpolation keeps that correspondence (plain bilinear resizing shifts it by
    a fraction of a cell): replicate-pad one row/column at the far edges, interpolate
    corner-aligned to factor*H+1 points, shift by factor//2 and crop.
    """
    if tensor.dim() != 4:
        raise ValueError(f"aligned_bilinear expects (N, C, H, W), got shape {tuple(tensor.shape)}")
    if factor < 1 or int(factor) != factor:
        raise ValueError(f"aligned_bilinear needs a positive integer factor, got {factor}")
    factor = int(factor)
    if factor == 1:
        return tensor
    h, w = tensor.shape[2:]
    tensor = F.pad(tensor, pad=(0, 1, 0, 1), mode="replicate")
    out_h, out_w = factor * h + 1, factor * w + 1
    tensor = F.interpolate(tensor, size=(out_h, out_w), mode="bilinear", align_corners=True)
    tensor = F.pad(tensor, pad=(factor // 2, 0, factor // 2, 0), mode="replicate")
    return tensor[:, :, : out_h - 1, : out_w - 1]

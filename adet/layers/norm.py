"""Normalisation layers for heads."""
import torch
from torch import nn
from detectron2.layers import NaiveSyncBatchNorm


class NaiveGroupNorm(nn.GroupNorm):
    """GroupNorm written with plain tensor ops (mean / var / reshape).

    Same result and parameters as `nn.GroupNorm`; exists because some export paths
    (ONNX, TensorRT, older mobile runtimes) lack a fused group-norm operator.
    """

    def forward(self, x):
        n, c, h, w = x.shape
        g = self.num_groups
        grouped = x.reshape(n, g, -1)
        mean = grouped.mean(dim=-1, keepdim=True)
        var = (grouped * grouped).mean(dim=-1, keepdim=True) - mean * mean
        x = ((grouped - mean) / torch.sqrt(var + self.eps)).reshape(n, c, h, w)
        if self.affine:
            x = x * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        return x


class PerLevelNorm(nn.ModuleList):
    """One BatchNorm per FPN level inside a head whose convs are shared by all levels.

    Batch statistics differ strongly between pyramid levels, so sharing the conv
    weights but not the BN statistics is what shared BN heads (FCOS-RT) do. Called
    with the level index: `norm(x, level)`.
    """

    def forward(self, x, level: int):
        return self[level](x)


def head_norm(norm: str, channels: int, num_levels: int):
    """The normalisation module a head conv uses, or None for "" / "none".

    "GN" and "NaiveGN" use 32 groups; "BN" and "SyncBN" give one module per level.
    """
    if norm in ("", "none", None):
        return None
    if norm == "GN":
        return nn.GroupNorm(32, channels)
    if norm == "NaiveGN":
        return NaiveGroupNorm(32, channels)
    if norm == "BN":
        return PerLevelNorm([nn.BatchNorm2d(channels) for _ in range(num_levels)])
    if norm == "SyncBN":
        return PerLevelNorm([NaiveSyncBatchNorm(channels) for _ in range(num_levels)])
    raise ValueError(f"Unknown head norm {norm!r}: use one of GN, NaiveGN, BN, SyncBN, none")


def run_per_level(modules, x, level: int):
    """Apply a Sequential of head layers, passing the level to per-level norms."""
    for m in modules:
        x = m(x, level) if isinstance(m, PerLevelNorm) else m(x)
    return x


__all__ = ["NaiveGroupNorm", "PerLevelNorm", "head_norm", "run_per_level"]

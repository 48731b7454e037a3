"""Conv helpers shared by mask branches."""
from typing import Optional

from torch import nn

from detectron2.layers import get_norm


def conv_norm_relu(in_channels: int, out_channels: int, norm: Optional[str]) -> nn.Sequential:
    """3x3 conv, norm, ReLU, with Kaiming-uniform init (a=1): the building block of
    BlendMask's basis module and CondInst's mask branch. Indices (0 conv, 1 norm) match
    the reference checkpoints. As in the reference, the conv has a bias only when `norm`
    is None, and "" means no norm layer; "GN" uses 32 groups."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=norm is None)
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.constant_(conv.bias, 0)
    layers = [conv]
    if norm:
        layers.append(nn.GroupNorm(32, out_channels) if norm == "GN" else get_norm(norm, out_channels))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)

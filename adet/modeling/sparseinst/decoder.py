"""IAM-based decoder (SparseInst, Sec. 3.4): an instance branch that predicts instance
activation maps (IAM) and aggregates one feature per map for class, objectness and mask
kernel, and a mask branch whose features the kernels turn into masks."""
import math
from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.layers import Conv2d
from detectron2.utils.registry import Registry
import fvcore.nn.weight_init as weight_init

SPARSE_INST_DECODER_REGISTRY = Registry("SPARSE_INST_DECODER")
SPARSE_INST_DECODER_REGISTRY.__doc__ = "Decoders of SparseInst: encoder features -> predictions."

PRIOR_PROB = 0.01


def conv_stack(num_convs: int, in_channels: int, channels: int) -> nn.Sequential:
    """``num_convs`` x (3x3 conv, ReLU): convs at even indices, as in the state_dict."""
    layers = []
    for i in range(num_convs):
        layers += [Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1), nn.ReLU(inplace=True)]
    for layer in layers[::2]:
        weight_init.c2_msra_fill(layer)
    return nn.Sequential(*layers)


def coordinate_features(x: torch.Tensor) -> torch.Tensor:
    """(B, 2, H, W) normalised absolute coordinates in [-1, 1]: x first, then y."""
    h, w = x.shape[-2:]
    ys = -1.0 + 2.0 * torch.arange(h, device=x.device) / (h - 1)
    xs = -1.0 + 2.0 * torch.arange(w, device=x.device) / (w - 1)
    ys, xs = torch.meshgrid(ys, xs, indexing="ij")
    coords = torch.stack([xs, ys])[None].expand(x.shape[0], -1, -1, -1)
    return coords.to(x)


def normalized_sigmoid_iam(iam: torch.Tensor) -> torch.Tensor:
    """(B, N, H, W) IAM logits -> (B, N, HW) weights: sigmoid, each map divided by its sum."""
    prob = iam.sigmoid().flatten(2)
    return prob / prob.sum(-1, keepdim=True).clamp(min=1e-6)


def aggregate(weights: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """(B, N, HW) weights x (B, C, H, W) features -> (B, N, C) instance features."""
    return torch.bmm(weights, features.flatten(2).transpose(1, 2))


class InstanceBranch(nn.Module):
    """Convs -> IAM (one 3x3 conv, sigmoid, normalised) -> one feature per map ->
    class logits, mask kernel and objectness logit."""

    def __init__(self, in_channels: int, dim: int, num_convs: int, num_masks: int, kernel_dim: int,
                 num_classes: int):
        super().__init__()
        self.inst_convs = conv_stack(num_convs, in_channels, dim)
        self.iam_conv = nn.Conv2d(dim, num_masks, 3, padding=1)
        self._make_heads(dim, kernel_dim, num_classes)

    def _make_heads(self, dim: int, kernel_dim: int, num_classes: int):
        self.cls_score = nn.Linear(dim, num_classes)
        self.mask_kernel = nn.Linear(dim, kernel_dim)
        self.objectness = nn.Linear(dim, 1)
        bias = -math.log((1 - PRIOR_PROB) / PRIOR_PROB)
        for layer in (self.iam_conv, self.cls_score):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.constant_(layer.bias, bias)
        nn.init.normal_(self.mask_kernel.weight, std=0.01)
        nn.init.constant_(self.mask_kernel.bias, 0.0)

    def activation(self, iam: torch.Tensor) -> torch.Tensor:
        return normalized_sigmoid_iam(iam)

    def instance_features(self, inst: torch.Tensor) -> torch.Tensor:
        return inst

    def forward(self, features: torch.Tensor):
        features = self.inst_convs(features)
        iam = self.iam_conv(features)
        inst = self.instance_features(aggregate(self.activation(iam), features))
        return self.cls_score(inst), self.mask_kernel(inst), self.objectness(inst), iam


class GroupInstanceBranch(InstanceBranch):
    """Group-IAM: ``groups`` maps per instance (a grouped 3x3 conv); the features of one
    instance's maps are concatenated and mixed by a linear layer + ReLU."""

    def __init__(self, in_channels: int, dim: int, num_convs: int, num_masks: int, kernel_dim: int,
                 num_classes: int, groups: int):
        nn.Module.__init__(self)
        self.groups = groups
        self.inst_convs = conv_stack(num_convs, in_channels, dim)
        self.iam_conv = nn.Conv2d(dim, num_masks * groups, 3, padding=1, groups=groups)
        expand_dim = dim * groups
        self.fc = nn.Linear(expand_dim, expand_dim)
        weight_init.c2_xavier_fill(self.fc)
        self._make_heads(expand_dim, kernel_dim, num_classes)

    def instance_features(self, inst: torch.Tensor) -> torch.Tensor:
        # (B, G*N, C): map g*N + n belongs to instance n -> (B, N, G*C), group-major channels.
        b, gn, c = inst.shape
        inst = inst.reshape(b, self.groups, gn // self.groups, c).transpose(1, 2).reshape(b, gn // self.groups, -1)
        return F.relu(self.fc(inst))


class GroupInstanceSoftBranch(GroupInstanceBranch):
    """Group-IAM with a spatial softmax (plus a learned bias) instead of normalised sigmoid."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.softmax_bias = nn.Parameter(torch.ones(1))

    def activation(self, iam: torch.Tensor) -> torch.Tensor:
        return F.softmax(iam.flatten(2) + self.softmax_bias, dim=-1)


class MaskBranch(nn.Module):
    """Convs -> 1x1 projection to the kernel dimension."""

    def __init__(self, in_channels: int, dim: int, num_convs: int, kernel_dim: int):
        super().__init__()
        self.mask_convs = conv_stack(num_convs, in_channels, dim)
        self.projection = nn.Conv2d(dim, kernel_dim, 1)
        weight_init.c2_msra_fill(self.projection)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.projection(self.mask_convs(features))


@SPARSE_INST_DECODER_REGISTRY.register()
class BaseIAMDecoder(nn.Module):
    """Coordinates + features -> instance and mask branches -> masks = kernels x mask
    features, upsampled by ``scale_factor`` (to 1/4 of the input).

    Returns {"pred_logits": (B, N, K), "pred_masks": (B, N, H, W), "pred_scores": (B, N, 1)}
    (+ "pred_iam" when ``output_iam``).
    """

    branch_class = InstanceBranch

    @configurable
    def __init__(self, *, in_channels: int, num_masks: int = 100, num_classes: int = 80, kernel_dim: int = 128,
                 inst_dim: int = 256, inst_convs: int = 4, mask_dim: int = 256, mask_convs: int = 4,
                 scale_factor: float = 2.0, output_iam: bool = False, groups: int = 4):
        super().__init__()
        in_channels += 2  # coordinate features
        branch_args = (in_channels, inst_dim, inst_convs, num_masks, kernel_dim, num_classes)
        if issubclass(self.branch_class, GroupInstanceBranch):
            branch_args += (groups,)
        self.inst_branch = self.branch_class(*branch_args)
        self.mask_branch = MaskBranch(in_channels, mask_dim, mask_convs, kernel_dim)
        self.scale_factor = scale_factor
        self.output_iam = output_iam

    @classmethod
    def from_config(cls, cfg):
        dec = cfg.MODEL.SPARSE_INST.DECODER
        return {
            "in_channels": cfg.MODEL.SPARSE_INST.ENCODER.NUM_CHANNELS,
            "num_masks": dec.NUM_MASKS, "num_classes": dec.NUM_CLASSES, "kernel_dim": dec.KERNEL_DIM,
            "inst_dim": dec.INST.DIM, "inst_convs": dec.INST.CONVS,
            "mask_dim": dec.MASK.DIM, "mask_convs": dec.MASK.CONVS,
            "scale_factor": dec.SCALE_FACTOR, "output_iam": dec.OUTPUT_IAM, "groups": dec.GROUPS,
        }

    def forward(self, features: torch.Tensor) -> Dict[str, torch.Tensor]:
        features = torch.cat([coordinate_features(features), features], dim=1)
        logits, kernels, scores, iam = self.inst_branch(features)
        mask_features = self.mask_branch(features)
        b, _, h, w = mask_features.shape
        masks = torch.bmm(kernels, mask_features.flatten(2)).view(b, -1, h, w)
        output = {
            "pred_logits": logits,
            "pred_masks": self._upsample(masks),
            "pred_scores": scores,
        }
        if self.output_iam:
            output["pred_iam"] = self._upsample(iam)
        return output

    def _upsample(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=self.scale_factor, mode="bilinear", align_corners=False)


@SPARSE_INST_DECODER_REGISTRY.register()
class GroupIAMDecoder(BaseIAMDecoder):
    branch_class = GroupInstanceBranch


@SPARSE_INST_DECODER_REGISTRY.register()
class GroupIAMSoftDecoder(BaseIAMDecoder):
    branch_class = GroupInstanceSoftBranch


def build_sparse_inst_decoder(cfg) -> nn.Module:
    return SPARSE_INST_DECODER_REGISTRY.get(cfg.MODEL.SPARSE_INST.DECODER.NAME)(cfg)

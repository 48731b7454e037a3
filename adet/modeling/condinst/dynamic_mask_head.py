"""CondInst's dynamic mask head: a tiny FCN whose filters the controller generates per
instance, applied to the mask features plus coordinates relative to the instance."""
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.structures import Instances

from adet.layers import dice_loss
from adet.modeling.fcos.targets import compute_locations

from . import boxinst
from .utils import aligned_bilinear


def dynamic_param_counts(in_channels: int, channels: int, num_layers: int,
                         rel_coords: bool = True) -> Tuple[List[int], List[int]]:
    """(weight counts, bias counts) per layer of the dynamic head: 1x1 convs
    (in_channels [+ 2 coordinates]) -> channels -> ... -> channels -> 1."""
    if num_layers < 1:
        raise ValueError(f"MODEL.CONDINST.MASK_HEAD.NUM_LAYERS must be >= 1, got {num_layers}")
    widths = [in_channels + (2 if rel_coords else 0)] + [channels] * (num_layers - 1) + [1]
    weight_nums = [widths[i] * widths[i + 1] for i in range(num_layers)]
    bias_nums = widths[1:]
    return weight_nums, bias_nums


def parse_dynamic_params(params: torch.Tensor, weight_nums: Sequence[int], bias_nums: Sequence[int]):
    """Split (num_insts, sum(weights) + sum(biases)) parameters, laid out as all layers'
    weights then all layers' biases, into grouped-conv weights (num_insts * out, in, 1, 1)
    and biases (num_insts * out,) per layer."""
    if params.dim() != 2 or params.shape[1] != sum(weight_nums) + sum(bias_nums):
        raise ValueError(f"expected (N, {sum(weight_nums) + sum(bias_nums)}) parameters, got {tuple(params.shape)}")
    num_insts = params.shape[0]
    splits = torch.split_with_sizes(params, list(weight_nums) + list(bias_nums), dim=1)
    num_layers = len(weight_nums)
    weights, biases = [], []
    for layer in range(num_layers):
        out_channels = bias_nums[layer]
        weights.append(splits[layer].reshape(num_insts * out_channels, -1, 1, 1))
        biases.append(splits[num_layers + layer].reshape(num_insts * out_channels))
    return weights, biases


def relative_coords(instance_locations: torch.Tensor, pixel_locations: torch.Tensor,
                    scales: torch.Tensor) -> torch.Tensor:
    """(N, 2, P): (instance location - pixel location) / scale, for N instance (x, y)
    locations, P pixel (x, y) locations and N scales (the instance level's size of interest)."""
    coords = instance_locations[:, None, :] - pixel_locations[None, :, :]
    return coords.permute(0, 2, 1).float() / scales.float()[:, None, None]


class DynamicMaskHead(nn.Module):
    """Mask logits of each instance from its generated parameters (`mask_head_params`),
    location, level (`fpn_levels`) and image (`im_inds`).

    Training (`forward(mask_feats, stride, instances, gt_instances)`): dice loss against
    `gt_bitmasks` ("loss_mask"), or BoxInst's "loss_prj" and "loss_pairwise". Inference:
    adds `pred_global_masks` (N, 1, H, W) probabilities at MASK_OUT_STRIDE.
    """

    @configurable
    def __init__(self, *, in_channels: int, channels: int, num_layers: int, mask_out_stride: int,
                 sizes_of_interest: Sequence[int], disable_rel_coords: bool = False,
                 boxinst_enabled: bool = False, pairwise_size: int = 3, pairwise_dilation: int = 2,
                 pairwise_color_thresh: float = 0.3, pairwise_warmup_iters: int = 10000,
                 use_fp16: bool = False):
        super().__init__()
        self.use_fp16 = use_fp16
        self.in_channels = in_channels
        self.channels = channels
        self.mask_out_stride = mask_out_stride
        self.disable_rel_coords = disable_rel_coords
        self.boxinst_enabled = boxinst_enabled
        self.pairwise_size = pairwise_size
        self.pairwise_dilation = pairwise_dilation
        self.pairwise_color_thresh = pairwise_color_thresh
        self.pairwise_warmup_iters = pairwise_warmup_iters
        self.weight_nums, self.bias_nums = dynamic_param_counts(in_channels, channels, num_layers,
                                                                not disable_rel_coords)
        self.num_gen_params = sum(self.weight_nums) + sum(self.bias_nums)
        # Relative coordinates are divided by the size of interest of the instance's level
        # (the last level's range doubled for the open-ended top level).
        soi = list(sizes_of_interest)
        self.register_buffer("sizes_of_interest", torch.tensor(soi + [soi[-1] * 2]))
        # Training iterations seen, for the pairwise-loss warm-up (saved with the model).
        self.register_buffer("_iter", torch.zeros([1]))

    @classmethod
    def from_config(cls, cfg):
        head = cfg.MODEL.CONDINST.MASK_HEAD
        pairwise = cfg.MODEL.BOXINST.PAIRWISE
        return {
            "in_channels": cfg.MODEL.CONDINST.MASK_BRANCH.OUT_CHANNELS,
            "channels": head.CHANNELS,
            "num_layers": head.NUM_LAYERS,
            "mask_out_stride": cfg.MODEL.CONDINST.MASK_OUT_STRIDE,
            "sizes_of_interest": [int(s) for s in cfg.MODEL.FCOS.SIZES_OF_INTEREST],
            "disable_rel_coords": head.DISABLE_REL_COORDS,
            "boxinst_enabled": cfg.MODEL.BOXINST.ENABLED,
            "pairwise_size": pairwise.SIZE,
            "pairwise_dilation": pairwise.DILATION,
            "pairwise_color_thresh": pairwise.COLOR_THRESH,
            "pairwise_warmup_iters": pairwise.WARMUP_ITERS,
            "use_fp16": head.USE_FP16,
        }

    def mask_logits(self, mask_feats: torch.Tensor, mask_feat_stride: int, instances: Instances) -> torch.Tensor:
        """(num_instances, 1, H * r, W * r) logits, r = mask_feat_stride / MASK_OUT_STRIDE."""
        n_inst = len(instances)
        _, _, h, w = mask_feats.shape
        inputs = mask_feats[instances.im_inds].reshape(n_inst, self.in_channels, h * w)
        if not self.disable_rel_coords:
            pixels = compute_locations([mask_feats], [mask_feat_stride])[0]
            scales = self.sizes_of_interest[instances.fpn_levels]
            coords = relative_coords(instances.locations, pixels, scales).to(mask_feats.dtype)
            inputs = torch.cat([coords, inputs], dim=1)
        weights, biases = parse_dynamic_params(instances.mask_head_params, self.weight_nums, self.bias_nums)
        with self._half_precision(inputs.device):
            x = self._dynamic_convs(inputs.reshape(1, -1, h, w), weights, biases, n_inst)
        # Losses and up-sampling stay in float32 whatever the convs ran in.
        x = x.float().reshape(n_inst, 1, h, w)
        if mask_feat_stride < self.mask_out_stride or mask_feat_stride % self.mask_out_stride:
            raise ValueError(f"mask features stride {mask_feat_stride} is not a multiple of "
                             f"MODEL.CONDINST.MASK_OUT_STRIDE {self.mask_out_stride}")
        return aligned_bilinear(x, mask_feat_stride // self.mask_out_stride)

    @staticmethod
    def _dynamic_convs(x, weights, biases, n_inst):
        """All instances at once: one grouped 1x1 conv per layer, a group per instance."""
        for layer, (weight, bias) in enumerate(zip(weights, biases)):
            x = F.conv2d(x, weight, bias=bias, groups=n_inst)
            if layer < len(weights) - 1:
                x = F.relu(x)
        return x

    def _half_precision(self, device: torch.device):
        """MASK_HEAD.USE_FP16: the dynamic convs (the head's bulk of memory: one map per
        instance) under autocast, float16 on GPUs, bfloat16 on CPUs (CPU float16 conv is
        slow or missing). A no-op context when disabled."""
        dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
        return torch.autocast(device_type=device.type, dtype=dtype, enabled=self.use_fp16)

    def forward(self, mask_feats: torch.Tensor, mask_feat_stride: int, instances: Instances,
                gt_instances: Optional[List[Instances]] = None):
        if not self.training:
            if len(instances) > 0:
                instances.pred_global_masks = self.mask_logits(mask_feats, mask_feat_stride, instances).sigmoid()
            return instances
        self._iter += 1
        return self.losses(mask_feats, mask_feat_stride, instances, gt_instances)

    def losses(self, mask_feats, mask_feat_stride, instances, gt_instances):
        names = ("loss_prj", "loss_pairwise") if self.boxinst_enabled else ("loss_mask",)
        if len(instances) == 0:
            dummy = mask_feats.sum() * 0 + instances.mask_head_params.sum() * 0
            return {name: dummy for name in names}
        gt_inds = instances.gt_inds
        gt_bitmasks = torch.cat([gt.gt_bitmasks for gt in gt_instances])[gt_inds].unsqueeze(1).to(mask_feats.dtype)
        logits = self.mask_logits(mask_feats, mask_feat_stride, instances)
        scores = logits.sigmoid()
        if not self.boxinst_enabled:
            return {"loss_mask": dice_loss(scores, gt_bitmasks).mean()}

        similarity = torch.cat([gt.image_color_similarity for gt in gt_instances])[gt_inds].to(mask_feats.dtype)
        loss_pairwise = boxinst.pairwise_loss(logits, similarity, gt_bitmasks, self.pairwise_size,
                                              self.pairwise_dilation, self.pairwise_color_thresh)
        warmup = min(self._iter.item() / float(self.pairwise_warmup_iters), 1.0)
        return {"loss_prj": boxinst.projection_loss(scores, gt_bitmasks), "loss_pairwise": loss_pairwise * warmup}

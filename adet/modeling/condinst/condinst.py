"""CondInst (Tian et al., 2020): FCOS plus an instance-conditioned dynamic mask head;
with MODEL.BOXINST.ENABLED, BoxInst (trained from boxes only)."""
from typing import Dict, List

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import ImageList, Instances, PolygonMasks, polygons_to_bitmask

from ..one_stage_detector import OneStageDetector
from . import boxinst
from .dynamic_mask_head import DynamicMaskHead
from .mask_branch import MaskBranch
from .utils import aligned_bilinear



@META_ARCH_REGISTRY.register()
class CondInst(OneStageDetector):
    """FCOS (the proposal generator) runs `controller` on its box tower at every level to
    generate each location's mask-head parameters; the dynamic mask head applies them to
    the mask branch's features.

    Output: training -> FCOS losses + "loss_mask" (BoxInst: "loss_prj", "loss_pairwise")
    (+ "loss_sem"); inference -> Instances with pred_boxes, scores, pred_classes and
    pred_masks (bool, at the output size).
    """

    @configurable
    def __init__(self, *, mask_head: DynamicMaskHead, mask_branch: MaskBranch, top_in_channels: int,
                 mask_out_stride: int = 4, max_proposals: int = -1, topk_proposals_per_im: int = -1,
                 boxinst_enabled: bool = False, bottom_pixels_removed: int = 10, pairwise_size: int = 3,
                 pairwise_dilation: int = 2, input_format: str = "BGR", **kwargs):
        super().__init__(**kwargs)
        if max_proposals != -1 and topk_proposals_per_im != -1:
            raise ValueError("MODEL.CONDINST.MAX_PROPOSALS and TOPK_PROPOSALS_PER_IM cannot both be set")
        # Attribute order fixes the state_dict order of the reference checkpoints.
        self.mask_head = mask_head
        self.mask_branch = mask_branch
        self.controller = nn.Conv2d(top_in_channels, mask_head.num_gen_params, kernel_size=3, stride=1, padding=1)
        nn.init.normal_(self.controller.weight, std=0.01)
        nn.init.constant_(self.controller.bias, 0)
        self.mask_out_stride = mask_out_stride
        self.max_proposals = max_proposals
        self.topk_proposals_per_im = topk_proposals_per_im
        self.boxinst_enabled = boxinst_enabled
        self.bottom_pixels_removed = bottom_pixels_removed
        self.pairwise_size = pairwise_size
        self.pairwise_dilation = pairwise_dilation
        self.input_format = input_format

    @classmethod
    def from_config(cls, cfg):
        args = super().from_config(cfg)
        shapes = args["backbone"].output_shape()
        condinst, box = cfg.MODEL.CONDINST, cfg.MODEL.BOXINST
        args.update({
            "mask_head": DynamicMaskHead(cfg),
            "mask_branch": MaskBranch(cfg, shapes),
            "top_in_channels": shapes[cfg.MODEL.FCOS.IN_FEATURES[0]].channels,
            "mask_out_stride": condinst.MASK_OUT_STRIDE,
            "max_proposals": condinst.MAX_PROPOSALS,
            "topk_proposals_per_im": condinst.TOPK_PROPOSALS_PER_IM,
            "boxinst_enabled": box.ENABLED,
            "bottom_pixels_removed": box.BOTTOM_PIXELS_REMOVED,
            "pairwise_size": box.PAIRWISE.SIZE,
            "pairwise_dilation": box.PAIRWISE.DILATION,
            "input_format": cfg.INPUT.FORMAT,
        })
        return args

    def forward(self, batched_inputs: List[Dict]):
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        gt_instances = None
        if self.training:
            gt_instances = self.gt_instances(batched_inputs)
            if gt_instances is None:
                raise ValueError("Training needs 'instances' in every input dict (use a mapper with is_train=True)")
            if self.boxinst_enabled:
                self.add_box_targets(gt_instances, batched_inputs)
            else:
                self.add_mask_targets(gt_instances, *images.tensor.shape[-2:])

        mask_feats, sem_losses = self.mask_branch(features, gt_instances)
        proposals, proposal_losses = self.proposal_generator(images, features, gt_instances, self.controller)
        if self.training:
            instances = self.sample_instances(proposals["instances"], len(gt_instances))
            instances.mask_head_params = instances.top_feats
            mask_losses = self.mask_head(mask_feats, self.mask_branch.out_stride, instances, gt_instances)
            return {**sem_losses, **proposal_losses, **mask_losses}
        return self.inference(proposals, mask_feats, batched_inputs, images)

    # -- training -----------------------------------------------------------------

    def sample_instances(self, instances: Instances, num_images: int) -> Instances:
        """Positive locations the mask loss uses: MAX_PROPOSALS drawn at random over the
        batch, or per image and ground truth the TOPK_PROPOSALS_PER_IM / (#gt) best scored."""
        if 0 <= self.max_proposals < len(instances):
            perm = torch.randperm(len(instances), device=instances.locations.device).long()
            return instances[perm[: self.max_proposals]]
        if self.topk_proposals_per_im == -1:
            return instances
        kept = []
        for im_id in range(num_images):
            per_im = instances[instances.im_inds == im_id]
            if len(per_im) == 0:
                kept.append(per_im)
                continue
            gt_inds = per_im.gt_inds.unique()
            per_gt_k = max(int(self.topk_proposals_per_im / len(gt_inds)), 1)
            for gt_ind in gt_inds:
                per_gt = per_im[per_im.gt_inds == gt_ind]
                if len(per_gt) > per_gt_k:
                    quality = per_gt.logits_pred.sigmoid().max(dim=1).values * per_gt.ctrness_pred.sigmoid()
                    per_gt = per_gt[quality.topk(k=per_gt_k, dim=0).indices]
                kept.append(per_gt)
        return Instances.cat(kept)

    def add_mask_targets(self, gt_instances: List[Instances], height: int, width: int):
        """gt_bitmasks_full (N, H, W) at the padded input size and gt_bitmasks sampled at
        the centres of MASK_OUT_STRIDE cells, from polygon or bitmask ground truth."""
        stride = self.mask_out_stride
        start = stride // 2
        for gt in gt_instances:
            if not gt.has("gt_masks"):
                continue
            masks = gt.gt_masks
            if isinstance(masks, PolygonMasks):
                full = [torch.from_numpy(polygons_to_bitmask(p, height, width)) for p in masks.polygons]
                full = torch.stack(full).to(self.device).float() if full else \
                    torch.zeros((0, height, width), device=self.device)
            else:
                bitmasks = masks.tensor
                h, w = bitmasks.shape[1:]
                full = F.pad(bitmasks, (0, width - w, 0, height - h), "constant", 0).float()
            gt.gt_bitmasks_full = full
            gt.gt_bitmasks = full[:, start::stride, start::stride]

    def add_box_targets(self, gt_instances: List[Instances], batched_inputs: List[Dict]):
        """BoxInst targets: box masks (gt_bitmasks_full, gt_bitmasks) and each image's LAB
        colour similarity at MASK_OUT_STRIDE (image_color_similarity, one copy per box)."""
        stride = self.mask_out_stride
        start = stride // 2
        raw = [x["image"].to(self.device) for x in batched_inputs]
        valid = [torch.ones_like(x[0], dtype=torch.float32) for x in raw]
        for mask, inputs, image in zip(valid, batched_inputs, raw):
            # The bottom rows of COCO images often carry wrong annotations: ignore them.
            original_height = float(inputs.get("height", image.shape[1]))
            removed = int(self.bottom_pixels_removed * float(image.shape[1]) / original_height)
            if removed > 0:
                mask[-removed:, :] = 0
        raw = ImageList.from_tensors(raw, self.backbone.size_divisibility).tensor
        valid = ImageList.from_tensors(valid, self.backbone.size_divisibility, pad_value=0.0).tensor
        height, width = raw.shape[-2:]
        if height % stride or width % stride:
            raise ValueError(f"padded image size {height}x{width} not divisible by MASK_OUT_STRIDE {stride}")
        small = F.avg_pool2d(raw.float(), kernel_size=stride, stride=stride)
        if self.input_format == "BGR":
            small = small[:, [2, 1, 0]]
        valid = valid[:, start::stride, start::stride]
        for image, mask, gt in zip(small, valid, gt_instances):
            lab = boxinst.rgb_to_lab(image.byte())[None]
            similarity = boxinst.image_color_similarity(lab, mask, self.pairwise_size, self.pairwise_dilation)
            full = boxinst.box_bitmasks(gt.gt_boxes.tensor, height, width)
            gt.gt_bitmasks_full = full
            gt.gt_bitmasks = full[:, start::stride, start::stride]
            gt.image_color_similarity = similarity.expand(len(gt), -1, -1, -1)

    # -- inference ----------------------------------------------------------------

    def inference(self, proposals: List[Instances], mask_feats, batched_inputs, images: ImageList):
        # One batch for the mask head; images may differ in size, so the batch gets none.
        batch = []
        for im_id, per_im in enumerate(proposals):
            per_im = Instances((0, 0), **per_im.get_fields())
            per_im.im_inds = torch.full((len(per_im),), im_id, dtype=torch.long, device=per_im.scores.device)
            batch.append(per_im)
        instances = Instances.cat(batch)
        instances.mask_head_params = instances.top_feat
        instances = self.mask_head(mask_feats, self.mask_branch.out_stride, instances)
        padded_size = images.tensor.shape[-2:]
        results = []
        for im_id, (inputs, size) in enumerate(zip(batched_inputs, images.image_sizes)):
            per_im = instances[instances.im_inds == im_id]
            per_im = Instances(size, **per_im.get_fields())
            height, width = inputs.get("height", size[0]), inputs.get("width", size[1])
            results.append({"instances": self.paste_masks(per_im, height, width, padded_size)})
        return results

    @staticmethod
    def paste_masks(instances: Instances, height: int, width: int, padded_size, threshold: float = 0.5) -> Instances:
        """Rescale boxes to (height, width) (dropping empty ones) and turn the stride-r mask
        probabilities of the padded input into bool `pred_masks` at (height, width)."""
        input_h, input_w = instances.image_size
        has_masks = instances.has("pred_global_masks")
        instances = detector_postprocess(instances, height, width)
        if not has_masks or len(instances) == 0:
            instances.pred_masks = torch.zeros((len(instances), height, width), dtype=torch.bool,
                                               device=instances.scores.device)
            if instances.has("pred_global_masks"):
                instances.remove("pred_global_masks")
            return instances
        masks = instances.pred_global_masks
        factor_h, factor_w = padded_size[0] // masks.shape[-2], padded_size[1] // masks.shape[-1]
        if factor_h != factor_w:
            raise ValueError(f"masks {tuple(masks.shape[-2:])} do not divide the padded input {tuple(padded_size)}")
        masks = aligned_bilinear(masks, factor_h)[:, :, :input_h, :input_w]
        masks = F.interpolate(masks, size=(height, width), mode="bilinear", align_corners=False)
        instances.pred_masks = masks[:, 0] > threshold
        instances.remove("pred_global_masks")
        return instances

"""BlendMask (Chen et al., CVPR 2020): FCOS boxes + per-instance attentions (top) blended
with image-level bases (bottom)."""
from typing import Dict, List

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_sem_seg_head
from detectron2.modeling.meta_arch.panoptic_fpn import combine_semantic_and_instance_outputs
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList

from ..one_stage_detector import OneStageDetector
from .basis_module import build_basis_module
from .blender import Blender


@META_ARCH_REGISTRY.register()
class BlendMask(OneStageDetector):
    """OneStageDetector with FCOS as proposal generator, whose head also predicts through
    `top_layer` K x ATTN_SIZE x ATTN_SIZE attentions per location; a basis module (bottom)
    predicts K bases; the blender turns each box's bases crop and attentions into a mask.
    With MODEL.PANOPTIC_FPN.COMBINE.ENABLED, a semantic FPN head adds stuff and the
    outputs are combined into a panoptic segmentation.
    """

    @configurable
    def __init__(self, *, backbone, proposal_generator, basis_module: nn.Module, blender: Blender,
                 top_layer: nn.Module, pixel_mean, pixel_std, instance_loss_weight: float = 1.0,
                 panoptic_module=None, combine_overlap_threshold: float = 0.5,
                 combine_stuff_area_limit: int = 4096, combine_instances_confidence_threshold: float = 0.5):
        super().__init__(backbone=backbone, proposal_generator=proposal_generator,
                         pixel_mean=pixel_mean, pixel_std=pixel_std)
        # Attribute order fixes the state_dict order of the reference checkpoints.
        self.blender = blender
        self.basis_module = basis_module
        self.combine_on = panoptic_module is not None
        if self.combine_on:
            self.panoptic_module = panoptic_module
        self.combine_overlap_threshold = combine_overlap_threshold
        self.combine_stuff_area_limit = combine_stuff_area_limit
        self.combine_instances_confidence_threshold = combine_instances_confidence_threshold
        self.top_layer = top_layer
        self.instance_loss_weight = instance_loss_weight

    @classmethod
    def from_config(cls, cfg):
        args = super().from_config(cfg)  # backbone, FCOS, pixel mean / std
        shapes = args["backbone"].output_shape()
        num_bases = cfg.MODEL.BASIS_MODULE.NUM_BASES
        attn_size = cfg.MODEL.BLENDMASK.ATTN_SIZE
        top_layer = nn.Conv2d(cfg.MODEL.FPN.OUT_CHANNELS, num_bases * attn_size * attn_size, 3, padding=1)
        nn.init.normal_(top_layer.weight, std=0.01)
        nn.init.constant_(top_layer.bias, 0)
        combine = cfg.MODEL.PANOPTIC_FPN.COMBINE
        args.update({
            "basis_module": build_basis_module(cfg, shapes),
            "blender": Blender(cfg),
            "top_layer": top_layer,
            "instance_loss_weight": cfg.MODEL.BLENDMASK.INSTANCE_LOSS_WEIGHT,
            "panoptic_module": build_sem_seg_head(cfg, shapes) if combine.ENABLED else None,
            "combine_overlap_threshold": combine.OVERLAP_THRESH,
            "combine_stuff_area_limit": combine.STUFF_AREA_LIMIT,
            "combine_instances_confidence_threshold": combine.INSTANCES_CONFIDENCE_THRESH,
        })
        return args

    def _padded_targets(self, batched_inputs: List[Dict], key: str, pad_value: int):
        if key not in batched_inputs[0]:
            return None
        maps = [x[key].to(self.device) for x in batched_inputs]
        return ImageList.from_tensors(maps, self.backbone.size_divisibility, pad_value).tensor

    def _semantic(self, batched_inputs: List[Dict], features: Dict[str, torch.Tensor]):
        """The panoptic module's stuff logits (inference) or its loss against the padded
        "sem_seg" targets (training: 0 = things, 1.. = stuff, ignore value elsewhere)."""
        gt_sem = None
        if self.training:
            gt_sem = self._padded_targets(batched_inputs, "sem_seg", self.panoptic_module.ignore_value)
            if gt_sem is None:
                raise ValueError("MODEL.PANOPTIC_FPN.COMBINE.ENABLED needs 'sem_seg' in every training "
                                 "input: train on a panoptic 'separated' data set (sem_seg_file_name)")
        return self.panoptic_module(features, gt_sem)

    def forward(self, batched_inputs: List[Dict]):
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        losses = {}
        sem_seg_results = None
        if self.combine_on:
            sem_seg_results, sem_seg_losses = self._semantic(batched_inputs, features)
            losses.update(sem_seg_losses)

        basis_sem = self._padded_targets(batched_inputs, "basis_sem", 0) if self.training else None
        basis_out, basis_losses = self.basis_module(features, basis_sem)
        bases = basis_out["bases"]

        if self.training:
            gt_instances = self.gt_instances(batched_inputs)
            if gt_instances is None:
                raise ValueError("Training needs 'instances' in every input dict (use a mapper with is_train=True)")
            proposals, proposal_losses = self.proposal_generator(images, features, gt_instances, self.top_layer)
            mask_losses = self.blender.loss(bases, proposals["instances"], gt_instances)
            losses.update(basis_losses)
            losses.update({k: v * self.instance_loss_weight for k, v in mask_losses.items()})
            losses.update(proposal_losses)
            return losses

        detections, _ = self.proposal_generator(images, features, None, self.top_layer)
        detections = self.blender.predict(bases, detections)
        results = self.postprocess(detections, batched_inputs, images.image_sizes)
        if self.combine_on:
            self._add_panoptic(results, sem_seg_results, batched_inputs, images.image_sizes)
        return results

    def _add_panoptic(self, results: List[Dict], sem_seg_results: torch.Tensor,
                      batched_inputs: List[Dict], image_sizes) -> None:
        """Add "sem_seg" (stuff logits at the output size) and "panoptic_seg" (Detectron2's
        `combine_semantic_and_instance_outputs` of the instances and the stuff argmax:
        ``(segment ids, segments_info)``) to each image's result, as PanopticFPN does."""
        for i, (result, inputs, size) in enumerate(zip(results, batched_inputs, image_sizes)):
            height, width = inputs.get("height", size[0]), inputs.get("width", size[1])
            sem_seg = sem_seg_postprocess(sem_seg_results[i], size, height, width)
            result["sem_seg"] = sem_seg
            result["panoptic_seg"] = combine_semantic_and_instance_outputs(
                result["instances"], sem_seg.argmax(dim=0), self.combine_overlap_threshold,
                self.combine_stuff_area_limit, self.combine_instances_confidence_threshold)

"""The meta-architecture code every SOLO variant shares: preprocessing, backbone, the
instance-feature rescaling, targets, losses and inference. A variant defines only its mask
part (see :class:`SOLOBase`)."""
from functools import partial
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.structures import ImageList, Instances

from ..one_stage_detector import normalize_and_pad
from .inference import NMS_TYPES, CellProbs, cell_strides, inference_single_image, point_nms
from .loss import solo_losses
from .targets import image_targets


def _tensors(x) -> List[torch.Tensor]:
    """The tensors of a nest of lists and tuples."""
    if isinstance(x, torch.Tensor):
        return [x]
    return [t for item in x for t in _tensors(item)]


class SOLOBase(nn.Module):
    """Backbone (FPN) -> instance head on INSTANCE_IN_FEATURES (category grids + the
    variant's mask part) -> losses (training) or [{"instances": Instances}] (inference) with
    `pred_masks` at each input's "height" x "width".

    Subclasses implement the mask part:
      - ``predict(features) -> (category logits per level, mask predictions)``;
      - ``mask_layout(mask_preds) -> (per-level (H, W), per-level stride)`` of their masks;
      - ``level_mask_probs(mask_preds, image, level, cells)`` -> (n, H, W) probabilities;
      - ``cell_probs(mask_preds, image) -> callable(global cells) -> (n, H0, W0)``, all at
        level 0's resolution (1/4 of the input).
    """

    def __init__(self, *, backbone: nn.Module, ins_head: nn.Module, instance_in_features: List[str], pixel_mean,
                 pixel_std, num_classes: int, num_grids: List[int], instance_strides: List[int], scale_ranges,
                 sigma: float, focal_alpha: float, focal_gamma: float, focal_weight: float, dice_weight: float,
                 score_thr: float, mask_thr: float, update_thr: float, nms_pre: int, max_per_img: int,
                 nms_type: str, nms_kernel: str, nms_sigma: float, nms_iou: float = 0.5):
        super().__init__()
        self.backbone = backbone
        self.ins_head = ins_head
        self.instance_in_features = instance_in_features
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.num_classes = num_classes
        self.num_grids = list(num_grids)
        self.instance_strides = list(instance_strides)
        self.scale_ranges = [tuple(r) for r in scale_ranges]
        self.sigma = sigma
        self.loss_params = dict(focal_alpha=focal_alpha, focal_gamma=focal_gamma, focal_weight=focal_weight,
                                dice_weight=dice_weight)
        if nms_type not in NMS_TYPES:
            raise ValueError(f"MODEL.SOLOV2.NMS_TYPE must be one of {NMS_TYPES}, got {nms_type!r}")
        self.test_params = dict(score_thr=score_thr, mask_thr=mask_thr, update_thr=update_thr, nms_pre=nms_pre,
                                max_per_img=max_per_img, nms_type=nms_type, nms_kernel=nms_kernel,
                                nms_sigma=nms_sigma, nms_iou=nms_iou)

    @staticmethod
    def base_config(cfg) -> Dict:
        """The constructor arguments every variant reads from MODEL.SOLOV2 / MODEL.SOLO."""
        solo = cfg.MODEL.SOLOV2
        return {
            "instance_in_features": solo.INSTANCE_IN_FEATURES,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN, "pixel_std": cfg.MODEL.PIXEL_STD,
            "num_classes": solo.NUM_CLASSES, "num_grids": solo.NUM_GRIDS,
            "instance_strides": solo.FPN_INSTANCE_STRIDES, "scale_ranges": solo.FPN_SCALE_RANGES,
            "sigma": solo.SIGMA, "focal_alpha": solo.LOSS.FOCAL_ALPHA, "focal_gamma": solo.LOSS.FOCAL_GAMMA,
            "focal_weight": solo.LOSS.FOCAL_WEIGHT, "dice_weight": solo.LOSS.DICE_WEIGHT,
            "score_thr": solo.SCORE_THR, "mask_thr": solo.MASK_THR, "update_thr": solo.UPDATE_THR,
            "nms_pre": solo.NMS_PRE, "max_per_img": solo.MAX_PER_IMG, "nms_type": solo.NMS_TYPE,
            "nms_kernel": solo.NMS_KERNEL, "nms_sigma": solo.NMS_SIGMA, "nms_iou": cfg.MODEL.SOLO.NMS_IOU_THR,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        return normalize_and_pad(batched_inputs, self.pixel_mean, self.pixel_std, self.backbone.size_divisibility)

    @staticmethod
    def rescale_instance_features(features: List[torch.Tensor]) -> List[torch.Tensor]:
        """The reference's level scaling: the finest level is halved, the coarsest is resized
        to the size of the one before it (P2 -> 1/8, P6 -> 1/32 with strides 8,8,16,32,32)."""
        features = list(features)
        features[0] = F.interpolate(features[0], scale_factor=0.5, mode="bilinear", align_corners=False)
        features[-1] = F.interpolate(features[-1], size=features[-2].shape[-2:], mode="bilinear",
                                     align_corners=False)
        return features

    def instance_features(self, features: Dict[str, torch.Tensor]) -> List[torch.Tensor]:
        return self.rescale_instance_features([features[f] for f in self.instance_in_features])

    def forward(self, batched_inputs: List[Dict]):
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        cate_preds, mask_preds = self.predict(features)

        if self.training:
            if "instances" not in batched_inputs[0]:
                raise ValueError("Training needs 'instances' (with gt_masks) in every input dict")
            gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
            targets = self.targets(gt_instances, *self.mask_layout(mask_preds))
            return solo_losses(cate_preds, partial(self.level_mask_probs, mask_preds), _tensors(mask_preds), targets,
                               self.num_classes, **self.loss_params)
        return self.inference(cate_preds, mask_preds, images.image_sizes, batched_inputs)

    @torch.no_grad()
    def targets(self, gt_instances: List[Instances], mask_shapes: Sequence[Tuple[int, int]],
                mask_strides: Sequence[int]):
        return [image_targets(inst, mask_shapes, mask_strides, self.num_classes, self.scale_ranges, self.num_grids,
                              self.sigma) for inst in gt_instances]

    def inference(self, cate_preds, mask_preds, image_sizes, batched_inputs) -> List[Dict]:
        cate_scores = [point_nms(p.sigmoid()).permute(0, 2, 3, 1) for p in cate_preds]
        strides = cell_strides(self.num_grids, self.instance_strides, self.device)
        mask_size = tuple(self.mask_layout(mask_preds)[0][0])
        results = []
        for i, (inputs, size) in enumerate(zip(batched_inputs, image_sizes)):
            out_size = (inputs.get("height", size[0]), inputs.get("width", size[1]))
            scores = torch.cat([s[i].reshape(-1, self.num_classes) for s in cate_scores])
            instances = inference_single_image(scores.detach(), self.cell_probs(mask_preds, i), strides, mask_size,
                                               tuple(size), out_size, **self.test_params)
            results.append({"instances": instances})
        return results

    # The mask part, defined by each variant.
    def predict(self, features: Dict[str, torch.Tensor]):
        raise NotImplementedError

    def mask_layout(self, mask_preds) -> Tuple[List[Tuple[int, int]], List[int]]:
        raise NotImplementedError

    def level_mask_probs(self, mask_preds, image: int, level: int, cells: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def cell_probs(self, mask_preds, image: int) -> CellProbs:
        raise NotImplementedError

"""SparseInst meta-architecture: backbone -> instance context encoder -> IAM decoder;
Hungarian-matched losses in training, NMS-free thresholding in inference."""
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.structures import BitMasks, Boxes, ImageList, Instances, PolygonMasks

from adet.layers import masks_to_boxes

from ..one_stage_detector import normalize_and_pad
from .criterion import build_sparse_inst_criterion
from .decoder import build_sparse_inst_decoder
from .encoder import build_sparse_inst_encoder

SIZE_DIVISIBILITY = 32


def build_sparse_inst_backbone(cfg) -> Backbone:
    """MODEL.BACKBONE.NAME's backbone; Detectron2's ResNet with deformable stages
    (the DCN configs) is built with adet's deformable convolution, same parameter names."""
    if cfg.MODEL.BACKBONE.NAME == "build_resnet_backbone" and any(cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE):
        from adet.modeling.backbone.resnet_deform import build_resnet_deform_backbone

        return build_resnet_deform_backbone(cfg, ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN)))
    return build_backbone(cfg)


def rescore(scores: torch.Tensor, probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """Multiply each score by its mask's "maskness": the mean probability inside the
    binarised mask (probability > ``threshold``)."""
    binary = (probs > threshold).float()
    return scores * ((probs * binary).sum((1, 2)) / (binary.sum((1, 2)) + 1e-6))


@META_ARCH_REGISTRY.register()
class SparseInst(nn.Module):
    """Input: Detectron2's list of dicts ("image": CHW in INPUT.FORMAT (RGB), optional
    "height"/"width", "instances" with gt_classes and gt_masks in training). Output:
    training -> loss dict; inference -> [{"instances": Instances}] at the output size with
    pred_masks, scores, pred_classes and pred_boxes (boxes of the masks)."""

    @configurable
    def __init__(self, *, backbone: Backbone, encoder: nn.Module, decoder: nn.Module, criterion: nn.Module,
                 pixel_mean: Sequence[float], pixel_std: Sequence[float], cls_threshold: float = 0.005,
                 mask_threshold: float = 0.45):
        super().__init__()
        self.backbone = backbone
        self.encoder = encoder
        self.decoder = decoder
        self.criterion = criterion
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.cls_threshold = cls_threshold
        self.mask_threshold = mask_threshold

    @classmethod
    def from_config(cls, cfg):
        backbone = build_sparse_inst_backbone(cfg)
        return {
            "backbone": backbone,
            "encoder": build_sparse_inst_encoder(cfg, backbone.output_shape()),
            "decoder": build_sparse_inst_decoder(cfg),
            "criterion": build_sparse_inst_criterion(cfg),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "cls_threshold": cfg.MODEL.SPARSE_INST.CLS_THRESHOLD,
            "mask_threshold": cfg.MODEL.SPARSE_INST.MASK_THRESHOLD,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        return normalize_and_pad(batched_inputs, self.pixel_mean, self.pixel_std, SIZE_DIVISIBILITY)

    def forward(self, batched_inputs: List[Dict]):
        images = self.preprocess_image(batched_inputs)
        padded_size = tuple(images.tensor.shape[-2:])
        outputs = self.decoder(self.encoder(self.backbone(images.tensor)))
        if self.training:
            targets = [self.prepare_target(x["instances"].to(self.device)) for x in batched_inputs]
            return self.criterion(outputs, targets, padded_size)
        output_sizes = [(x.get("height", h), x.get("width", w))
                        for x, (h, w) in zip(batched_inputs, images.image_sizes)]
        results = self.inference(outputs, padded_size, images.image_sizes, output_sizes)
        return [{"instances": r} for r in results]

    @staticmethod
    def prepare_target(instances: Instances) -> Dict[str, torch.Tensor]:
        """{"labels": (K,), "masks": (K, H, W) bool} of one image's ground truth."""
        h, w = instances.image_size
        masks = instances.get("gt_masks") if instances.has("gt_masks") else None
        if isinstance(masks, PolygonMasks):
            masks = BitMasks.from_polygon_masks(masks.polygons, h, w) if len(masks) else None
        tensor = masks.tensor if masks is not None else torch.zeros(0, h, w, dtype=torch.bool)
        return {"labels": instances.gt_classes, "masks": tensor.to(instances.gt_classes.device)}

    def inference(self, outputs: Dict[str, torch.Tensor], padded_size, image_sizes, output_sizes) -> List[Instances]:
        """Score = sqrt(class probability x objectness), max over classes, kept above
        ``cls_threshold``, rescored by maskness; masks upsampled to the padded input,
        cropped to the image, resized to the output size and binarised."""
        probs = outputs["pred_logits"].sigmoid()
        objectness = outputs["pred_scores"].sigmoid()
        scores, classes = torch.sqrt(probs * objectness).max(dim=-1)
        mask_probs = outputs["pred_masks"].sigmoid()
        results = []
        for score, cls, masks, (h, w), out_size in zip(scores, classes, mask_probs, image_sizes, output_sizes):
            keep = score > self.cls_threshold
            score, cls, masks = score[keep], cls[keep], masks[keep]
            score = rescore(score, masks, self.mask_threshold)
            masks = F.interpolate(masks[:, None], size=padded_size, mode="bilinear", align_corners=False)
            masks = masks[:, :, :h, :w]
            masks = F.interpolate(masks, size=tuple(out_size), mode="bilinear", align_corners=False)[:, 0]
            result = Instances(tuple(out_size))
            result.pred_masks = masks > self.mask_threshold
            result.scores = score
            result.pred_classes = cls
            result.pred_boxes = masks_to_boxes(result.pred_masks)
            results.append(result)
        return results

"""The meta-architecture FCOS-based models share: backbone -> dense head -> Instances."""
import logging
from typing import Dict, List, Optional

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone, build_proposal_generator
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import ImageList, Instances

logger = logging.getLogger(__name__)


def normalize_and_pad(batched_inputs: List[Dict], pixel_mean, pixel_std, size_divisibility: int) -> ImageList:
    """Normalise each input's "image" with the pixel mean / std (on their device) and pad
    the batch to a multiple of `size_divisibility`: the preprocessing every adet model shares."""
    images = [(x["image"].to(pixel_mean.device) - pixel_mean) / pixel_std for x in batched_inputs]
    return ImageList.from_tensors(images, size_divisibility)


@META_ARCH_REGISTRY.register()
class OneStageDetector(nn.Module):
    """A backbone and a dense one-stage head registered as a proposal generator
    (MODEL.PROPOSAL_GENERATOR.NAME, e.g. "FCOS").

    Input: Detectron2's list of dicts ("image": CHW tensor in INPUT.FORMAT, optional
    "height"/"width" of the output, "instances" in training). Output: training -> loss
    dict; inference -> [{"instances": Instances}] at the requested output size.
    Subclasses (BlendMask, CondInst) reuse `preprocess_image`, `gt_instances` and
    `postprocess` and add their mask branches.
    """

    @configurable
    def __init__(self, *, backbone: Backbone, proposal_generator: nn.Module,
                 pixel_mean: List[float], pixel_std: List[float]):
        super().__init__()
        self.backbone = backbone
        self.proposal_generator = proposal_generator
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        return {
            "backbone": backbone,
            "proposal_generator": build_proposal_generator(cfg, backbone.output_shape()),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        """Normalise and pad the images to a batch the backbone can divide."""
        return normalize_and_pad(batched_inputs, self.pixel_mean, self.pixel_std, self.backbone.size_divisibility)

    def gt_instances(self, batched_inputs: List[Dict]) -> Optional[List[Instances]]:
        if "instances" not in batched_inputs[0]:
            return None
        return [x["instances"].to(self.device) for x in batched_inputs]

    def forward(self, batched_inputs: List[Dict]):
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        if self.training:
            gt_instances = self.gt_instances(batched_inputs)
            if gt_instances is None:
                raise ValueError("Training needs 'instances' in every input dict (use a mapper with is_train=True)")
            _, losses = self.proposal_generator(images, features, gt_instances)
            return losses
        proposals, _ = self.proposal_generator(images, features, None)
        return self.postprocess(proposals, batched_inputs, images.image_sizes)

    @staticmethod
    def postprocess(results: List[Instances], batched_inputs: List[Dict], image_sizes) -> List[Dict]:
        """Rescale detections to each input's "height"/"width" (default: its input size)."""
        processed = []
        for result, inputs, size in zip(results, batched_inputs, image_sizes):
            height = inputs.get("height", size[0])
            width = inputs.get("width", size[1])
            processed.append({"instances": detector_postprocess(result, height, width)})
        return processed

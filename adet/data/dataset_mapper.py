"""Dataset mapper: Detectron2's `DatasetMapper` plus robustness and an extension point.

* An unreadable training image (corrupt bytes, missing file, truncated JPEG) is logged
  with a warning naming the file and skipped: ``__call__`` returns None and Detectron2's
  `MapDataset` retries with another index. At test time it raises instead, because an
  evaluation that silently drops or duplicates images would be wrong.
* Crowd annotations, images without annotations and degenerate boxes (zero width or
  height) are handled by Detectron2: crowd boxes are dropped, empty boxes are removed by
  `filter_empty_instances`, and ``DATALOADER.FILTER_EMPTY_ANNOTATIONS`` decides whether
  images without instances are used.
* Methods that need more per-image targets (semantic maps for BlendMask's basis
  module, for example) subclass the mapper and override `add_extra_targets`.
"""
import copy
import logging
import random

import numpy as np
import torch
from detectron2.data import DatasetMapper as _D2DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.config import configurable
from detectron2.data.common import MapDataset

from .blendmask_targets import basis_sem_target

__all__ = ["DatasetMapper"]

logger = logging.getLogger(__name__)


class _SetSafeRandom(random.Random):
    """`random.Random` whose ``sample`` also accepts a set (sorted first, deterministic)."""

    def sample(self, population, k, **kwargs):
        if isinstance(population, (set, frozenset)):
            population = sorted(population)
        return super().sample(population, k, **kwargs)


def _map_dataset_retry_works() -> bool:
    probe = MapDataset([0, 1], lambda i: None if i == 0 else i)
    try:
        return probe[0] == 1
    except TypeError:
        return False


def _fix_map_dataset_retry() -> None:
    """Make Detectron2's `MapDataset` retry work on Python >= 3.11.

    When the mapper returns None, Detectron2 v0.6 picks another index with
    ``random.sample(a_set, k=1)``, a TypeError since Python 3.11, so a single unreadable
    image stopped training. Installed only where the probe fails; a fixed Detectron2
    is left alone.
    """
    if _map_dataset_retry_works():
        return
    init = MapDataset.__init__

    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self._rng = _SetSafeRandom(42)

    MapDataset.__init__ = __init__
    logger.debug("Patched detectron2.data.common.MapDataset to retry on Python >= 3.11")


_fix_map_dataset_retry()


class DatasetMapper(_D2DatasetMapper):
    """Same as Detectron2's `DatasetMapper` (same ``@configurable`` arguments); see module doc.

    ``basis_sem_on`` (from the config: BlendMask with MODEL.BASIS_MODULE.LOSS_ON and
    ANN_SET "coco", training only) adds ``dataset_dict["basis_sem"]``, the thing semantic
    map of `adet.data.blendmask_targets.basis_sem_target`.
    """

    @configurable
    def __init__(self, is_train: bool, *, basis_sem_on: bool = False, **kwargs):
        super().__init__(is_train, **kwargs)
        self.basis_sem_on = basis_sem_on

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        ret = super().from_config(cfg, is_train)
        basis = cfg.MODEL.BASIS_MODULE
        ret["basis_sem_on"] = bool(is_train and cfg.MODEL.META_ARCHITECTURE == "BlendMask"
                                   and basis.LOSS_ON and basis.ANN_SET == "coco")
        return ret

    def read_image(self, dataset_dict):
        """Read the image of ``dataset_dict`` in ``self.image_format``; None if unreadable."""
        file_name = dataset_dict["file_name"]
        try:
            image = utils.read_image(file_name, format=self.image_format)
        except (OSError, ValueError, SyntaxError) as e:  # PIL raises all three on bad files
            if not self.is_train:
                raise OSError(f"Cannot read test image '{file_name}': {e}") from e
            logger.warning(f"Skipping unreadable image '{file_name}': {type(e).__name__}: {e}")
            return None
        utils.check_image_size(dataset_dict, image)
        return image

    def add_extra_targets(self, dataset_dict, image, transforms):
        """Hook for subclasses: add method-specific targets to ``dataset_dict``.

        Called for training and test images after the image and the annotations have been
        transformed. ``image`` is the transformed HxWxC numpy image, ``transforms`` the
        `TransformList` that produced it (apply it to any extra maps read from disk).
        ``dataset_dict["instances"]`` holds the filtered ground truth when training.
        """

    def __call__(self, dataset_dict):
        dataset_dict = copy.deepcopy(dataset_dict)
        image = self.read_image(dataset_dict)
        if image is None:
            return None

        original_hw = image.shape[:2]
        sem_seg_gt = None
        if "sem_seg_file_name" in dataset_dict:
            sem_seg_gt = utils.read_image(dataset_dict.pop("sem_seg_file_name"), "L").squeeze(2)
        aug_input = T.AugInput(image, sem_seg=sem_seg_gt)
        transforms = self.augmentations(aug_input)
        image, sem_seg_gt = aug_input.image, aug_input.sem_seg
        image_shape = image.shape[:2]

        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if sem_seg_gt is not None:
            dataset_dict["sem_seg"] = torch.as_tensor(sem_seg_gt.astype("long"))
        if self.proposal_topk is not None:
            utils.transform_proposals(
                dataset_dict, image_shape, transforms, proposal_topk=self.proposal_topk
            )

        if self.basis_sem_on and "annotations" in dataset_dict:
            # from every annotation (crowd included) at the original size, before the
            # annotations are transformed in place and crowd ones dropped
            dataset_dict["basis_sem"] = basis_sem_target(dataset_dict["annotations"], *original_hw, transforms)
        if not self.is_train:
            dataset_dict.pop("annotations", None)
        elif "annotations" in dataset_dict:
            # crowd boxes dropped, boxes/masks transformed, empty boxes filtered
            self._transform_annotations(dataset_dict, transforms, image_shape)
        self.add_extra_targets(dataset_dict, image, transforms)
        return dataset_dict

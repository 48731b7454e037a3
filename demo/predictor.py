"""Inference and drawing for the demo: Detectron2's DefaultPredictor and Visualizer."""
import logging
from typing import Iterator, Optional

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model
from detectron2.utils.video_visualizer import VideoVisualizer
from detectron2.utils.visualizer import ColorMode, Visualizer

import adet.modeling  # noqa: F401  (registers the architectures)
from adet.checkpoint import AdetCheckpointer

__all__ = ["Predictor", "dataset_metadata", "keep_confident", "check_classes", "draw", "draw_video"]

logger = logging.getLogger("adet.demo")


class Predictor(DefaultPredictor):
    """Detectron2's `DefaultPredictor` (a BGR image in, the model's outputs at the image's
    size out) whose weights are loaded by `AdetCheckpointer`: local paths, http(s) URLs
    (downloaded once into the cache), ``detectron2://``, safe unpickling."""

    def __init__(self, cfg):  # the attributes DefaultPredictor.__call__ uses
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg).eval()
        if not cfg.MODEL.WEIGHTS:
            logger.warning("MODEL.WEIGHTS is empty: drawing the predictions of a randomly initialised model")
        AdetCheckpointer(self.model).load(cfg.MODEL.WEIGHTS)
        self.aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
        self.input_format = cfg.INPUT.FORMAT


def dataset_metadata(name: str):
    """``MetadataCatalog.get(name)``, with ``thing_classes`` filled in from the data set's
    own annotations when its registration does not give them (custom COCO json sets get
    them when first loaded)."""
    metadata = MetadataCatalog.get(name)
    if not metadata.get("thing_classes") and name in DatasetCatalog.list():
        DatasetCatalog.get(name)  # Detectron2's COCO loader sets thing_classes from the json
    if not metadata.get("thing_classes"):
        raise ValueError(f"Data set {name!r} has no class names (thing_classes); register it with "
                         f"--register-coco NAME JSON IMAGE_ROOT or pick another with --dataset.")
    return metadata


def keep_confident(outputs: dict, threshold: float):
    """The predicted `Instances` with a score of at least ``threshold``, on the CPU."""
    instances = outputs["instances"].to("cpu")
    return instances[instances.scores >= threshold]


def _rgb(image: np.ndarray, input_format: str = "BGR") -> np.ndarray:
    return image[:, :, ::-1] if input_format == "BGR" else image


def check_classes(instances, metadata) -> None:
    """A clear error when the model predicts a class the data set has no name for."""
    names = metadata.get("thing_classes", [])
    if len(instances) and int(instances.pred_classes.max()) >= len(names):
        raise ValueError(
            f"The model predicts class {int(instances.pred_classes.max())} but data set "
            f"{metadata.name!r} names {len(names)} classes: pick the data set the model was trained "
            f"on with --dataset (--register-coco for a custom one)."
        )


def draw(image_bgr: np.ndarray, instances, metadata) -> np.ndarray:
    """``instances`` drawn on the image by Detectron2's Visualizer; an RGB array."""
    check_classes(instances, metadata)
    visualizer = Visualizer(_rgb(image_bgr), metadata, instance_mode=ColorMode.IMAGE)
    return visualizer.draw_instance_predictions(instances).get_image()


def draw_video(predictor: Predictor, frames: Iterator[np.ndarray], metadata, threshold: float,
               visualizer: Optional[VideoVisualizer] = None) -> Iterator[np.ndarray]:
    """Predictions on each BGR frame, drawn with Detectron2's VideoVisualizer (colours kept
    per tracked instance); yields BGR frames."""
    visualizer = visualizer or VideoVisualizer(metadata, ColorMode.IMAGE)
    for frame in frames:
        instances = keep_confident(predictor(frame), threshold)
        check_classes(instances, metadata)
        drawn = visualizer.draw_instance_predictions(_rgb(frame), instances).get_image()
        yield np.ascontiguousarray(drawn[:, :, ::-1])

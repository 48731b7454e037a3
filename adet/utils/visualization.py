"""Pictures of a model's predictions, drawn with Detectron2's Visualizer."""
import logging
import os
from typing import List

import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import detection_utils
from detectron2.data import transforms as T
from detectron2.utils.visualizer import Visualizer

logger = logging.getLogger(__name__)


def save_prediction_pictures(cfg, model, dataset_name: str, output_dir: str, num_images: int = 4,
                             score_threshold: float = 0.4, min_side: int = 480) -> List[str]:
    """Run `model` on the first `num_images` images of `dataset_name` and save each image
    with its detections (score >= `score_threshold`) as JPEG in `output_dir`, enlarged
    to at least `min_side` pixels so that labels stay legible on small images.
    Returns the written paths."""
    if num_images <= 0:
        return []
    os.makedirs(output_dir, exist_ok=True)
    metadata = MetadataCatalog.get(dataset_name)
    resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    was_training = model.training
    model.eval()
    paths = []
    try:
        for record in DatasetCatalog.get(dataset_name)[:num_images]:
            image = detection_utils.read_image(record["file_name"], format=cfg.INPUT.FORMAT)
            height, width = image.shape[:2]
            resized = resize.get_transform(image).apply_image(image)
            tensor = torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))
            with torch.no_grad():
                instances = model([{"image": tensor, "height": height, "width": width}])[0]["instances"]
            instances = instances[instances.scores >= score_threshold].to("cpu")
            rgb = detection_utils.convert_image_to_rgb(image, cfg.INPUT.FORMAT)
            scale = max(1.0, min_side / min(height, width))
            drawn = Visualizer(rgb, metadata, scale=scale).draw_instance_predictions(instances)
            path = os.path.join(output_dir, os.path.splitext(os.path.basename(record["file_name"]))[0] + ".jpg")
            drawn.save(path)
            paths.append(path)
    finally:
        model.train(was_training)
    logger.info("Saved %d prediction pictures to %s", len(paths), output_dir)
    return paths

"""Evaluation helpers that Detectron2's evaluators lack."""
from .coco_results import COCOResultsWriter

__all__ = ["COCOResultsWriter"]

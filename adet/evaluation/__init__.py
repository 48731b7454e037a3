"""Evaluation helpers that Detectron2's evaluators lack."""
from .coco_results import COCOResultsWriter
from .panoptic_quality import COCOPanopticPQEvaluator, PQStat, pq_stat_for_image

__all__ = ["COCOResultsWriter", "COCOPanopticPQEvaluator", "PQStat", "pq_stat_for_image"]

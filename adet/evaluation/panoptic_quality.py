"""Panoptic quality (PQ, Kirillov et al., "Panoptic Segmentation", CVPR 2019) and an
evaluator for COCO-panoptic-format data, with no dependency on ``panopticapi``.

Definitions (per category c, over the whole data set):

* A predicted and a ground-truth segment of the same category *match* when their IoU is
  > 0.5 (matches are then unique). Pixels that are unlabeled (void, id 0) in the ground
  truth are removed from the predicted segment before its IoU is computed.
* TP = matched pairs, FN = unmatched non-crowd ground-truth segments, FP = unmatched
  predicted segments, except those of which more than half is void or belongs to crowd
  ground-truth regions of the same category (those are ignored). Crowd ground-truth
  segments are never matched and never count as FN.
* PQ = sum(IoU of TPs) / (TP + FP/2 + FN/2) = SQ x RQ, with SQ = sum(IoU) / TP and
  RQ = TP / (TP + FP/2 + FN/2). A category with no TP, FP or FN is left out of the
  averages; "All", "Things" and "Stuff" are unweighted means over the categories kept.

Several crowd segments of one category in an image all count as crowd (COCO panoptic has
at most one per category and image; panopticapi looks at the last one listed only).
Otherwise the numbers are those of panopticapi's ``pq_compute``.

Segment maps are integer arrays of segment ids (0 = void / no segment); each segment id
maps to ``{"category_id": int, "iscrowd": 0/1}`` (dataset category ids).
"""
import json
import logging
import os
from collections import OrderedDict, defaultdict
from dataclasses import dataclass
from typing import Dict, Iterable, Optional, Set

import numpy as np
from PIL import Image
from tabulate import tabulate

from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

__all__ = ["PQStat", "pq_stat_for_image", "ids_from_rgb", "COCOPanopticPQEvaluator"]

VOID = 0
# Larger than any segment id (COCO's RGB encoding gives ids < 256**3): pairs of ids are
# packed into one int64 as gt * _PAIR + pred.
_PAIR = 256 ** 3

logger = logging.getLogger(__name__)


def ids_from_rgb(rgb: np.ndarray) -> np.ndarray:
    """Segment ids of a COCO panoptic PNG (HxWx3 uint8): id = R + 256 G + 256^2 B."""
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


@dataclass
class _ClassStat:
    iou: float = 0.0
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def add(self, other: "_ClassStat") -> None:
        self.iou += other.iou
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn

    def quality(self) -> Dict[str, float]:
        """PQ, SQ, RQ of this category (0 where undefined)."""
        denom = self.tp + 0.5 * self.fp + 0.5 * self.fn
        sq = self.iou / self.tp if self.tp else 0.0
        rq = self.tp / denom if denom else 0.0
        return {"PQ": sq * rq, "SQ": sq, "RQ": rq}


class PQStat:
    """Per-category accumulators (sum of TP IoUs, TP, FP, FN); summable over images and
    processes with `+=`."""

    def __init__(self):
        self.per_class: Dict[int, _ClassStat] = defaultdict(_ClassStat)

    def __iadd__(self, other: "PQStat") -> "PQStat":
        for cat, stat in other.per_class.items():
            self.per_class[cat].add(stat)
        return self

    def class_quality(self) -> Dict[int, Dict[str, float]]:
        """category id -> {"PQ", "SQ", "RQ"} (fractions), for categories with TP, FP or FN."""
        return {c: s.quality() for c, s in sorted(self.per_class.items()) if s.tp + s.fp + s.fn > 0}

    def average(self, category_ids: Iterable[int]) -> Dict[str, float]:
        """Mean PQ, SQ, RQ over the given categories that occur; ``n`` = how many."""
        per_class = self.class_quality()
        kept = [per_class[c] for c in category_ids if c in per_class]
        out = {k: float(np.mean([q[k] for q in kept])) if kept else 0.0 for k in ("PQ", "SQ", "RQ")}
        out["n"] = len(kept)
        return out


def _areas(ids: np.ndarray) -> Dict[int, int]:
    labels, counts = np.unique(ids, return_counts=True)
    return dict(zip(labels.tolist(), counts.tolist()))


def _intersections(gt_ids: np.ndarray, pred_ids: np.ndarray) -> Dict[tuple, int]:
    """(gt id, pred id) -> number of pixels where both occur."""
    pairs = gt_ids.astype(np.int64) * _PAIR + pred_ids.astype(np.int64)
    return {(int(k // _PAIR), int(k % _PAIR)): n for k, n in _areas(pairs).items()}


def _check_ids(areas: Dict[int, int], segments: Dict[int, dict], what: str) -> None:
    unknown = sorted(set(areas) - set(segments) - {VOID})
    if unknown:
        raise ValueError(f"{what} segment ids {unknown} occur in the map but have no segment info")


def _is_crowd(segment: dict) -> bool:
    return bool(segment.get("iscrowd", 0))


def _match(inter, gt_area, gt_segments, pred_area, pred_segments, stat: PQStat) -> tuple:
    """Count the TPs (same category, IoU > 0.5 with gt-void pixels left out of the
    predicted segment) into ``stat``; return the matched gt and predicted ids."""
    matched_gt, matched_pred = set(), set()
    for (g, p), n in inter.items():
        if g == VOID or p == VOID or _is_crowd(gt_segments[g]):
            continue
        category = gt_segments[g]["category_id"]
        if category != pred_segments[p]["category_id"]:
            continue
        iou = n / (pred_area[p] + gt_area[g] - n - inter.get((VOID, p), 0))
        if iou > 0.5:
            stat.per_class[category].tp += 1
            stat.per_class[category].iou += iou
            matched_gt.add(g)
            matched_pred.add(p)
    return matched_gt, matched_pred


def _count_false_positives(inter, gt_segments, pred_area, pred_segments, matched: Set[int], stat: PQStat):
    """Unmatched predicted segments are FPs unless more than half of them is gt void or
    crowd of their own category."""
    ignored = defaultdict(int)  # pred id -> void + same-category crowd pixels
    for (g, p), n in inter.items():
        if p == VOID:
            continue
        if g == VOID or (_is_crowd(gt_segments[g])
                         and gt_segments[g]["category_id"] == pred_segments[p]["category_id"]):
            ignored[p] += n
    for p, area in pred_area.items():
        if p != VOID and p not in matched and ignored[p] / area <= 0.5:
            stat.per_class[pred_segments[p]["category_id"]].fp += 1


def pq_stat_for_image(gt_ids: np.ndarray, gt_segments: Dict[int, dict],
                      pred_ids: np.ndarray, pred_segments: Dict[int, dict]) -> PQStat:
    """Match one image's predicted segments to its ground truth; see the module doc.

    Args:
        gt_ids, pred_ids: HxW integer segment-id maps of the same shape (0 = void).
        gt_segments: gt id -> {"category_id", "iscrowd"}; ids without pixels are ignored.
        pred_segments: pred id -> {"category_id"}; ids without pixels are ignored.
    """
    if gt_ids.shape != pred_ids.shape:
        raise ValueError(f"Prediction of shape {pred_ids.shape} for ground truth of shape {gt_ids.shape}")
    gt_area, pred_area = _areas(gt_ids), _areas(pred_ids)
    _check_ids(gt_area, gt_segments, "Ground-truth")
    _check_ids(pred_area, pred_segments, "Predicted")
    inter = _intersections(gt_ids, pred_ids)
    stat = PQStat()
    matched_gt, matched_pred = _match(inter, gt_area, gt_segments, pred_area, pred_segments, stat)
    for g in gt_area:
        if g != VOID and g not in matched_gt and not _is_crowd(gt_segments[g]):
            stat.per_class[gt_segments[g]["category_id"]].fn += 1
    _count_false_positives(inter, gt_segments, pred_area, pred_segments, matched_pred, stat)
    return stat


def _segments_from_label_divisor(panoptic: np.ndarray, label_divisor: int, thing_ids) -> tuple:
    """Turn a ``category * label_divisor + instance`` map (-1 = void) into an id map and
    segments info (contiguous categories)."""
    ids = np.zeros(panoptic.shape, dtype=np.int64)
    segments = []
    for i, label in enumerate(np.unique(panoptic[panoptic >= 0]).tolist(), start=1):
        ids[panoptic == label] = i
        category = label // label_divisor
        segments.append({"id": i, "category_id": category, "isthing": category in thing_ids})
    return ids, segments


class COCOPanopticPQEvaluator(DatasetEvaluator):
    """PQ / SQ / RQ (All, Things, Stuff) on a COCO-panoptic-format data set, e.g.
    Detectron2's ``coco_2017_val_panoptic_separated``; a drop-in for Detectron2's
    COCOPanopticEvaluator, which needs ``panopticapi``.

    The data set's metadata must have ``panoptic_json`` and ``panoptic_root`` (the
    ground truth) and the contiguous-id maps ``thing_dataset_id_to_contiguous_id`` and
    ``stuff_dataset_id_to_contiguous_id``. Model outputs carry ``"panoptic_seg"``:
    ``(ids, segments_info)`` with ``segments_info`` dicts of "id", "category_id"
    (contiguous) and "isthing", or ``(map, None)`` with ``category * label_divisor +
    instance`` values (-1 = void), as Detectron2's models give them. Inputs need
    "image_id". Results (in %) under ``"panoptic_seg"``: PQ, SQ, RQ, and the same with
    ``_th`` (things) and ``_st`` (stuff); per-category numbers are logged and, with
    ``output_dir``, written to ``panoptic_quality.json``.
    """

    def __init__(self, dataset_name: str, output_dir: Optional[str] = None, distributed: bool = True):
        self._metadata = MetadataCatalog.get(dataset_name)
        self._output_dir = output_dir
        self._distributed = distributed
        with PathManager.open(self._metadata.panoptic_json) as f:
            gt_json = json.load(f)
        self._categories = {c["id"]: c for c in gt_json["categories"]}
        self._gt_by_image = {a["image_id"]: a for a in gt_json["annotations"]}
        self._thing_to_dataset = {v: k for k, v in self._metadata.thing_dataset_id_to_contiguous_id.items()}
        self._stuff_to_dataset = {v: k for k, v in self._metadata.stuff_dataset_id_to_contiguous_id.items()}
        self.reset()

    def reset(self):
        self._stat = PQStat()

    def _ground_truth(self, image_id):
        if image_id not in self._gt_by_image:
            raise KeyError(f"Image {image_id} has no annotation in {self._metadata.panoptic_json}")
        ann = self._gt_by_image[image_id]
        with PathManager.open(os.path.join(self._metadata.panoptic_root, ann["file_name"]), "rb") as f:
            ids = ids_from_rgb(np.asarray(Image.open(f).convert("RGB")))
        return ids, {s["id"]: s for s in ann["segments_info"]}

    def _dataset_category(self, segment: dict) -> int:
        to_dataset = self._thing_to_dataset if segment["isthing"] else self._stuff_to_dataset
        category = to_dataset[segment["category_id"]]
        if category not in self._categories:
            raise ValueError(f"Predicted category {category} is not in {self._metadata.panoptic_json}")
        return category

    def _prediction(self, panoptic_seg) -> tuple:
        ids, segments_info = panoptic_seg
        ids = ids.cpu().numpy() if hasattr(ids, "cpu") else np.asarray(ids)
        if segments_info is None:
            thing_ids = set(self._metadata.thing_dataset_id_to_contiguous_id.values())
            ids, segments_info = _segments_from_label_divisor(ids, self._metadata.label_divisor, thing_ids)
        return ids, {s["id"]: {"category_id": self._dataset_category(s)} for s in segments_info}

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            pred_ids, pred_segments = self._prediction(out["panoptic_seg"])
            gt_ids, gt_segments = self._ground_truth(inp["image_id"])
            self._stat += pq_stat_for_image(gt_ids, gt_segments, pred_ids, pred_segments)

    def _gathered_stat(self) -> Optional[PQStat]:
        if not self._distributed:
            return self._stat
        stats = comm.gather(self._stat, dst=0)
        if not comm.is_main_process():
            return None
        total = PQStat()
        for s in stats:
            total += s
        return total

    def evaluate(self):
        stat = self._gathered_stat()
        if stat is None:
            return {}
        things = [c for c, info in self._categories.items() if info["isthing"]]
        stuff = [c for c, info in self._categories.items() if not info["isthing"]]
        res = {}
        for suffix, cats in (("", list(self._categories)), ("_th", things), ("_st", stuff)):
            avg = stat.average(cats)
            res.update({f"{k}{suffix}": 100 * avg[k] for k in ("PQ", "SQ", "RQ")})
        self._report(stat, res)
        return OrderedDict(panoptic_seg=res)

    def _report(self, stat: PQStat, res: Dict[str, float]) -> None:
        """Log the summary and per-category tables; write them to output_dir if set."""
        per_class = {self._categories[c]["name"]: {k: 100 * v for k, v in q.items()}
                     for c, q in stat.class_quality().items()}
        rows = [[name] + [res[f"{k}{s}"] for k in ("PQ", "SQ", "RQ")]
                for name, s in (("All", ""), ("Things", "_th"), ("Stuff", "_st"))]
        logger.info("Panoptic evaluation results:\n" + tabulate(
            rows, headers=["", "PQ", "SQ", "RQ"], floatfmt=".3f", tablefmt="pipe"))
        logger.debug("Per-category PQ:\n" + tabulate(
            [[n, q["PQ"], q["SQ"], q["RQ"]] for n, q in per_class.items()],
            headers=["category", "PQ", "SQ", "RQ"], floatfmt=".3f", tablefmt="pipe"))
        if self._output_dir:
            PathManager.mkdirs(self._output_dir)
            with PathManager.open(os.path.join(self._output_dir, "panoptic_quality.json"), "w") as f:
                json.dump({"summary": res, "per_category": per_class}, f, indent=1)

"""Panoptic BlendMask: PQ on hand-made cases, the PQ evaluator on a tiny COCO-panoptic
data set made from coco_tiny, and a tiny panoptic BlendMask (training losses, the
combined panoptic output, evaluation through the Trainer's evaluators)."""
import json
import math
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_panoptic_separated
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators, SemSegEvaluator
from detectron2.modeling import build_model
from detectron2.utils.env import seed_all_rng

from conftest import REPO
from adet.config import get_cfg
from adet.data.dataset_mapper import DatasetMapper
from adet.engine import Trainer
from adet.evaluation import COCOPanopticPQEvaluator, PQStat, pq_stat_for_image
from adet.evaluation.panoptic_quality import _segments_from_label_divisor, ids_from_rgb

A, B, S = 1, 2, 3  # thing categories A, B; stuff category S


def approx_quality(stat: PQStat, category: int, pq, sq, rq):
    q = stat.class_quality()[category]
    assert (q["PQ"], q["SQ"], q["RQ"]) == pytest.approx((pq, sq, rq))


# ---------------------------------------------------------------- PQ, hand-made cases

def test_pq_tp_fn_fp_and_stuff():
    """10 x 10 image. GT: g1 = A on rows 0-1 (20 px), g2 = A on row 9 (10 px), g3 = S on
    rows 2-8 (70 px). Prediction: p1 = A on row 0 + row 1 cols 0-4 (15 px, inside g1),
    p2 = A on row 8 cols 0-4 (5 px, inside g3), p3 = S on rows 2-7 + row 8 cols 5-7
    (63 px, inside g3); the rest is void (0).

    A: p1-g1 IoU = 15 / 20 = 0.75 -> TP; g2 missed -> FN; p2 (no A under it) -> FP.
       PQ = 0.75 / (1 + 0.5 + 0.5) = 0.375, SQ = 0.75, RQ = 1 / 2 = 0.5.
    S: p3-g3 IoU = 63 / (63 + 70 - 63) = 0.9 -> TP. PQ = SQ = 0.9, RQ = 1.
    B: absent -> not averaged.
    All: PQ = (0.375 + 0.9) / 2 = 0.6375, SQ = (0.75 + 0.9) / 2 = 0.825, RQ = 0.75.
    """
    gt = np.zeros((10, 10), dtype=np.int64)
    gt[0:2] = 1
    gt[9] = 2
    gt[2:9] = 3
    gt_segments = {1: {"category_id": A}, 2: {"category_id": A}, 3: {"category_id": S}}
    pred = np.zeros((10, 10), dtype=np.int64)
    pred[0] = 7
    pred[1, :5] = 7
    pred[8, :5] = 8
    pred[2:8] = 9
    pred[8, 5:8] = 9
    pred_segments = {7: {"category_id": A}, 8: {"category_id": A}, 9: {"category_id": S}}

    stat = pq_stat_for_image(gt, gt_segments, pred, pred_segments)

    a, s = stat.per_class[A], stat.per_class[S]
    assert (a.tp, a.fp, a.fn, s.tp, s.fp, s.fn) == (1, 1, 1, 1, 0, 0)
    approx_quality(stat, A, 0.375, 0.75, 0.5)
    approx_quality(stat, S, 0.9, 0.9, 1.0)
    assert B not in stat.class_quality()
    assert stat.average([A, B, S]) == pytest.approx({"PQ": 0.6375, "SQ": 0.825, "RQ": 0.75, "n": 2})
    assert stat.average([A, B]) == pytest.approx({"PQ": 0.375, "SQ": 0.75, "RQ": 0.5, "n": 1})
    assert stat.average([S]) == pytest.approx({"PQ": 0.9, "SQ": 0.9, "RQ": 1.0, "n": 1})


def test_pq_void_and_crowd():
    """10 x 10 image. GT: g1 = A on row 0 (10 px), row 1 void, c = crowd A on rows 2-3
    (20 px), g4 = S on rows 4-9 (60 px). Prediction: p1 = A on rows 0-1 (20 px),
    p2 = A on row 2 + row 4 cols 0-3 (14 px), p3 = B on row 3 cols 0-4 (5 px),
    p4 = S on rows 4-9 except row 4 cols 0-3 (56 px).

    p1-g1: the 10 void pixels leave p1's area: union = 20 + 10 - 10 - 10 = 10, IoU = 1
        -> TP (without the rule IoU = 0.5, no match).
    p2: unmatched, 10 of its 14 px on a crowd region of its own class (> 50 %) -> ignored.
    p3: unmatched, on crowd of another class -> FP of B. The crowd region is no FN.
    p4-g4: IoU = 56 / 60 -> TP.
    A: PQ = SQ = RQ = 1. B: PQ = SQ = RQ = 0 (FP only). S: PQ = SQ = 14 / 15, RQ = 1.
    """
    gt = np.zeros((10, 10), dtype=np.int64)
    gt[0] = 1
    gt[2:4] = 2
    gt[4:] = 4
    gt_segments = {1: {"category_id": A, "iscrowd": 0}, 2: {"category_id": A, "iscrowd": 1},
                   4: {"category_id": S, "iscrowd": 0}}
    pred = np.zeros((10, 10), dtype=np.int64)
    pred[0:2] = 1
    pred[4:] = 4
    pred[2] = 2
    pred[4, :4] = 2
    pred[3, :5] = 3
    pred_segments = {1: {"category_id": A}, 2: {"category_id": A}, 3: {"category_id": B},
                     4: {"category_id": S}}

    stat = pq_stat_for_image(gt, gt_segments, pred, pred_segments)

    counts = {c: (s.tp, s.fp, s.fn) for c, s in stat.per_class.items()}
    assert counts == {A: (1, 0, 0), B: (0, 1, 0), S: (1, 0, 0)}
    approx_quality(stat, A, 1.0, 1.0, 1.0)
    approx_quality(stat, B, 0.0, 0.0, 0.0)
    approx_quality(stat, S, 14 / 15, 14 / 15, 1.0)
    assert stat.average([A, B, S])["PQ"] == pytest.approx((1 + 0 + 14 / 15) / 3)


def test_pq_iou_of_exactly_half_is_no_match():
    """GT A on 10 px, prediction A on those 10 + 10 more (not void): IoU = 0.5 -> FP + FN,
    PQ = 0."""
    gt = np.zeros((2, 10), dtype=np.int64)
    gt[0] = 1
    gt[1] = 2
    pred = np.full((2, 10), 5, dtype=np.int64)
    stat = pq_stat_for_image(gt, {1: {"category_id": A}, 2: {"category_id": S}}, pred, {5: {"category_id": A}})
    assert (stat.per_class[A].tp, stat.per_class[A].fp, stat.per_class[A].fn) == (0, 1, 1)
    assert stat.per_class[S].fn == 1
    assert stat.average([A, S])["PQ"] == 0.0


def test_pq_accumulates_over_images():
    """Image 1: A matched with IoU 1; image 2: A missed. Summed: TP 1, FN 1 -> PQ = 1 / 1.5."""
    gt = np.ones((4, 4), dtype=np.int64)
    segments = {1: {"category_id": A}}
    stat = PQStat()
    stat += pq_stat_for_image(gt, segments, gt.copy(), segments)
    stat += pq_stat_for_image(gt, segments, np.zeros_like(gt), {})
    approx_quality(stat, A, 2 / 3, 1.0, 2 / 3)


def test_pq_rejects_unknown_segment_ids():
    gt = np.ones((2, 2), dtype=np.int64)
    with pytest.raises(ValueError, match="Predicted segment ids \\[3\\]"):
        pq_stat_for_image(gt, {1: {"category_id": A}}, np.full((2, 2), 3), {})


def test_label_divisor_maps_become_segments():
    """Detectron2's other output format: category * label_divisor + instance, -1 void."""
    panoptic = np.array([[-1, 5000, 5000], [5001, 2000, 2000]])
    ids, segments = _segments_from_label_divisor(panoptic, 1000, thing_ids={5})
    assert ids.tolist() == [[0, 2, 2], [3, 1, 1]]
    assert segments == [{"id": 1, "category_id": 2, "isthing": False},
                        {"id": 2, "category_id": 5, "isthing": True},
                        {"id": 3, "category_id": 5, "isthing": True}]


def test_ids_from_rgb():
    rgb = np.array([[[1, 2, 3], [0, 0, 0]]], dtype=np.uint8)
    assert ids_from_rgb(rgb).tolist() == [[1 + 2 * 256 + 3 * 65536, 0]]


# ---------------------------------------------------------------- tiny COCO panoptic set

BACKGROUND_ID = 201  # the one stuff category: every pixel that no thing covers ...
VOID_ROWS = 8  # ... except the top rows, left unlabeled (void)
NUM_IMAGES = 3


def annotation_mask(ann, height, width) -> np.ndarray:
    seg = ann["segmentation"]
    if isinstance(seg, list):
        rle = mask_util.merge(mask_util.frPyObjects(seg, height, width))
    elif isinstance(seg["counts"], list):
        rle = mask_util.frPyObjects(seg, height, width)
    else:
        rle = seg
    return mask_util.decode(rle).astype(bool)


def panoptic_ground_truth(image, anns):
    """Segment-id map (background 1, annotation i -> i + 2; larger instances painted first,
    so smaller ones stay visible) and its segments_info."""
    h, w = image["height"], image["width"]
    ids = np.zeros((h, w), dtype=np.int64)
    for i in sorted(range(len(anns)), key=lambda i: -anns[i]["area"]):
        ids[annotation_mask(anns[i], h, w)] = i + 2
    background = ids == 0
    background[:VOID_ROWS] = False
    ids[background] = 1
    labels, counts = np.unique(ids, return_counts=True)
    areas = dict(zip(labels.tolist(), counts.tolist()))
    segments = [{"id": i + 2, "category_id": a["category_id"], "iscrowd": a["iscrowd"],
                 "area": areas[i + 2], "bbox": a["bbox"]} for i, a in enumerate(anns) if i + 2 in areas]
    segments.append({"id": 1, "category_id": BACKGROUND_ID, "iscrowd": 0, "area": int(areas[1])})
    return ids, segments


def write_panoptic_image(ids, segments, pan_path, sem_path):
    """The COCO panoptic PNG (id = R + 256 G + 256^2 B) and the "separated" stuff PNG of
    Detectron2's prepare_panoptic_fpn.py (things 0, stuff 1.., unlabeled 255)."""
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(pan_path)
    sem = np.full(ids.shape, 255, dtype=np.uint8)
    sem[(ids != 0) & (ids != 1)] = 0
    sem[ids == 1] = 1
    assert {s["id"] for s in segments} == set(np.unique(ids).tolist()) - {0}
    Image.fromarray(sem).save(sem_path)


def write_tiny_panoptic(coco_root, root):
    """The first NUM_IMAGES val2017 images of coco_tiny as a COCO panoptic set: things from
    the instance annotations, one stuff class 'background'; returns the paths."""
    with open(coco_root / "annotations" / "instances_val2017.json") as f:
        data = json.load(f)
    images = sorted(data["images"], key=lambda im: im["id"])[:NUM_IMAGES]
    paths = {k: root / k for k in ("images", "panoptic", "panoptic_stuff")}
    for p in paths.values():
        p.mkdir(parents=True)
    pan_annotations, instance_anns = [], []
    for image in images:
        anns = [a for a in data["annotations"] if a["image_id"] == image["id"]]
        instance_anns += anns
        os.symlink(coco_root / "val2017" / image["file_name"], paths["images"] / image["file_name"])
        ids, segments = panoptic_ground_truth(image, anns)
        png = image["file_name"].replace(".jpg", ".png")
        write_panoptic_image(ids, segments, paths["panoptic"] / png, paths["panoptic_stuff"] / png)
        pan_annotations.append({"image_id": image["id"], "file_name": png, "segments_info": segments})
    categories = [dict(c, isthing=1) for c in data["categories"]]
    categories.append({"id": BACKGROUND_ID, "name": "background", "supercategory": "background", "isthing": 0})
    paths["panoptic_json"] = root / "panoptic.json"
    paths["panoptic_json"].write_text(json.dumps(
        {"images": images, "annotations": pan_annotations, "categories": categories}))
    paths["instances_json"] = root / "instances.json"
    paths["instances_json"].write_text(json.dumps(
        {"images": images, "annotations": instance_anns, "categories": data["categories"]}))
    return paths


@pytest.fixture(scope="module")
def tiny_panoptic(shared_data, tmp_path_factory):
    """Registered as Detectron2 registers coco_2017_val_panoptic_separated; its name."""
    name = "adet_test_panoptic"
    if name + "_separated" not in DatasetCatalog.list():
        paths = write_tiny_panoptic(shared_data / "coco_tiny", tmp_path_factory.mktemp("panoptic"))
        coco = MetadataCatalog.get("coco_2017_val")
        metadata = {
            "thing_classes": coco.thing_classes,
            "thing_dataset_id_to_contiguous_id": coco.thing_dataset_id_to_contiguous_id,
            "stuff_classes": ["things", "background"],
            "stuff_dataset_id_to_contiguous_id": {0: 0, BACKGROUND_ID: 1},
        }
        register_coco_panoptic_separated(
            name, metadata, str(paths["images"]), str(paths["panoptic"]), str(paths["panoptic_json"]),
            str(paths["panoptic_stuff"]), str(paths["instances_json"]))
    return name + "_separated"


def gt_as_prediction(evaluator, meta, image_id):
    """The ground truth in the model's output format (contiguous ids, isthing)."""
    ids, segments = evaluator._ground_truth(image_id)
    info = []
    for sid, s in segments.items():
        isthing = s["category_id"] != BACKGROUND_ID
        to_contiguous = meta.thing_dataset_id_to_contiguous_id if isthing else meta.stuff_dataset_id_to_contiguous_id
        info.append({"id": sid, "isthing": isthing, "category_id": to_contiguous[s["category_id"]]})
    return {"panoptic_seg": (torch.from_numpy(ids).int(), info)}


def test_evaluator_gives_100_for_the_ground_truth(tiny_panoptic, tmp_path):
    dicts = DatasetCatalog.get(tiny_panoptic)
    meta = MetadataCatalog.get(tiny_panoptic)
    evaluator = COCOPanopticPQEvaluator(tiny_panoptic, output_dir=str(tmp_path))
    evaluator.reset()
    for d in dicts:
        evaluator.process([{"image_id": d["image_id"]}], [gt_as_prediction(evaluator, meta, d["image_id"])])
    res = evaluator.evaluate()["panoptic_seg"]
    assert res == pytest.approx({k: 100.0 for k in ("PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th",
                                                     "PQ_st", "SQ_st", "RQ_st")})
    saved = json.loads((tmp_path / "panoptic_quality.json").read_text())
    assert saved["per_category"]["background"]["PQ"] == pytest.approx(100.0)
    assert saved["summary"]["PQ"] == pytest.approx(100.0)


def test_evaluator_counts_a_dropped_segment(tiny_panoptic):
    """Dropping image 1's background (stuff) segment turns its TP into an FN: stuff PQ
    becomes 2 TPs / (2 + 0.5) = 80 %, things stay 100 %."""
    dicts = DatasetCatalog.get(tiny_panoptic)
    meta = MetadataCatalog.get(tiny_panoptic)
    evaluator = COCOPanopticPQEvaluator(tiny_panoptic, distributed=False)
    for i, d in enumerate(dicts):
        out = gt_as_prediction(evaluator, meta, d["image_id"])
        if i == 0:
            ids, info = out["panoptic_seg"]
            ids[ids == 1] = 0
            out["panoptic_seg"] = (ids, [s for s in info if s["id"] != 1])
        evaluator.process([{"image_id": d["image_id"]}], [out])
    res = evaluator.evaluate()["panoptic_seg"]
    assert res["PQ_st"] == pytest.approx(80.0)
    assert res["RQ_st"] == pytest.approx(80.0)
    assert res["SQ_st"] == pytest.approx(100.0)
    assert res["PQ_th"] == pytest.approx(100.0)


def test_mapper_gives_stuff_targets(tiny_panoptic):
    cfg = panoptic_cfg(tiny_panoptic)
    d = DatasetCatalog.get(tiny_panoptic)[0]
    assert d["sem_seg_file_name"].endswith(".png")
    out = DatasetMapper(cfg, is_train=True)(d)
    sem = out["sem_seg"]
    assert sem.shape == out["image"].shape[1:]
    assert set(sem.unique().tolist()) == {0, 1, 255}
    assert (sem[0] != 1).all()  # the top rows are void or things
    assert "basis_sem" in out and len(out["instances"]) > 0


# ---------------------------------------------------------------- tiny panoptic BlendMask

TINY = {
    "MODEL.DEVICE": "cpu",
    "MODEL.WEIGHTS": "",
    "MODEL.RESNETS.DEPTH": 18,
    "MODEL.RESNETS.RES2_OUT_CHANNELS": 64,
    "MODEL.FPN.OUT_CHANNELS": 32,
    "MODEL.FCOS.NUM_CLS_CONVS": 1,
    "MODEL.FCOS.NUM_BOX_CONVS": 1,
    "MODEL.FCOS.NUM_SHARE_CONVS": 0,
    "MODEL.FCOS.INFERENCE_TH_TEST": 0.0,  # an untrained model scores low
    "MODEL.BASIS_MODULE.CONVS_DIM": 32,
    "MODEL.BASIS_MODULE.NUM_CONVS": 1,
    "MODEL.BLENDMASK.BOTTOM_RESOLUTION": 28,
    "MODEL.BLENDMASK.ATTN_SIZE": 7,
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 2,  # "things" + background
    "MODEL.SEM_SEG_HEAD.CONVS_DIM": 32,
    "MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH": 0.0,
    "MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT": 64,
    "INPUT.MIN_SIZE_TRAIN": (128,),
    "INPUT.MAX_SIZE_TRAIN": 192,
    "INPUT.MIN_SIZE_TEST": 128,
    "INPUT.MAX_SIZE_TEST": 192,
    "INPUT.RANDOM_FLIP": "none",
    "DATALOADER.NUM_WORKERS": 0,
    "TEST.DETECTIONS_PER_IMAGE": 20,
    "SEED": 0,
}


def panoptic_cfg(dataset, output_dir="", **extra):
    """configs/BlendMask/Panoptic/R_50_1x.yaml with tiny sizes, on the tiny panoptic set."""
    cfg = get_cfg()
    cfg.merge_from_file(str(REPO / "configs" / "BlendMask" / "Panoptic" / "R_50_1x.yaml"))
    opts = {**TINY, "DATASETS.TRAIN": (dataset,), "DATASETS.TEST": (dataset,), "OUTPUT_DIR": str(output_dir),
            **extra}
    cfg.merge_from_list([x for k, v in opts.items() for x in (k, v if isinstance(v, str) else repr(v))])
    cfg.freeze()
    return cfg


def test_panoptic_config_has_the_reference_semantic_branch():
    cfg = panoptic_cfg("coco_2017_val_panoptic_separated")
    assert cfg.MODEL.SEM_SEG_HEAD.NAME == "SemSegFPNHead"
    assert list(cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES) == ["p2", "p3", "p4", "p5"]
    assert cfg.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT == 0.5
    assert cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE == 255
    combine = cfg.MODEL.PANOPTIC_FPN.COMBINE
    assert (combine.ENABLED, combine.OVERLAP_THRESH) == (True, 0.4)
    full = get_cfg()
    full.merge_from_file(str(REPO / "configs" / "BlendMask" / "Panoptic" / "R_50_1x.yaml"))
    assert full.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 54  # 53 COCO stuff classes + "things"
    assert full.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH == 0.45
    assert full.MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT == 4096


@pytest.fixture(scope="module")
def tiny_model(tiny_panoptic):
    seed_all_rng(0)
    cfg = panoptic_cfg(tiny_panoptic)
    return cfg, build_model(cfg)


def mapped(cfg, dataset, is_train):
    mapper = DatasetMapper(cfg, is_train=is_train)
    return [mapper(d) for d in DatasetCatalog.get(dataset)]


def test_training_losses_include_the_semantic_loss(tiny_model, tiny_panoptic):
    cfg, model = tiny_model
    model.train()
    batch = mapped(cfg, tiny_panoptic, True)[:2]
    losses = model(batch)
    assert {"loss_sem_seg", "loss_basis_sem", "loss_mask", "loss_fcos_cls"} <= set(losses)
    assert all(math.isfinite(v.item()) for v in losses.values()), losses
    model.zero_grad()
    losses["loss_sem_seg"].backward()
    grad = model.panoptic_module.predictor.weight.grad
    assert grad is not None and grad.abs().sum() > 0

    # only the semantic loss sees the stuff targets: swapping things (0) and background
    # (1) changes it and nothing else
    swapped = [dict(x, sem_seg=torch.where(x["sem_seg"] == 255, 255, 1 - x["sem_seg"])) for x in batch]
    with torch.no_grad():
        other = model(swapped)
    assert other["loss_sem_seg"].item() != pytest.approx(losses["loss_sem_seg"].item(), rel=1e-3)
    for k in ("loss_basis_sem", "loss_mask", "loss_fcos_cls"):
        assert other[k].item() == pytest.approx(losses[k].item(), rel=1e-5), k

    with pytest.raises(ValueError, match="sem_seg"):
        model([{k: v for k, v in x.items() if k != "sem_seg"} for x in batch])


def check_panoptic_output(out, inp, stuff_area_limit):
    """segments_info agrees with the segment map, the instances and the stuff argmax."""
    ids, segments_info = out["panoptic_seg"]
    instances, sem = out["instances"], out["sem_seg"]
    assert ids.shape == (inp["height"], inp["width"]) == instances.image_size
    assert sem.shape == (2, inp["height"], inp["width"])
    assert set(ids.unique().tolist()) - {0} == {s["id"] for s in segments_info}
    stuff_label = sem.argmax(dim=0)
    for s in segments_info:
        region = ids == s["id"]
        if s["isthing"]:
            k = s["instance_id"]
            assert s["category_id"] == instances.pred_classes[k].item()
            assert s["score"] == pytest.approx(instances.scores[k].item())
            assert instances.pred_masks[k][region].all()  # the segment lies in its mask
        else:
            assert s["category_id"] == 1
            assert (stuff_label[region] == 1).all()
            assert region.sum() >= stuff_area_limit
    return [s for s in segments_info if s["isthing"]], [s for s in segments_info if not s["isthing"]]


def test_inference_combines_instances_and_stuff(tiny_model, tiny_panoptic):
    """Random-init heads, with the bases set to +2 everywhere (every mask fills its box)
    and the stuff head to predict 'background' everywhere: thing segments come from the
    instances by score, and one stuff segment fills every pixel left."""
    cfg, model = tiny_model
    model.eval()
    inputs = mapped(cfg, tiny_panoptic, False)
    with torch.no_grad():
        raw = model(inputs[:1])
        tower, predictor = model.basis_module.tower[-1], model.panoptic_module.predictor
        saved = [p.clone() for p in (tower.weight, tower.bias, predictor.weight, predictor.bias)]
        tower.weight.zero_()
        tower.bias.fill_(2.0)
        predictor.weight.zero_()
        predictor.bias.copy_(torch.tensor([0.0, 1.0]))
        outputs = model(inputs)
        for p, v in zip((tower.weight, tower.bias, predictor.weight, predictor.bias), saved):
            p.copy_(v)
    check_panoptic_output(raw[0], inputs[0], cfg.MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT)
    for out, inp in zip(outputs, inputs):
        things, stuff = check_panoptic_output(out, inp, cfg.MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT)
        assert len(things) > 0 and len(stuff) == 1
        ids = out["panoptic_seg"][0]
        assert (ids != 0).all()  # things, then stuff where no thing is
        scores = [s["score"] for s in things]
        assert scores == sorted(scores, reverse=True)
        # the best-scoring instance with a non-empty mask is the first segment
        instances = out["instances"]
        nonempty = instances.pred_masks.flatten(1).any(dim=1)
        assert things[0]["instance_id"] == torch.where(nonempty, instances.scores, -1.0).argmax().item()


def test_trainer_evaluates_pq_bbox_segm_and_sem_seg(tiny_panoptic, tmp_path):
    evaluators = Trainer.build_evaluator(panoptic_cfg(tiny_panoptic, tmp_path), tiny_panoptic)
    assert isinstance(evaluators, DatasetEvaluators)
    kinds = [type(e) for e in evaluators._evaluators]
    assert kinds == [COCOPanopticPQEvaluator, COCOEvaluator, SemSegEvaluator]
    assert not isinstance(Trainer.build_evaluator(panoptic_cfg(tiny_panoptic, tmp_path), "coco_tiny_val"),
                          DatasetEvaluators)


def test_trainer_trains_and_evaluates_panoptic(tiny_panoptic, tmp_path):
    """Two iterations through the Trainer (sem_seg targets batched by its loader), then
    its final evaluation: PQ, box / mask AP and stuff mIoU."""
    cfg = panoptic_cfg(tiny_panoptic, tmp_path, **{
        "SOLVER.IMS_PER_BATCH": 2, "SOLVER.MAX_ITER": 2, "SOLVER.STEPS": (), "SOLVER.WARMUP_ITERS": 1,
        "SOLVER.BASE_LR": 0.001, "SOLVER.CHECKPOINT_PERIOD": 100000, "TEST.EVAL_PERIOD": 0})
    seed_all_rng(cfg.SEED)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    metrics = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    sem_losses = [m["loss_sem_seg"] for m in metrics if "loss_sem_seg" in m]
    assert sem_losses and all(math.isfinite(v) and v > 0 for v in sem_losses)

    results = trainer._last_eval_results  # EvalHook evaluates after the last iteration
    assert set(results) == {"panoptic_seg", "bbox", "segm", "sem_seg"}
    pq = results["panoptic_seg"]
    assert set(pq) == {f"{m}{s}" for m in ("PQ", "SQ", "RQ") for s in ("", "_th", "_st")}
    assert all(math.isfinite(v) and 0.0 <= v <= 100.0 for v in pq.values()), pq
    print("PQ after 2 iterations:", pq)
    assert math.isfinite(results["sem_seg"]["mIoU"])
    assert math.isfinite(results["segm"]["AP"])
    assert (tmp_path / "inference" / tiny_panoptic / "panoptic_quality.json").is_file()

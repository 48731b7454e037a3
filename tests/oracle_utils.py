"""Helpers to compare a model with the reference oracle data in ../shared/reference.

Format and tolerances: ../shared/reference/README.md. Each method's oracle test builds
its model from our YAML, loads `refweights.state_dict_for(schema)` strictly and checks
outputs and losses with the functions here.
"""
import hashlib
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import torch

from detectron2.data import detection_utils
from detectron2.data import transforms as T
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ADET_SHARED", REPO.parent / "shared"))
REFERENCE = SHARED / "reference"
DATA = SHARED / "data"

BOX_TOL_PX = 0.01
SCORE_TOL = 1e-4
LOSS_RTOL = 1e-4


def load_refweights():
    spec = importlib.util.spec_from_file_location("refweights", REFERENCE / "refweights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def schema(model_name: str) -> dict:
    return json.loads((REFERENCE / "schemas" / f"{model_name}.json").read_text())


def oracle(model_name: str, file_name: str):
    """(json dict, torch .pt payload or None) of an oracle file."""
    folder = REFERENCE / "oracle" / model_name
    meta = json.loads((folder / f"{file_name}.json").read_text())
    pt = folder / f"{file_name}.pt"
    payload = torch.load(pt, map_location="cpu", weights_only=False) if pt.exists() else None
    return meta, payload


def load_reference_weights(model, model_name: str):
    """Load the deterministic weights strictly, through adet's conversion table for
    reference checkpoints: every key and shape must match."""
    from adet.checkpoint import convert_state_dict

    state = load_refweights().state_dict_for(schema(model_name))
    model.load_state_dict(convert_state_dict(state, model_keys=model.state_dict().keys()), strict=True)
    return model


def reference_model(config_file: str, model_name: str):
    """Our model built from `config_file` (relative to the repo) on the CPU, with the
    deterministic weights of `model_name`'s schema loaded strictly."""
    from adet.config import get_cfg
    from detectron2.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(str(REPO / config_file))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    torch.set_num_threads(2)
    return load_reference_weights(build_model(cfg), model_name)


def resized_image(split: str, file_name: str, short_edge: int, max_size: int, rgb: bool = False):
    """Read an image as the oracle did and resize it; returns (CHW uint8 tensor, (H, W))."""
    image = detection_utils.read_image(str(DATA / "coco_tiny" / split / file_name), format="BGR")
    original_hw = image.shape[:2]
    if rgb:
        image = image[:, :, ::-1]
    aug = T.ResizeShortestEdge(short_edge, max_size, "choice")
    image = aug.get_transform(image).apply_image(image)
    return torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))), original_hw


def chw_sha256(image: torch.Tensor) -> str:
    return hashlib.sha256(image.numpy().tobytes()).hexdigest()


def inference_input(meta: dict, rgb: bool = False) -> dict:
    inp = meta["input"]
    image, (h, w) = resized_image(inp["split"], inp["file_name"], inp["S"], inp["resize"]["max_size"], rgb)
    assert chw_sha256(image) == inp["image_chw_uint8_sha256"], "resize differs from the oracle's"
    return {"image": image, "height": h, "width": w}


def training_inputs(meta: dict, payload: dict, rgb: bool = False) -> list:
    """The oracle's training batch, with ground truth from its .pt file."""
    inputs = []
    for image_meta, gt in zip(meta["images"], payload["images"]):
        image, (h, w) = resized_image(image_meta["split"], image_meta["file_name"], image_meta["S_train"],
                                      image_meta["resize"]["max_size"], rgb)
        assert chw_sha256(image) == image_meta["image_chw_uint8_sha256"]
        instances = Instances(tuple(image.shape[1:]))
        instances.gt_boxes = Boxes(gt["gt_boxes"])
        instances.gt_classes = gt["gt_classes"]
        inputs.append({"image": image, "height": h, "width": w, "instances": instances})
    return inputs


def training_losses(model, inputs) -> dict:
    model.train()
    torch.manual_seed(0)
    with EventStorage(0):
        losses = model(inputs)
    return {k: float(v) for k, v in losses.items()}


def assert_losses_match(losses: dict, meta: dict):
    expected = meta["losses"]
    assert sorted(losses) == sorted(expected), f"loss names {sorted(losses)} != {sorted(expected)}"
    for name, value in expected.items():
        assert abs(losses[name] - value) <= LOSS_RTOL * abs(value), f"{name}: {losses[name]} vs reference {value}"


def assert_instances_match(instances, meta: dict, check_boxes: bool = True):
    expected = meta["instances"]
    assert len(instances) == len(expected), f"{len(instances)} instances, reference has {len(expected)}"
    scores = instances.scores.tolist()
    classes = instances.pred_classes.tolist()
    boxes = instances.pred_boxes.tensor.tolist() if check_boxes else None
    # Order is the reference's "up to ties": match each reference instance to one of ours
    # with the same class and score within tolerance (and box, when boxes are compared).
    unused = set(range(len(expected)))
    for i, ref in enumerate(expected):
        match = None
        for j in sorted(unused, key=lambda j: abs(j - i)):
            if classes[j] != ref["pred_class"] or abs(scores[j] - ref["score"]) > SCORE_TOL:
                continue
            if check_boxes and max(abs(a - b) for a, b in zip(boxes[j], ref["pred_box"])) > BOX_TOL_PX:
                continue
            match = j
            break
        assert match is not None, f"reference instance {i} {ref} has no match"
        assert abs(match - i) <= 3, f"reference instance {i} found at position {match}"
        unused.discard(match)


def assert_tensors_close(ours: torch.Tensor, ref: torch.Tensor, rtol: float = 1e-4, atol: float = 1e-4, name=""):
    assert ours.shape == ref.shape, f"{name}: shape {tuple(ours.shape)} vs {tuple(ref.shape)}"
    diff = (ours.float() - ref.float()).abs()
    bound = atol + rtol * ref.float().abs()
    worst = (diff - bound).max().item()
    assert worst <= 0, f"{name}: max abs diff {diff.max().item():.3g} exceeds tolerance"


def assert_checksum(t: torch.Tensor, checksum: dict, name: str):
    """Compare with the reference's (shape, sum, abs_sum, min, max) of an unsaved tensor.
    A sum of many values is held to 1e-4 of the summed magnitudes."""
    assert list(t.shape) == checksum["shape"], f"{name}: shape {list(t.shape)} vs {checksum['shape']}"
    t = t.double()
    tolerances = {"sum": 1e-4 * checksum["abs_sum"], "abs_sum": 1e-4 * checksum["abs_sum"],
                  "min": 1e-4 + 1e-4 * abs(checksum["min"]), "max": 1e-4 + 1e-4 * abs(checksum["max"])}
    values = {"sum": t.sum(), "abs_sum": t.abs().sum(), "min": t.min(), "max": t.max()}
    for key, tol in tolerances.items():
        assert abs(values[key].item() - checksum[key]) <= tol, f"{name}.{key}: {values[key].item()} vs {checksum[key]}"


# --- BlendMask helpers -----------------------------------------------------------------


def blendmask_training_inputs(meta: dict, payload: dict) -> list:
    """`training_inputs` plus what BlendMask trains on: polygon gt_masks and `basis_sem`
    (stored as uint8 in the .pt, fed as int64)."""
    from detectron2.structures import PolygonMasks

    inputs = training_inputs(meta, payload)
    for inp, gt in zip(inputs, payload["images"]):
        inp["instances"].gt_masks = PolygonMasks(
            [[np.asarray(p, dtype=np.float64) for p in polys] for polys in gt["gt_masks_polygons"]])
        inp["basis_sem"] = gt["basis_sem_uint8"].long()
    return inputs


def reference_masks(meta: dict) -> list:
    """The reference instances' masks, decoded from COCO RLE to (H, W) bool arrays."""
    from pycocotools import mask as mask_util

    masks = []
    for ref in meta["instances"]:
        rle = dict(ref["pred_mask_rle"])
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
        masks.append(mask_util.decode(rle).astype(bool))
    return masks


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two bool masks; two empty masks count as identical."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def match_instances(instances, meta: dict) -> list:
    """For each reference instance, the index of ours with the same class and score within
    tolerance and box within BOX_TOL_PX, nearest in position (as `assert_instances_match`)."""
    expected = meta["instances"]
    scores = instances.scores.tolist()
    classes = instances.pred_classes.tolist()
    boxes = instances.pred_boxes.tensor.tolist()
    unused, order = set(range(len(instances))), []
    for i, ref in enumerate(expected):
        match = None
        for j in sorted(unused, key=lambda j: abs(j - i)):
            if classes[j] == ref["pred_class"] and abs(scores[j] - ref["score"]) <= SCORE_TOL and \
                    max(abs(a - b) for a, b in zip(boxes[j], ref["pred_box"])) <= BOX_TOL_PX:
                match = j
                break
        assert match is not None, f"reference instance {i} {ref} has no match"
        unused.discard(match)
        order.append(match)
    return order


def worst_mask_iou(instances, meta: dict) -> float:
    """Smallest mask IoU between each reference instance and its match among ours."""
    ours = instances.pred_masks.cpu().numpy().astype(bool)
    order = match_instances(instances, meta)
    return min((mask_iou(ours[j], ref) for j, ref in zip(order, reference_masks(meta))), default=1.0)


# --- CondInst / BoxInst helpers --------------------------------------------------------


def restore_condinst_buffers(model):
    """Put back the two architecture constants that refweights overwrites (see the
    reference README): what the `__cfgbuf` oracle files were made with."""
    head = model.mask_head
    head.sizes_of_interest.copy_(torch.tensor([64, 128, 256, 512, 1024]))
    head._iter.zero_()
    return model


def condinst_training_inputs(meta: dict, payload: dict) -> list:
    """`training_inputs` plus polygon gt_masks where the oracle has them (CondInst;
    BoxInst's ground truth is boxes only)."""
    from detectron2.structures import PolygonMasks

    inputs = training_inputs(meta, payload)
    for inp, gt in zip(inputs, payload["images"]):
        if "gt_masks_polygons" in gt:
            inp["instances"].gt_masks = PolygonMasks(
                [[np.asarray(p, dtype=np.float64) for p in polys] for polys in gt["gt_masks_polygons"]])
    return inputs


# --- SparseInst helpers ----------------------------------------------------------------


def sparseinst_training_inputs(meta: dict, payload: dict) -> list:
    """`training_inputs` (RGB) plus bitmask gt_masks decoded from the oracle's RLE."""
    from pycocotools import mask as mask_util
    from detectron2.structures import BitMasks

    inputs = training_inputs(meta, payload, rgb=True)
    for inp, image_meta in zip(inputs, meta["images"]):
        rles = [dict(r, counts=r["counts"].encode("ascii") if isinstance(r["counts"], str) else r["counts"])
                for r in image_meta["gt_masks_bitmask_rle"]]
        masks = np.stack([mask_util.decode(r) for r in rles]).astype(bool)
        inp["instances"].gt_masks = BitMasks(torch.from_numpy(masks))
    return inputs


def worst_mask_iou_in_order(instances, meta: dict) -> float:
    """Smallest mask IoU between the reference instances and ours at the same position
    (for outputs without boxes, e.g. SparseInst, whose order is the query order)."""
    ours = instances.pred_masks.cpu().numpy().astype(bool)
    return min((mask_iou(ours[i], ref) for i, ref in enumerate(reference_masks(meta))), default=1.0)


# --- SOLOv2 helpers --------------------------------------------------------------------


def solov2_training_inputs(meta: dict, payload: dict) -> list:
    """`training_inputs` plus bitmask gt_masks, decoded from the oracle json's RLEs."""
    from detectron2.structures import BitMasks
    from pycocotools import mask as mask_util

    inputs = training_inputs(meta, payload)
    for inp, image_meta in zip(inputs, meta["images"]):
        masks = []
        for rle in image_meta["gt_masks_bitmask_rle"]:
            rle = dict(rle)
            if isinstance(rle["counts"], str):
                rle["counts"] = rle["counts"].encode("ascii")
            masks.append(torch.from_numpy(mask_util.decode(rle).astype(bool)))
        inp["instances"].gt_masks = BitMasks(torch.stack(masks))
    return inputs


def match_instances_without_boxes(instances, meta: dict) -> list:
    """`match_instances` for references that emit no boxes (SOLOv2): class and score only."""
    expected = meta["instances"]
    scores = instances.scores.tolist()
    classes = instances.pred_classes.tolist()
    unused, order = set(range(len(instances))), []
    for i, ref in enumerate(expected):
        match = next((j for j in sorted(unused, key=lambda j: abs(j - i))
                      if classes[j] == ref["pred_class"] and abs(scores[j] - ref["score"]) <= SCORE_TOL), None)
        assert match is not None, f"reference instance {i} {ref} has no match"
        unused.discard(match)
        order.append(match)
    return order


def mask_ious_without_boxes(instances, meta: dict) -> list:
    """Mask IoU of each reference instance with its match (see match_instances_without_boxes)."""
    ours = instances.pred_masks.cpu().numpy().astype(bool)
    order = match_instances_without_boxes(instances, meta)
    return [mask_iou(ours[j], ref) for j, ref in zip(order, reference_masks(meta))]

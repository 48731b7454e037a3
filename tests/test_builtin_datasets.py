"""Data set registration: synthetic splits, custom COCO json, missing-data errors, shared data."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import Boxes, BoxMode, Instances, PolygonMasks
from detectron2.structures.masks import polygons_to_bitmask

import adet.data as adet_data
from adet.data import (
    check_dataset_available,
    register_coco_dataset,
    register_shared_datasets,
    register_synthetic,
    shared_data_root,
)
from adet.data.builtin import FRUITS_NUTS_VAL_IMAGE_IDS, fruits_nuts_split, register_fruits_nuts_splits
from adet.data.synthetic import SHAPE_CLASSES

SMALL = dict(num_train=6, num_val=4, image_size=((80, 96), (80, 96)), max_instances=4)


@pytest.fixture
def names():
    """Names registered by a test, removed afterwards."""
    registered = []
    yield registered
    for name in registered:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_default_splits_registered_without_generation():
    for split in ("train", "val"):
        meta = MetadataCatalog.get(f"synthetic_shapes_{split}")
        assert meta.thing_classes == list(SHAPE_CLASSES)
        assert meta.evaluator_type == "coco"
        assert meta.json_file.endswith(f"instances_{split}.json") and meta.image_root
    assert adet_data.register_all()  # registering again is a no-op


def test_register_synthetic_lazy(tmp_path, names):
    root = tmp_path / "syn"
    names += register_synthetic("t_syn", root=root, seed=5, **SMALL)
    assert names == ["t_syn_train", "t_syn_val"]
    assert not root.exists()  # nothing generated at registration
    dicts = DatasetCatalog.get("t_syn_train")
    assert len(dicts) == SMALL["num_train"] and root.is_dir()
    assert all(len(d["annotations"]) >= 1 for d in dicts)
    ann = dicts[0]["annotations"][0]
    assert ann["bbox_mode"] == BoxMode.XYWH_ABS and isinstance(ann["segmentation"], list)
    assert 0 <= ann["category_id"] < len(SHAPE_CLASSES)
    meta = MetadataCatalog.get("t_syn_val")
    assert meta.json_file == str(root / "annotations" / "instances_val.json")
    assert meta.image_root == str(root / "val") and meta.evaluator_type == "coco"
    assert register_synthetic("t_syn", root=root, seed=5, **SMALL) == names  # no-op
    with pytest.raises(ValueError, match="t_syn_train"):
        register_synthetic("t_syn", root=root, seed=6, **SMALL)


def test_check_dataset_available_generates_synthetic(tmp_path, names):
    names += register_synthetic("t_gen", root=tmp_path / "g", **SMALL)
    assert not (tmp_path / "g").exists()
    meta = check_dataset_available("t_gen_val")
    assert os.path.isfile(meta.json_file) and os.path.isdir(meta.image_root)


def test_coco_evaluator_on_synthetic(tmp_path, names):
    """Ground truth fed back as predictions gives AP 100 through Detectron2's COCOEvaluator."""
    names += register_synthetic("t_eval", root=tmp_path / "ev", **SMALL)
    dicts = DatasetCatalog.get("t_eval_val")
    evaluator = COCOEvaluator("t_eval_val", tasks=("bbox", "segm"), distributed=False, use_fast_impl=False)
    results = _evaluate_ground_truth_as_predictions(evaluator, dicts)
    assert results["bbox"]["AP"] > 99 and results["segm"]["AP"] > 99


def _ground_truth_as_instances(d):
    """The annotations of dataset dict ``d`` as predicted `Instances` (score 1)."""
    h, w = d["height"], d["width"]
    inst = Instances((h, w))
    boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in d["annotations"]]
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    inst.scores = torch.ones(len(boxes))
    inst.pred_classes = torch.tensor([a["category_id"] for a in d["annotations"]])
    polys = PolygonMasks([a["segmentation"] for a in d["annotations"]])
    inst.pred_masks = torch.from_numpy(np.stack([polygons_to_bitmask(p, h, w) for p in polys.polygons]))
    return inst


def _evaluate_ground_truth_as_predictions(evaluator, dicts):
    """Run ``evaluator`` on the ground truth of ``dicts`` fed back as predictions."""
    evaluator.reset()
    for d in dicts:
        evaluator.process([{"image_id": d["image_id"]}], [{"instances": _ground_truth_as_instances(d)}])
    return evaluator.evaluate()


def test_register_coco_dataset(tmp_path, names):
    images = tmp_path / "images"
    images.mkdir()
    json_file = tmp_path / "train.json"
    json_file.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "a.jpg", "height": 10, "width": 10}],
                "annotations": [
                    {"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 1, 4, 4], "area": 16,
                     "iscrowd": 0, "segmentation": [[1, 1, 5, 1, 5, 5, 1, 5]]}
                ],
                "categories": [{"id": 7, "name": "thing"}],
            }
        )
    )
    names.append("t_custom")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "missing.json")):
        register_coco_dataset("t_custom", tmp_path / "missing.json", images)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
        register_coco_dataset("t_custom", json_file, tmp_path / "nope")
    assert "t_custom" not in DatasetCatalog.list()
    register_coco_dataset("t_custom", json_file, images)
    register_coco_dataset("t_custom", str(json_file), str(images))  # same paths: no-op
    with pytest.raises(ValueError, match="already registered"):
        register_coco_dataset("t_custom", json_file, tmp_path)
    dicts = DatasetCatalog.get("t_custom")
    assert len(dicts) == 1 and dicts[0]["annotations"][0]["category_id"] == 0
    meta = MetadataCatalog.get("t_custom")
    assert meta.thing_classes == ["thing"] and meta.evaluator_type == "coco"
    # Files that disappear after registration are reported clearly.
    json_file.unlink()
    with pytest.raises(FileNotFoundError) as err:
        check_dataset_available("t_custom")
    assert str(json_file) in str(err.value) and "DETECTRON2_DATASETS" in str(err.value)


def test_missing_builtin_coco_is_explained():
    meta = MetadataCatalog.get("coco_2017_val")
    if os.path.exists(meta.json_file) and os.path.isdir(meta.image_root):
        pytest.skip("COCO 2017 is installed here")
    with pytest.raises(FileNotFoundError) as err:
        check_dataset_available("coco_2017_val")
    msg = str(err.value)
    assert "coco_2017_val" in msg and "DETECTRON2_DATASETS" in msg
    assert (meta.json_file in msg) or (meta.image_root in msg)
    assert "instances_val2017.json" in msg and "register_coco_dataset" in msg
    with pytest.raises(KeyError, match="not registered"):
        check_dataset_available("no_such_dataset")


def test_shared_data_root(monkeypatch, tmp_path):
    repo_root = Path(__file__).resolve().parent.parent
    monkeypatch.delenv("ADET_SHARED_DATA", raising=False)
    assert shared_data_root() == repo_root.parent / "shared" / "data"
    monkeypatch.setenv("ADET_SHARED_DATA", str(tmp_path))
    assert shared_data_root() == tmp_path
    assert register_shared_datasets() == []  # nothing there: nothing registered


def test_coco_tiny_registered():
    root = shared_data_root()
    if not (root / "coco_tiny").is_dir():
        pytest.skip(f"no shared data at {root}")
    assert "coco_tiny_val" in register_shared_datasets()  # idempotent
    for split in ("train", "val"):
        dicts = DatasetCatalog.get(f"coco_tiny_{split}")
        assert len(dicts) == 80
        assert sum(len(d["annotations"]) for d in dicts) > 600
        meta = MetadataCatalog.get(f"coco_tiny_{split}")
        assert len(meta.thing_classes) == 80 and meta.evaluator_type == "coco"
        assert Path(meta.json_file).resolve().is_relative_to(root.resolve())
    if (root / "fruits_nuts").is_dir():
        dicts = DatasetCatalog.get("fruits_nuts")
        assert len(dicts) == 18 and MetadataCatalog.get("fruits_nuts").thing_classes == ["date", "fig", "hazelnut"]


def _fruits_nuts_files():
    """(json_file, image_root) of the shared fruits_nuts set; skip where it is absent."""
    root = shared_data_root() / "fruits_nuts"
    if not root.is_dir():
        pytest.skip(f"no shared data at {root}")
    return root / "trainval.json", root / "images"


def test_fruits_nuts_split_is_fixed_disjoint_and_complete(names):
    json_file, image_root = _fruits_nuts_files()
    names += register_fruits_nuts_splits(json_file, image_root, name_prefix="t_fn")
    assert names == ["t_fn_train", "t_fn_val"]
    raw = json.loads(json_file.read_text())
    train, val = DatasetCatalog.get("t_fn_train"), DatasetCatalog.get("t_fn_val")
    train_ids, val_ids = [d["image_id"] for d in train], [d["image_id"] for d in val]
    assert len(train_ids) == 14 and len(val_ids) == 4
    assert sorted(val_ids) == sorted(FRUITS_NUTS_VAL_IMAGE_IDS) == [2, 6, 10, 14]
    assert not set(train_ids) & set(val_ids)
    assert set(train_ids) | set(val_ids) == {im["id"] for im in raw["images"]}
    assert sorted(os.path.basename(d["file_name"]) for d in val) == ["10.jpg", "14.jpg", "2.jpg", "6.jpg"]
    # Deterministic: the same images again, and the same as the builtin fruits_nuts_val.
    assert [d["image_id"] for d in DatasetCatalog.get("t_fn_val")] == val_ids
    assert [d["image_id"] for d in DatasetCatalog.get("fruits_nuts_val")] == val_ids
    assert [d["image_id"] for d in DatasetCatalog.get("fruits_nuts_train")] == train_ids
    # Every annotation of a held-out image is kept (32 of the 165), in all three classes.
    per_image = {i: [a for a in raw["annotations"] if a["image_id"] == i] for i in val_ids}
    for d in val:
        assert sorted(a["bbox"] for a in d["annotations"]) == sorted(a["bbox"] for a in per_image[d["image_id"]])
    assert sum(len(d["annotations"]) for d in val) == 32
    assert sum(len(d["annotations"]) for d in train) == len(raw["annotations"]) - 32
    assert {a["category_id"] for d in val for a in d["annotations"]} == {0, 1, 2}
    meta = MetadataCatalog.get("t_fn_val")
    assert meta.thing_classes == ["date", "fig", "hazelnut"] and meta.evaluator_type == "coco"
    assert not hasattr(meta, "json_file")  # so COCOEvaluator converts the split alone
    assert register_fruits_nuts_splits(json_file, image_root, name_prefix="t_fn") == names  # no-op
    with pytest.raises(ValueError, match="already registered"):
        register_fruits_nuts_splits(json_file, image_root.parent, name_prefix="t_fn")
    with pytest.raises(ValueError, match="split"):
        fruits_nuts_split(train, "test")


def test_fruits_nuts_val_coco_evaluator_has_only_the_held_out_images(tmp_path, names):
    """COCOEvaluator writes the 4 val images' ground truth alone and scores it AP 100."""
    names += register_fruits_nuts_splits(*_fruits_nuts_files(), name_prefix="t_fn_eval")
    evaluator = COCOEvaluator("t_fn_eval_val", tasks=("bbox", "segm"), distributed=False,
                              output_dir=str(tmp_path), use_fast_impl=False)
    gt = json.loads((tmp_path / "t_fn_eval_val_coco_format.json").read_text())
    assert sorted(im["id"] for im in gt["images"]) == [2, 6, 10, 14]
    assert len(gt["annotations"]) == 32
    assert [c["id"] for c in gt["categories"]] == [1, 2, 3]  # the json's own category ids
    results = _evaluate_ground_truth_as_predictions(evaluator, DatasetCatalog.get("t_fn_eval_val"))
    assert results["bbox"]["AP"] > 99 and results["segm"]["AP"] > 99

"""The synthetic shapes data set: determinism, COCO validity, polygons, occlusion, cache."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from adet.data import synthetic as syn
from adet.data.synthetic import (
    SHAPE_CLASSES,
    generate_synthetic_dataset,
    mask_to_polygons,
    render_dataset_sample,
    render_sample,
    synthetic_dataset_dir,
    synthetic_params,
)

SMALL = dict(num_train=24, num_val=8, image_size=((96, 128), (96, 128)), max_instances=6)


def _poly_mask(polygons, h, w):
    return mask_util.decode(mask_util.merge(mask_util.frPyObjects(polygons, h, w))).astype(bool)


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def _files(root):
    root = Path(root)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    return generate_synthetic_dataset(root=tmp_path_factory.mktemp("syn") / "a", seed=0, **SMALL)


def test_deterministic(small_set, tmp_path):
    again = generate_synthetic_dataset(root=tmp_path / "b", seed=0, **SMALL)
    first, second = _files(small_set["root"]), _files(again["root"])
    assert first.keys() == second.keys()
    assert all(first[k] == second[k] for k in first)  # byte-identical json, images, meta
    other = generate_synthetic_dataset(root=tmp_path / "c", seed=1, **SMALL)
    assert _files(other["root"])["annotations/instances_train.json"] != first["annotations/instances_train.json"]


def test_coco_json_valid(small_set):
    for split, num in (("train", SMALL["num_train"]), ("val", SMALL["num_val"])):
        coco = COCO(small_set[split]["json_file"])
        assert len(coco.getImgIds()) == num
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(SHAPE_CLASSES)
        assert coco.getCatIds() == list(range(1, len(SHAPE_CLASSES) + 1))
        for img in coco.loadImgs(coco.getImgIds()):
            path = Path(small_set[split]["image_root"]) / img["file_name"]
            assert path.is_file()
            anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
            assert len(anns) >= 1
            for ann in anns:
                x, y, w, h = ann["bbox"]
                assert ann["iscrowd"] == 0 and w > 0 and h > 0
                assert x >= 0 and y >= 0 and x + w <= img["width"] and y + h <= img["height"]
                m = coco.annToMask(ann).astype(bool)
                assert abs(int(m.sum()) - ann["area"]) <= 0.1 * ann["area"]
        if split == "train":
            used = {a["category_id"] for a in coco.loadAnns(coco.getAnnIds())}
            assert used == set(coco.getCatIds())


def test_json_matches_true_visible_masks(small_set):
    """Regenerate each image's masks: area, bbox and polygons describe the visible mask."""
    params = small_set["params"]
    for split in ("train", "val"):
        data = json.loads(Path(small_set[split]["json_file"]).read_text())
        anns = {}
        for a in data["annotations"]:
            anns.setdefault(a["image_id"], []).append(a)
        for i, img in enumerate(data["images"]):
            sample = render_dataset_sample(params, split, i)
            assert sample["image"].shape == (img["height"], img["width"], 3)
            assert len(sample["annotations"]) == len(anns[img["id"]])
            for truth, ann in zip(sample["annotations"], anns[img["id"]]):
                vis = truth["mask"]
                assert ann["area"] == int(vis.sum())
                ys, xs = np.nonzero(vis)
                assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
                assert ann["area"] >= params["min_visible_area"]
                assert ann["area"] >= params["min_visible_fraction"] * truth["full_area"]
                assert all(len(p) >= 6 and len(p) % 2 == 0 for p in ann["segmentation"])
                iou = _iou(_poly_mask(ann["segmentation"], img["height"], img["width"]), vis)
                assert iou >= 0.9, (split, i, iou)


def test_occlusion_and_sizes():
    visible, full, areas = [], [], []
    for i in range(60):
        for a in render_sample(np.random.default_rng([7, i]), 160, 160)["annotations"]:
            visible.append(a["area"])
            full.append(a["full_area"])
            assert _iou(_poly_mask(a["segmentation"], 160, 160), a["mask"]) >= 0.9
    visible, full = np.array(visible), np.array(full)
    assert (visible <= full).all()
    assert (visible < full).sum() >= 5  # occlusion really happens
    assert (visible < 32**2).any() and ((visible >= 32**2) & (visible < 96**2)).any()


def test_mask_to_polygons_exact_and_holes():
    square = np.zeros((10, 12), bool)
    square[2:5, 3:7] = True
    polys = mask_to_polygons(square)
    assert polys == [[3, 2, 7, 2, 7, 5, 3, 5]]
    # A ring (hole) and a diagonal-touching pixel: the union of the polygons is exact.
    ring = np.zeros((20, 20), bool)
    ring[3:15, 4:16] = True
    ring[7:10, 8:12] = False
    ring[15, 16] = True
    polys = mask_to_polygons(ring)
    assert len(polys) >= 3
    assert (_poly_mask(polys, 20, 20) == ring).all()
    assert syn.has_holes(ring) and not syn.has_holes(square)
    assert mask_to_polygons(np.zeros((4, 4), bool)) == []


def test_default_dir_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ADET_CACHE", str(tmp_path / "cache"))
    kwargs = dict(seed=3, num_train=3, num_val=2, image_size=64)
    root = synthetic_dataset_dir(**kwargs)
    assert root.parent == tmp_path / "cache" and root.name.startswith("synthetic_shapes_v1_")
    assert synthetic_dataset_dir(**{**kwargs, "seed": 4}) != root
    info = generate_synthetic_dataset(**kwargs)
    assert Path(info["root"]) == root
    meta = json.loads((root / "meta.json").read_text())
    assert meta["params"] == synthetic_params(**kwargs) and meta["version"] == syn.SYNTHETIC_VERSION
    stamp = (root / "annotations" / "instances_train.json").stat().st_mtime_ns
    assert generate_synthetic_dataset(**kwargs) == info  # reused, not rewritten
    assert (root / "annotations" / "instances_train.json").stat().st_mtime_ns == stamp
    # An incomplete data set (an image is missing) is regenerated.
    os.remove(root / "val" / "000001.jpg")
    generate_synthetic_dataset(**kwargs)
    assert (root / "val" / "000001.jpg").is_file()
    assert sorted(p.name for p in root.parent.iterdir()) == [root.name]  # no temp folders left


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = []
    real = syn._write_split

    def failing(out_dir, split, params):
        calls.append(split)
        if split == "val":
            raise KeyboardInterrupt
        return real(out_dir, split, params)

    monkeypatch.setattr(syn, "_write_split", failing)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic_dataset(root=tmp_path / "d", num_train=2, num_val=2, image_size=64)
    assert calls == ["train", "val"]
    assert list(tmp_path.iterdir()) == []


def test_refuses_foreign_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="meta.json"):
        generate_synthetic_dataset(root=tmp_path, num_train=1, num_val=1, image_size=64)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_parameter_changes_regenerate(tmp_path):
    a = generate_synthetic_dataset(root=tmp_path / "e", num_train=2, num_val=1, image_size=64, image_format="png")
    assert sorted(os.listdir(a["train"]["image_root"])) == ["000000.png", "000001.png"]
    b = generate_synthetic_dataset(root=tmp_path / "e", num_train=3, num_val=1, image_size=64, image_format="png")
    assert len(os.listdir(b["train"]["image_root"])) == 3
    with pytest.raises(ValueError):
        synthetic_params(image_format="gif")

"""Bad inputs and failures: missing data, corrupt/empty images, degenerate boxes, NaN loss,
config typos, truncated or interrupted checkpoints, test-dev result files."""
import json
import logging
import math
import os
import subprocess

import numpy as np
import pytest
import torch
from conftest import REPO, register_coco, tiny_opts, train_net_cmd
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.structures import Boxes, Instances
from detectron2.utils.env import seed_all_rng
from PIL import Image

from adet.checkpoint import AtomicCheckpointer, CheckpointLoadError
from adet.data.dataset_mapper import DatasetMapper
from adet.engine import Trainer
from adet.evaluation import COCOResultsWriter


def _write_coco(folder, images, name):
    """``images``: list of (file_name, (w, h), [bbox, ...] or None for no annotations)."""
    data = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "thing"}]}
    for i, (file_name, (w, h), boxes) in enumerate(images, start=1):
        data["images"].append({"id": i, "file_name": file_name, "width": w, "height": h})
        for box in boxes or ():
            iscrowd = int(len(box) == 5)
            data["annotations"].append({
                "id": len(data["annotations"]) + 1, "image_id": i, "category_id": 1,
                "bbox": list(box[:4]), "area": float(box[2] * box[3]), "iscrowd": iscrowd,
            })
    path = folder / f"{name}.json"
    path.write_text(json.dumps(data))
    return str(path)


def _jpg(folder, name, size=(160, 128), seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(
        folder / name)
    return name


def _train(cfg):
    seed_all_rng(cfg.SEED)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return trainer


# ----------------------------------------------------------------------------- data sets


def test_missing_dataset_path_names_path_and_env(make_cfg, tmp_path):
    missing = tmp_path / "not_here" / "instances.json"
    register_coco_instances("adet_test_missing_json", {}, str(missing), str(tmp_path))
    cfg = make_cfg(tmp_path / "out", train=("adet_test_missing_json",))
    with pytest.raises(FileNotFoundError) as e:
        Trainer(cfg)
    assert str(missing) in str(e.value) and "DETECTRON2_DATASETS" in str(e.value)


def test_missing_builtin_coco_names_path_and_env(make_cfg, tmp_path):
    json_file = MetadataCatalog.get("coco_2017_val").json_file  # under $DETECTRON2_DATASETS
    if os.path.exists(json_file):
        pytest.skip("COCO 2017 is installed here")
    with pytest.raises(FileNotFoundError) as e:
        Trainer.build_test_loader(make_cfg(tmp_path, test=("coco_2017_val",)), "coco_2017_val")
    assert json_file in str(e.value) and "DETECTRON2_DATASETS" in str(e.value)


def test_unregistered_dataset_is_named(make_cfg, tmp_path):
    cfg = make_cfg(tmp_path, train=("adet_no_such_set",))
    with pytest.raises(KeyError, match="adet_no_such_set"):
        Trainer(cfg)


@pytest.fixture
def mapper_cfg(make_cfg, tmp_path):
    return make_cfg(tmp_path / "out", train=())


@pytest.mark.slow
def test_corrupt_image_skipped_with_warning(make_cfg, tmp_path, caplog):
    _jpg(tmp_path, "good.jpg")
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8 these bytes are not a JPEG" * 10)
    js = _write_coco(tmp_path, [("good.jpg", (160, 128), [(10, 10, 60, 50)]),
                                ("corrupt.jpg", (160, 128), [(5, 5, 40, 40)])], "corrupt")
    register_coco("adet_test_corrupt", js, tmp_path)
    cfg = make_cfg(tmp_path / "out", train=("adet_test_corrupt",), max_iter=2)

    corrupt = [d for d in DatasetCatalog.get("adet_test_corrupt") if d["file_name"].endswith("corrupt.jpg")]
    with caplog.at_level(logging.WARNING, logger="adet"):
        assert DatasetMapper(cfg, is_train=True)(corrupt[0]) is None
    assert str(tmp_path / "corrupt.jpg") in caplog.text
    with pytest.raises(OSError, match="corrupt.jpg"):  # evaluation must not skip images
        DatasetMapper(cfg, is_train=False)(corrupt[0])

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="adet"):
        trainer = _train(cfg)  # Detectron2's MapDataset retries with the good image
    assert trainer.iter == 2
    assert "Skipping unreadable image" in caplog.text


@pytest.mark.slow
def test_images_without_annotations_train(make_cfg, tmp_path):
    for i in range(2):
        _jpg(tmp_path, f"empty{i}.jpg", seed=i)
    js = _write_coco(tmp_path, [("empty0.jpg", (160, 128), None),
                                ("empty1.jpg", (160, 128), None)], "empty")
    register_coco("adet_test_empty", js, tmp_path)
    cfg = make_cfg(tmp_path / "out", train=("adet_test_empty",), max_iter=2,
                   DATALOADER__FILTER_EMPTY_ANNOTATIONS=False)
    batch = next(iter(Trainer.build_train_loader(cfg)))
    assert [len(x["instances"]) for x in batch] == [0, 0]
    _train(cfg)
    metrics = [json.loads(line) for line in (tmp_path / "out" / "metrics.json").open()]
    assert math.isfinite(metrics[-1]["total_loss"])


def test_degenerate_and_crowd_boxes_dropped(mapper_cfg, tmp_path):
    _jpg(tmp_path, "img.jpg")
    record = {
        "file_name": str(tmp_path / "img.jpg"), "height": 128, "width": 160, "image_id": 1,
        "annotations": [
            {"bbox": [10, 10, 50, 40], "bbox_mode": 1, "category_id": 0, "iscrowd": 0},
            {"bbox": [30, 30, 0, 20], "bbox_mode": 1, "category_id": 0, "iscrowd": 0},
            {"bbox": [30, 30, 20, 0], "bbox_mode": 1, "category_id": 0, "iscrowd": 0},
            {"bbox": [0, 0, 80, 80], "bbox_mode": 1, "category_id": 0, "iscrowd": 1},
        ],
    }
    out = DatasetMapper(mapper_cfg, is_train=True)(record)
    assert len(out["instances"]) == 1
    box = out["instances"].gt_boxes.tensor[0]
    assert (box[2:] > box[:2]).all()


def test_extra_targets_hook(mapper_cfg, tmp_path):
    class WithShape(DatasetMapper):
        def add_extra_targets(self, dataset_dict, image, transforms):
            dataset_dict["extra"] = image.shape[:2]

    _jpg(tmp_path, "img.jpg")
    record = {"file_name": str(tmp_path / "img.jpg"), "height": 128, "width": 160,
              "image_id": 1, "annotations": []}
    out = WithShape(mapper_cfg, is_train=True)(record)
    assert out["extra"] == tuple(out["image"].shape[1:])


# --------------------------------------------------------------------- training failures


@pytest.mark.slow
def test_nan_loss_stops_with_clear_message(coco_tiny, make_cfg, tmp_path):
    cfg = make_cfg(tmp_path, train=("adet_test_train2",), max_iter=6,
                   SOLVER__CHECKPOINT_PERIOD=2)
    seed_all_rng(0)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    forward = trainer.model.forward

    def nan_from_iteration_3(batched_inputs):
        losses = forward(batched_inputs)
        if trainer.iter >= 3:
            losses = {k: v * float("nan") for k, v in losses.items()}
        return losses

    trainer.model.forward = nan_from_iteration_3
    with pytest.raises(FloatingPointError) as e:
        trainer.train()
    msg = str(e.value)
    assert "iteration=3" in msg and "loss_" in msg and "nan" in msg
    good = tmp_path / "model_0000001.pth"
    assert str(good) in msg
    assert (tmp_path / "last_checkpoint").read_text() == good.name
    state = torch.load(good, map_location="cpu", weights_only=False)["model"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


@pytest.mark.slow
def test_wrong_config_key_is_reported(tmp_path):
    """A typo in the YAML: Detectron2's KeyError, before any worker process is started."""
    cfg_file = tmp_path / "typo.yaml"
    cfg_file.write_text("MODEL:\n  RESNETS:\n    DEPTHH: 18\n")
    cmd = train_net_cmd("--num-gpus", 2, "--config-file", cfg_file, *tiny_opts(tmp_path))
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "KeyError: 'Non-existent config key: MODEL.RESNETS.DEPTHH'" in proc.stderr
    assert "_cpu_worker" not in proc.stderr and not (tmp_path / "log.txt").exists()


def test_wrong_config_key_on_command_line(make_cfg, tmp_path):
    with pytest.raises(AssertionError, match="Non-existent key: MODEL.RESNETS.DEPTHH"):
        make_cfg(tmp_path, MODEL__RESNETS__DEPTHH=18)


# ------------------------------------------------------------------------- checkpoints


def _small_checkpointer(folder):
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 2))
    return AtomicCheckpointer(model, str(folder))


def test_truncated_checkpoint_clear_error(tmp_path):
    ckpt = _small_checkpointer(tmp_path)
    ckpt.save("model_0000009")
    path = tmp_path / "model_0000009.pth"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointLoadError, match="model_0000009.pth.*truncated"):
        _small_checkpointer(tmp_path).resume_or_load("", resume=True)


def test_truncated_checkpoint_on_resume(coco_tiny, make_cfg, tmp_path):
    (tmp_path / "model_0000003.pth").write_bytes(b"PK\x03\x04 half a zip file")
    (tmp_path / "last_checkpoint").write_text("model_0000003.pth")
    trainer = Trainer(make_cfg(tmp_path, train=("adet_test_train2",)))
    with pytest.raises(CheckpointLoadError, match=str(tmp_path / "model_0000003.pth")):
        trainer.resume_or_load(resume=True)


def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    ckpt = _small_checkpointer(tmp_path)
    ckpt.save("model_0000001")

    def killed_midway(obj, f):
        f.write(b"partial bytes")
        raise KeyboardInterrupt  # as if the job were killed while writing

    monkeypatch.setattr("adet.checkpoint.atomic.torch.save", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save("model_0000002")
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    monkeypatch.undo()
    _small_checkpointer(tmp_path).resume_or_load("", resume=True)  # still loads


def test_nonfinite_weights_not_saved(tmp_path):
    ckpt = _small_checkpointer(tmp_path)
    ckpt.save("model_0000001")
    with torch.no_grad():
        ckpt.model[1].weight[0, 0] = float("nan")
    ckpt.save("model_0000002")
    assert not (tmp_path / "model_0000002.pth").exists()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"


# -------------------------------------------------------------------------- evaluation


def test_test_dev_writes_result_file_only(make_cfg, tmp_path):
    _jpg(tmp_path, "a.jpg")
    js = _write_coco(tmp_path, [("a.jpg", (160, 128), None)], "image_info")
    data = json.loads(open(js).read())
    del data["annotations"]  # test-dev jsons have no annotations at all
    open(js, "w").write(json.dumps(data))
    register_coco("adet_test_test-dev", js, tmp_path)
    DatasetCatalog.get("adet_test_test-dev")  # as the test loader does: sets the id map
    cfg = make_cfg(tmp_path / "out", test=("adet_test_test-dev",))

    evaluator = Trainer.build_evaluator(cfg, "adet_test_test-dev")
    assert isinstance(evaluator, COCOResultsWriter)
    evaluator.reset()
    pred = Instances((128, 160), pred_boxes=Boxes(torch.tensor([[1.0, 2.0, 30.0, 40.0]])),
                     scores=torch.tensor([0.9]), pred_classes=torch.tensor([0]))
    evaluator.process([{"image_id": 1}], [{"instances": pred}])
    assert evaluator.evaluate() == {}
    out = tmp_path / "out" / "inference" / "adet_test_test-dev" / "coco_instances_results.json"
    results = json.loads(out.read_text())
    assert results[0]["image_id"] == 1 and results[0]["category_id"] == 1
    assert results[0]["bbox"] == pytest.approx([1.0, 2.0, 29.0, 38.0])

"""Shared fixtures: the shared data folder, small COCO subsets, a tiny training config."""
import json
import os
import sys
from pathlib import Path

import pytest
from adet.config import get_cfg
from adet.data import register_coco_dataset

REPO = Path(__file__).resolve().parents[1]
TRAIN_NET = REPO / "tools" / "train_net.py"


def shared_data_dir() -> Path:
    """``$ADET_SHARED_DATA`` or ``<repo>/../shared/data``."""
    return Path(os.environ.get("ADET_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not (path / "coco_tiny").is_dir():
        pytest.skip(f"shared data not found at {path} (set ADET_SHARED_DATA)")
    return path


def write_coco_subset(src_json, dst_json, num_images):
    """Write the ``num_images`` images with the smallest ids of a COCO json, with all
    their annotations."""
    with open(src_json) as f:
        data = json.load(f)
    images = sorted(data["images"], key=lambda im: im["id"])[:num_images]
    keep = {im["id"] for im in images}
    data["images"] = images
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
    with open(dst_json, "w") as f:
        json.dump(data, f)
    return str(dst_json)


def register_coco(name, json_file, image_root):
    """Register a COCO-format set with adet's helper (no-op if already registered)."""
    return register_coco_dataset(name, str(json_file), str(image_root))


@pytest.fixture(scope="session")
def coco_tiny(shared_data, tmp_path_factory):
    """coco_tiny sets: dict name -> (json, image_root), all registered.

    ``coco_tiny_train``: the 80 train2017 images (crowd annotations included), registered
    by ``adet.data``; ``adet_test_train2``: two of them (every batch of 2 holds both, so
    the data order cannot change results); ``adet_test_val4``: 4 val2017 images.
    """
    root = shared_data / "coco_tiny"
    tmp = tmp_path_factory.mktemp("coco_tiny_subsets")
    train_json = root / "annotations" / "instances_train2017.json"
    sets = {
        "coco_tiny_train": (str(train_json), str(root / "train2017")),
        "adet_test_train2": (write_coco_subset(train_json, tmp / "train2.json", 2),
                             str(root / "train2017")),
        "adet_test_val4": (write_coco_subset(root / "annotations" / "instances_val2017.json",
                                             tmp / "val4.json", 4), str(root / "val2017")),
    }
    for name, (js, img_root) in sets.items():
        register_coco(name, js, img_root)
    return sets


def tiny_opts(output_dir, train=("coco_tiny_train",), test=(), max_iter=4, **extra):
    """``KEY VALUE`` strings for a tiny, deterministic CPU run (for the CLI and in-process).

    FCOS with a ResNet-18 and a 32-channel FPN, one conv per head tower, 80 COCO classes.
    ``extra`` uses ``KEY__SUB`` for ``KEY.SUB``.
    """
    opts = {
        "MODEL.META_ARCHITECTURE": "OneStageDetector",
        "MODEL.PROPOSAL_GENERATOR.NAME": "FCOS",
        "MODEL.BACKBONE.NAME": "build_fcos_resnet_fpn_backbone",
        "MODEL.FCOS.NUM_CLASSES": "80",
        "MODEL.FCOS.NUM_CLS_CONVS": "1",
        "MODEL.FCOS.NUM_BOX_CONVS": "1",
        "MODEL.FCOS.NUM_SHARE_CONVS": "0",
        "MODEL.FCOS.INFERENCE_TH_TEST": "0.0",  # an untrained model scores low
        "MODEL.DEVICE": "cpu",
        "MODEL.WEIGHTS": "",
        "MODEL.MASK_ON": "False",
        "MODEL.RESNETS.DEPTH": "18",
        "MODEL.RESNETS.RES2_OUT_CHANNELS": "64",
        "MODEL.RESNETS.OUT_FEATURES": "['res3','res4','res5']",
        "MODEL.FPN.IN_FEATURES": "['res3','res4','res5']",
        "MODEL.FPN.OUT_CHANNELS": "32",
        "INPUT.MIN_SIZE_TRAIN": "(128,)",
        "INPUT.MAX_SIZE_TRAIN": "192",
        "INPUT.MIN_SIZE_TEST": "128",
        "INPUT.MAX_SIZE_TEST": "192",
        "INPUT.RANDOM_FLIP": "none",
        "DATASETS.TRAIN": repr(tuple(train)),
        "DATASETS.TEST": repr(tuple(test)),
        "DATALOADER.NUM_WORKERS": "0",
        "SOLVER.IMS_PER_BATCH": "2",
        "SOLVER.BASE_LR": "0.001",
        "SOLVER.MAX_ITER": str(max_iter),
        "SOLVER.STEPS": "()",
        "SOLVER.WARMUP_ITERS": "2",
        "SOLVER.CHECKPOINT_PERIOD": "100000",
        "TEST.EVAL_PERIOD": "0",
        "TEST.DETECTIONS_PER_IMAGE": "50",
        "SEED": "0",
        "OUTPUT_DIR": str(output_dir),
    }
    opts.update({k.replace("__", "."): str(v) for k, v in extra.items()})
    return [x for kv in opts.items() for x in kv]


@pytest.fixture
def make_cfg():
    """``make_cfg(output_dir, **tiny_opts kwargs)`` -> frozen CfgNode."""

    def _make(output_dir, **kwargs):
        cfg = get_cfg()  # adet's: every method's keys
        cfg.merge_from_list(tiny_opts(output_dir, **kwargs))
        cfg.freeze()
        return cfg

    return _make


def train_net_cmd(*args):
    return [sys.executable, str(TRAIN_NET), *map(str, args)]

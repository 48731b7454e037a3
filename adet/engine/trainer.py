"""adet's Trainer: Detectron2's `DefaultTrainer` with adet's mapper, evaluators, checks
and crash-safe checkpoints. Detectron2 runs the loop and the hooks (LR schedule,
periodic checkpoints, evaluation, metrics.json / TensorBoard / console with ETA)."""
import importlib
import itertools
import logging
import os
import weakref

import torch

from detectron2.data import MetadataCatalog, build_detection_test_loader, build_detection_train_loader
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase
from detectron2.solver.build import maybe_add_gradient_clipping
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators, SemSegEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch.nn.parallel import DistributedDataParallel

from adet.checkpoint import AdetCheckpointer
from adet.data.builtin import check_dataset_available
from adet.data.dataset_mapper import DatasetMapper
from adet.evaluation import COCOPanopticPQEvaluator, COCOResultsWriter

__all__ = ["Trainer", "TrainingAutocast", "build_amp_trainer", "check_datasets", "import_adet_modeling"]

logger = logging.getLogger(__name__)


def import_adet_modeling() -> None:
    """Import ``adet.modeling`` so its architectures are in Detectron2's registries."""
    importlib.import_module("adet.modeling")


def check_datasets(names) -> None:
    """Raise a clear error (path, DETECTRON2_DATASETS) unless every data set is on disk."""
    for name in names:
        check_dataset_available(name)


def build_adamw_optimizer(cfg, model) -> torch.optim.Optimizer:
    """SOLVER.OPTIMIZER "ADAMW" (SparseInst's recipe): AdamW (AMSGRAD), WEIGHT_DECAY on
    every parameter, BACKBONE_MULTIPLIER on the backbone's LR; CLIP_GRADIENTS with
    CLIP_TYPE "full_model" clips the norm of all gradients together, other types are
    Detectron2's."""
    solver = cfg.SOLVER
    params, memo = [], set()
    for name, value in model.named_parameters(recurse=True):
        if not value.requires_grad or value in memo:
            continue
        memo.add(value)
        lr = solver.BASE_LR * (solver.BACKBONE_MULTIPLIER if "backbone" in name else 1.0)
        params.append({"params": [value], "lr": lr, "weight_decay": solver.WEIGHT_DECAY})
    optim_cls, kwargs = torch.optim.AdamW, {"amsgrad": solver.AMSGRAD}
    clip = solver.CLIP_GRADIENTS
    if clip.CLIP_TYPE != "full_model":
        optim_cls = maybe_add_gradient_clipping(cfg, optim_cls)
    elif clip.ENABLED and clip.CLIP_VALUE > 0.0:
        base_cls = optim_cls

        class FullModelGradientClippingOptimizer(base_cls):
            def step(self, closure=None):
                all_params = itertools.chain(*[g["params"] for g in self.param_groups])
                torch.nn.utils.clip_grad_norm_(all_params, clip.CLIP_VALUE)
                return super().step(closure=closure)

        optim_cls = FullModelGradientClippingOptimizer
    return optim_cls(params, solver.BASE_LR, **kwargs)


def _ddp(model):
    """`create_ddp_model` that also works for CPU models (gloo): no ``device_ids`` there."""
    if comm.get_world_size() == 1:
        return model
    on_cpu = next(model.parameters()).device.type == "cpu"
    device_ids = None if on_cpu else [comm.get_local_rank()]
    return DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)


class TrainingAutocast(torch.nn.Module):
    """Runs the wrapped model's training forward (losses included) under
    ``torch.autocast(device_type, dtype)``; inference (eval mode) runs as is. The backward
    pass and the optimizer step stay outside autocast, as PyTorch recommends."""

    def __init__(self, model: torch.nn.Module, device_type: str = "cpu", dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.model = model
        self.device_type = device_type
        self.dtype = dtype

    def forward(self, *args, **kwargs):
        with torch.autocast(self.device_type, dtype=self.dtype, enabled=self.training):
            return self.model(*args, **kwargs)


def build_amp_trainer(cfg, model, data_loader, optimizer) -> TrainerBase:
    """SOLVER.AMP.ENABLED. CUDA: Detectron2's `AMPTrainer` (float16 autocast, gradient
    scaling). CPU, where `AMPTrainer` cannot run: `SimpleTrainer` on `TrainingAutocast`
    with bfloat16, which has float32's exponent range and so needs no gradient scaling."""
    device = torch.device(cfg.MODEL.DEVICE).type
    if device == "cuda":
        return AMPTrainer(model, data_loader, optimizer)
    if device == "cpu":
        return SimpleTrainer(TrainingAutocast(model, "cpu", torch.bfloat16), data_loader, optimizer)
    raise ValueError(f"SOLVER.AMP.ENABLED: mixed-precision training runs on MODEL.DEVICE 'cuda' "
                     f"(float16) or 'cpu' (bfloat16), not {cfg.MODEL.DEVICE!r}")


class Trainer(DefaultTrainer):
    """`DefaultTrainer` for adet models.

    Differences: data sets are checked before anything is built; adet's `DatasetMapper`;
    COCO evaluation (bbox, + segm with MASK_ON) with the official COCO API, or a result
    file for the COCO server on ``*test-dev*`` sets, + PQ and stuff mIoU on panoptic
    sets; `AdetCheckpointer` (atomic saves, URL weights, fine-tuning with another number
    of classes); DDP on CPU (gloo); a NaN/Inf loss stops training with the iteration,
    the losses and the last good checkpoint in the message.
    """

    def __init__(self, cfg):
        # DefaultTrainer.__init__ hard-codes DetectionCheckpointer and a CUDA-only DDP
        # wrapper; the construction is otherwise the same, in the same order.
        check_datasets(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST))
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())

        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = _ddp(model)
        if cfg.SOLVER.AMP.ENABLED:
            self._trainer = build_amp_trainer(cfg, model, data_loader, optimizer)
        else:
            self._trainer = SimpleTrainer(model, data_loader, optimizer)

        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = AdetCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    # Detectron2 v0.6's DefaultTrainer saves only the iteration and the hooks' states: the
    # optimizer (momentum) and AMP grad scaler held by the inner SimpleTrainer/AMPTrainer
    # were lost on --resume. Later Detectron2 versions save them the same way.
    def state_dict(self):
        ret = super().state_dict()
        ret["_trainer"] = self._trainer.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])
        else:
            logger.warning("The checkpoint has no optimizer state; the optimizer starts afresh.")

    def train(self):
        try:
            return super().train()
        except FloatingPointError as e:
            last = self.checkpointer.get_checkpoint_file() if self.checkpointer.has_checkpoint() else ""
            raise FloatingPointError(
                f"Training stopped: {e}\nThe last good checkpoint is "
                f"{last or 'none (no checkpoint was saved before)'}. Lower SOLVER.BASE_LR or "
                f"raise SOLVER.WARMUP_ITERS, then restart (--resume continues from it)."
            ) from e

    @classmethod
    def build_model(cls, cfg):
        import_adet_modeling()
        return super().build_model(cfg)

    @classmethod
    def build_optimizer(cls, cfg, model):
        """SOLVER.OPTIMIZER: "SGD" (default) is Detectron2's optimizer; "ADAMW" SparseInst's."""
        if cfg.SOLVER.OPTIMIZER == "ADAMW":
            return build_adamw_optimizer(cfg, model)
        if cfg.SOLVER.OPTIMIZER != "SGD":
            raise ValueError(f"SOLVER.OPTIMIZER must be 'SGD' or 'ADAMW', got {cfg.SOLVER.OPTIMIZER!r}")
        return super().build_optimizer(cfg, model)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=DatasetMapper(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        check_datasets([dataset_name])
        return build_detection_test_loader(cfg, dataset_name, mapper=DatasetMapper(cfg, False))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        """COCO box (+ mask) AP; on panoptic data sets (evaluator_type
        "coco_panoptic_seg", e.g. coco_2017_val_panoptic_separated) also PQ
        (`COCOPanopticPQEvaluator`) and the stuff segmentation (SemSegEvaluator)."""
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
        evaluator_cls = COCOResultsWriter if "test-dev" in dataset_name else COCOEvaluator
        coco = evaluator_cls(dataset_name, tasks=tasks, output_dir=output_folder, use_fast_impl=False)
        if getattr(MetadataCatalog.get(dataset_name), "evaluator_type", None) != "coco_panoptic_seg":
            return coco
        return DatasetEvaluators([
            COCOPanopticPQEvaluator(dataset_name, output_folder),
            coco,
            SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder),
        ])

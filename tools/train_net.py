#!/usr/bin/env python
"""Train or evaluate an adet model with Detectron2's trainer.

Examples:
    # one GPU
    python tools/train_net.py --config-file configs/FCOS-Detection/R_50_1x.yaml
    # 8 GPUs; evaluate a checkpoint
    python tools/train_net.py --num-gpus 8 --config-file CFG
    python tools/train_net.py --eval-only --config-file CFG MODEL.WEIGHTS model_final.pth
    # 2 CPU processes (gloo), a custom COCO-format data set
    python tools/train_net.py --num-gpus 2 --dist-url auto \\
        --register-coco my_train ann.json images/ --config-file CFG \\
        DATASETS.TRAIN "('my_train',)" MODEL.DEVICE cpu
    # torchrun (or one srun task per GPU with --dist-url env://)
    torchrun --nproc_per_node 8 tools/train_net.py --config-file CFG
    # continue an interrupted run in the same OUTPUT_DIR
    python tools/train_net.py --config-file CFG --resume
"""
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from detectron2.engine import default_argument_parser, default_setup  # noqa: E402
from detectron2.evaluation import verify_results  # noqa: E402
from detectron2.utils import comm  # noqa: E402

from adet.checkpoint import AdetCheckpointer  # noqa: E402
from adet.config import get_cfg  # noqa: E402
from adet.data import register_coco_dataset  # noqa: E402
from adet.engine import Trainer, launch  # noqa: E402
from adet.utils.visualization import save_prediction_pictures  # noqa: E402

logger = logging.getLogger("adet.train_net")


def register_datasets(specs) -> None:
    """Register ``(name, json_file, image_root)`` triples given with --register-coco."""
    for name, json_file, image_root in specs or ():
        register_coco_dataset(name, json_file, image_root)


def load_config(args):
    cfg = get_cfg()
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("MODEL.DEVICE=%s but no CUDA device is available: using the CPU", cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"
    return cfg


def setup(args):
    cfg = load_config(args)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    register_datasets(args.register_coco)  # in every process: spawned ones start empty
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        AdetCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    results = trainer.train()
    if comm.is_main_process() and args.vis_images > 0 and cfg.DATASETS.TEST:
        model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
        save_prediction_pictures(cfg, model, cfg.DATASETS.TEST[0], os.path.join(cfg.OUTPUT_DIR, "pictures"),
                                 args.vis_images)
    return results


def argument_parser():
    parser = default_argument_parser(epilog=__doc__)
    parser.add_argument(
        "--register-coco", nargs=3, action="append", metavar=("NAME", "JSON", "IMAGE_ROOT"),
        help="register a COCO-format data set under NAME before training (repeatable); "
        "use NAME in DATASETS.TRAIN / DATASETS.TEST",
    )
    parser.add_argument(
        "--vis-images", type=int, default=4, metavar="N",
        help="after training, save N pictures of predictions on the first test set to "
        "OUTPUT_DIR/pictures (0: none)",
    )
    return parser


def cli(argv=None):
    args = argument_parser().parse_args(argv)
    device = load_config(args).MODEL.DEVICE  # fails early on a bad config, before spawning
    print("Command Line Args:", args)
    launch(
        main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
        dist_url=args.dist_url, args=(args,), device=device,
    )


if __name__ == "__main__":
    cli()

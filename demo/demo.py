#!/usr/bin/env python
"""Run an adet model on images, a folder, a glob, a video or a webcam, and save the
pictures with its predictions drawn by Detectron2's Visualizer, labelled with the data
set's own class names.

Examples:
    # a published model (config and weights from the model zoo, see MODEL_ZOO.md)
    python demo/demo.py --model-zoo CondInst_MS_R_50_1x --input photos/ --output out/
    # a config and weights (a path or a URL); files, folders and globs
    python demo/demo.py --config-file configs/CondInst/MS_R_50_1x.yaml \\
        --input a.jpg "more/*.png" --output out/ --confidence-threshold 0.5 \\
        --opts MODEL.WEIGHTS output/model_final.pth MODEL.DEVICE cuda
    # a model fine-tuned on a custom COCO-format data set: its class names
    python demo/demo.py --config-file CFG --register-coco my_val val.json images/ \\
        --dataset my_val --input images/ --output out/ --opts MODEL.WEIGHTS model_final.pth
    # a video file (written to out/<name>.mp4), or the webcam (shown in a window)
    python demo/demo.py --config-file CFG --video-input clip.mp4 --output out/ --opts MODEL.WEIGHTS W
    python demo/demo.py --config-file CFG --webcam --opts MODEL.WEIGHTS W
"""
import argparse
import glob
import importlib.util
import logging
import os
import sys
from pathlib import Path
from typing import Iterator, List

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm import tqdm  # noqa: E402
from detectron2.data.detection_utils import read_image  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

from adet import model_zoo  # noqa: E402
from predictor import Predictor, dataset_metadata, draw, draw_video, keep_confident  # noqa: E402

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
logger = logging.getLogger("adet.demo")


def _train_net():
    """tools/train_net.py as a module: the demo uses its config and data set helpers."""
    spec = importlib.util.spec_from_file_location("adet_train_net", REPO / "tools" / "train_net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--config-file", metavar="FILE", help="config file")
    model.add_argument("--model-zoo", metavar="NAME", help="a model of MODEL_ZOO.md: its config and weights")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", metavar="PATH", help="image files, folders or globs")
    source.add_argument("--video-input", metavar="FILE", help="a video file")
    source.add_argument("--webcam", action="store_true", help="the webcam (device 0)")
    parser.add_argument("--output", metavar="DIR", help="folder for the results (needed for --input "
                        "and --video-input; with --webcam, the stream is shown when it is not given)")
    parser.add_argument("--confidence-threshold", type=float, default=0.5, help="draw predictions "
                        "scoring at least this (the model's own test thresholds apply first)")
    parser.add_argument("--dataset", metavar="NAME", help="data set whose class names label the predictions "
                        "(default: the config's first DATASETS.TEST, else DATASETS.TRAIN)")
    parser.add_argument("--register-coco", nargs=3, action="append", metavar=("NAME", "JSON", "IMAGE_ROOT"),
                        help="register a COCO-format data set under NAME (repeatable), as for train_net.py")
    parser.add_argument("--max-frames", type=int, default=0, help="stop a video or webcam after N frames")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE pairs for the config")
    return parser


def setup_cfg(args, train_net):
    """The config: train_net's loader (CUDA falls back to CPU), from the zoo or a file."""
    if args.model_zoo:
        args.config_file = model_zoo.get_config_file(args.model_zoo)
        args.opts = ["MODEL.WEIGHTS", model_zoo.get_checkpoint_url(args.model_zoo)] + list(args.opts)
    cfg = train_net.load_config(args)
    cfg.freeze()
    return cfg


def metadata_name(args, cfg) -> str:
    names = [args.dataset] if args.dataset else list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN)
    return names[0] if names else "coco_2017_val"


def expand_inputs(patterns: List[str]) -> List[str]:
    """Image files named by paths, folders (their images, sorted) and globs."""
    files = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            files += sorted(str(p) for p in Path(pattern).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        elif glob.has_magic(pattern):
            files += sorted(p for p in glob.glob(pattern) if os.path.isfile(p))
        elif os.path.isfile(pattern):
            files.append(pattern)
        else:
            raise FileNotFoundError(f"--input {pattern!r}: no such file or folder")
    if not files:
        raise FileNotFoundError(f"--input {' '.join(patterns)}: no image files found")
    return files


def output_path(folder: str, image_file: str) -> str:
    stem, ext = os.path.splitext(os.path.basename(image_file))
    return os.path.join(folder, stem + (ext if ext.lower() in (".jpg", ".jpeg", ".png") else ".png"))


def run_images(predictor, files: List[str], args, metadata) -> List[str]:
    os.makedirs(args.output, exist_ok=True)
    written = []
    for path in tqdm(files, desc="images", unit="img"):
        image = read_image(path, format="BGR")
        instances = keep_confident(predictor(image), args.confidence_threshold)
        written.append(output_path(args.output, path))
        Image.fromarray(draw(image, instances, metadata)).save(written[-1])
    logger.info("Wrote %d pictures to %s", len(written), args.output)
    return written


def _cv2():
    try:
        import cv2
    except ImportError as e:
        raise ImportError("Videos and the webcam need OpenCV: pip install opencv-python") from e
    return cv2


def _frames(capture, max_frames: int) -> Iterator[np.ndarray]:
    count = 0
    while not max_frames or count < max_frames:
        ok, frame = capture.read()
        if not ok:
            return
        count += 1
        yield frame


def _writer(cv2, path: str, capture, fps_default: float = 30.0):
    width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    fps = capture.get(cv2.CAP_PROP_FPS) or fps_default
    return cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))


def run_video(predictor, args, metadata) -> str:
    cv2 = _cv2()
    capture = cv2.VideoCapture(args.video_input)
    if not capture.isOpened():
        raise FileNotFoundError(f"Cannot open video {args.video_input!r}")
    os.makedirs(args.output, exist_ok=True)
    path = os.path.join(args.output, Path(args.video_input).stem + ".mp4")
    writer = _writer(cv2, path, capture)
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    frames = _frames(capture, args.max_frames)
    try:
        for drawn in tqdm(draw_video(predictor, frames, metadata, args.confidence_threshold), total=total,
                          desc="frames", unit="frame"):
            writer.write(drawn)
    finally:
        writer.release()
        capture.release()
    logger.info("Wrote %s", path)
    return path


def run_webcam(predictor, args, metadata) -> None:
    cv2 = _cv2()
    capture = cv2.VideoCapture(0)
    if not capture.isOpened():
        raise RuntimeError("Cannot open the webcam (device 0)")
    writer = None
    if args.output:
        os.makedirs(args.output, exist_ok=True)
        writer = _writer(cv2, os.path.join(args.output, "webcam.mp4"), capture)
    try:
        for drawn in tqdm(draw_video(predictor, _frames(capture, args.max_frames), metadata,
                                     args.confidence_threshold), desc="webcam", unit="frame"):
            if writer is not None:
                writer.write(drawn)
                continue
            cv2.imshow("adet demo (Esc quits)", drawn)
            if cv2.waitKey(1) == 27:
                break
    finally:
        capture.release()
        if writer is not None:
            writer.release()
        cv2.destroyAllWindows()


def main(argv=None):
    args = argument_parser().parse_args(argv)
    if (args.input or args.video_input) and not args.output:
        raise SystemExit("--output DIR is needed for --input and --video-input")
    train_net = _train_net()
    train_net.register_datasets(args.register_coco)
    cfg = setup_cfg(args, train_net)
    metadata = dataset_metadata(metadata_name(args, cfg))
    predictor = Predictor(cfg)
    if args.input:
        return run_images(predictor, expand_inputs(args.input), args, metadata)
    if args.video_input:
        return run_video(predictor, args, metadata)
    return run_webcam(predictor, args, metadata)


if __name__ == "__main__":
    setup_logger(name="fvcore")
    setup_logger(name="adet")
    main()

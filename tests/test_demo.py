"""demo/demo.py on a few coco_tiny images, a folder, a glob and a small generated video,
with a tiny randomly initialised FCOS (CPU)."""
import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from PIL import Image

from conftest import tiny_opts

from adet.config import get_cfg

REPO = Path(__file__).resolve().parents[1]


def _load_demo():
    spec = importlib.util.spec_from_file_location("adet_demo", REPO / "demo" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


demo = _load_demo()


def _opts(tmp_path, weights, num_classes=80):
    """tiny_opts minus the data sets, as --opts; the model and its weights file."""
    opts = tiny_opts(tmp_path / "out", MODEL__FCOS__NUM_CLASSES=num_classes, MODEL__WEIGHTS=weights)
    i = opts.index("DATASETS.TRAIN")
    return opts[:i] + opts[i + 4:]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Weights of the tiny 80-class and 3-class models (random initialisation)."""
    folder = tmp_path_factory.mktemp("weights")
    paths = {}
    for n in (80, 3):
        cfg = get_cfg()
        cfg.merge_from_list(tiny_opts(folder, MODEL__FCOS__NUM_CLASSES=n))
        torch.manual_seed(0)
        paths[n] = folder / f"tiny_{n}.pth"
        torch.save({"model": build_model(cfg).state_dict()}, paths[n])
    return paths


@pytest.fixture(scope="module")
def images(shared_data, tmp_path_factory):
    """Three coco_tiny val images copied into a folder, one of them as PNG."""
    folder = tmp_path_factory.mktemp("images")
    sources = sorted((shared_data / "coco_tiny" / "val2017").glob("*.jpg"))[:3]
    for src in sources[:2]:
        shutil.copy(src, folder / src.name)
    Image.open(sources[2]).save(folder / (sources[2].stem + ".png"))
    return folder


def _check_picture(path: Path, like: Path):
    with Image.open(path) as picture:
        picture.verify()
    with Image.open(path) as picture, Image.open(like) as original:
        assert picture.size == original.size


def test_images_folder_and_glob(weights, images, tmp_path):
    files = sorted(images.iterdir())
    written = demo.main(["--config-file", str(REPO / "configs/FCOS-Detection/R_50_1x.yaml"),
                         "--input", str(files[0]), str(images / "*.png"), "--output", str(tmp_path / "a"),
                         "--confidence-threshold", "0.0", "--opts", *_opts(tmp_path, weights[80])])
    assert sorted(Path(p).name for p in written) == sorted([files[0].name, files[-1].name])
    for path in written:
        _check_picture(Path(path), images / Path(path).name)
    folder_run = demo.main(["--config-file", str(REPO / "configs/FCOS-Detection/R_50_1x.yaml"), "--input",
                            str(images), "--output", str(tmp_path / "b"), "--opts", *_opts(tmp_path, weights[80])])
    assert sorted(Path(p).name for p in folder_run) == sorted(p.name for p in files)


def test_confidence_threshold(weights, images, tmp_path):
    png = next(images.glob("*.png"))
    runs = {}
    for threshold in ("0.0", "1.01"):
        out = tmp_path / threshold
        demo.main(["--config-file", str(REPO / "configs/FCOS-Detection/R_50_1x.yaml"), "--input", str(png),
                   "--output", str(out), "--confidence-threshold", threshold,
                   "--opts", *_opts(tmp_path, weights[80])])
        runs[threshold] = np.asarray(Image.open(out / png.name).convert("RGB"), dtype=np.float64)
    original = np.asarray(Image.open(png).convert("RGB"), dtype=np.float64)
    assert np.abs(runs["1.01"] - original).mean() < 1.0  # nothing drawn above a score of 1
    assert np.abs(runs["0.0"] - original).mean() > 1.0  # an untrained model's many boxes


def test_custom_dataset_class_names(weights, shared_data, tmp_path):
    root = shared_data / "fruits_nuts"
    name = "demo_test_fruits"
    demo._train_net().register_datasets([(name, str(root / "trainval.json"), str(root / "images"))])
    assert list(demo.dataset_metadata(name).thing_classes) == ["date", "fig", "hazelnut"]
    image = sorted((root / "images").iterdir())[0]
    args = ["--config-file", str(REPO / "configs/FCOS-Detection/R_50_1x.yaml"), "--input", str(image),
            "--output", str(tmp_path / "fruits"), "--confidence-threshold", "0.0",
            "--register-coco", name, str(root / "trainval.json"), str(root / "images"), "--dataset", name]
    written = demo.main(args + ["--opts", *_opts(tmp_path, weights[3], num_classes=3)])
    _check_picture(Path(written[0]), image)
    with pytest.raises(ValueError, match="names 3 classes"):  # an 80-class model, a 3-class data set
        demo.main(args + ["--opts", *_opts(tmp_path, weights[80])])


def test_missing_input_is_a_clear_error(weights, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.jpg"):
        demo.main(["--config-file", str(REPO / "configs/FCOS-Detection/R_50_1x.yaml"), "--input",
                   str(tmp_path / "nothere.jpg"), "--output", str(tmp_path), "--opts", *_opts(tmp_path, weights[80])])


def test_video(weights, images, tmp_path):
    cv2 = pytest.importorskip("cv2")
    video = tmp_path / "clip.mp4"
    frame = cv2.resize(cv2.imread(str(sorted(images.glob("*.jpg"))[0])), (160, 120))
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (160, 120))
    for i in range(6):
        writer.write(np.roll(frame, 8 * i, axis=1))
    writer.release()
    out = demo.main(["--config-file", str(REPO / "configs/FCOS-Detection/R_50_1x.yaml"), "--video-input",
                     str(video), "--output", str(tmp_path / "v"), "--confidence-threshold", "0.0",
                     "--opts", *_opts(tmp_path, weights[80])])
    capture = cv2.VideoCapture(out)
    frames = []
    while True:
        ok, f = capture.read()
        if not ok:
            break
        frames.append(f)
    capture.release()
    assert len(frames) == 6 and frames[0].shape == (120, 160, 3)


def test_model_zoo_option_sets_config_and_weights():
    args = demo.argument_parser().parse_args(["--model-zoo", "SOLOv2_R50_3x", "--input", "x.jpg", "--output", "o",
                                              "--opts", "MODEL.DEVICE", "cpu"])
    cfg = demo.setup_cfg(args, demo._train_net())
    assert cfg.MODEL.WEIGHTS == "https://huggingface.co/ZjuCv/AdelaiDet/resolve/main/SOLOv2_R50_3x.pth"
    assert cfg.MODEL.META_ARCHITECTURE == "SOLOv2" and cfg.MODEL.DEVICE == "cpu"

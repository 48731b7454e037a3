"""Data set registration: the synthetic shapes set, custom COCO-format data, shared data.

Detectron2 itself registers COCO 2017 and friends (``coco_2017_train``,
``coco_2017_val``, ...) under ``$DETECTRON2_DATASETS`` (default ``datasets/``); use
:func:`check_dataset_available` to get a clear error when their files are missing.

Custom data: any COCO-format instance json and its image folder::

    from adet.data import register_coco_dataset
    register_coco_dataset("my_train", "/data/my/annotations/train.json", "/data/my/images")

then name ``my_train`` in ``DATASETS.TRAIN`` / ``DATASETS.TEST``.
"""
import os
from pathlib import Path

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from .synthetic import SHAPE_CLASSES, generate_synthetic_dataset, synthetic_dataset_dir, synthetic_params

__all__ = [
    "register_synthetic",
    "register_coco_dataset",
    "check_dataset_available",
    "shared_data_root",
    "register_shared_datasets",
    "register_fruits_nuts_splits",
    "fruits_nuts_split",
    "FRUITS_NUTS_VAL_IMAGE_IDS",
    "register_all",
]

# The fixed held-out split of fruits_nuts (image ids of its trainval.json): every fourth id
# from 2, i.e. files 10.jpg, 14.jpg, 2.jpg and 6.jpg, 32 of the 165 instances (13 date,
# 7 fig, 12 hazelnut). The other 14 images are fruits_nuts_train.
FRUITS_NUTS_VAL_IMAGE_IDS = (2, 6, 10, 14)
FRUITS_NUTS_CLASSES = ("date", "fig", "hazelnut")

# Metadata attributes that name files or folders a data set needs.
_PATH_KEYS = ("json_file", "image_root", "panoptic_json", "panoptic_root", "sem_seg_root")


def register_synthetic(name_prefix="synthetic_shapes", root=None, **gen_kwargs):
    """Register ``<name_prefix>_train`` and ``<name_prefix>_val``: the synthetic shapes set.

    Nothing is generated here: the data set is generated (or found in the cache) the first
    time either split is loaded through ``DatasetCatalog.get`` or
    :func:`check_dataset_available`. ``root`` and ``gen_kwargs`` are those of
    :func:`adet.data.synthetic.generate_synthetic_dataset`. Registering the same names
    again with the same parameters is a no-op.

    Returns:
        the two registered names.
    """
    params = synthetic_params(**gen_kwargs)  # validates the arguments now
    data_root = synthetic_dataset_dir(root, **gen_kwargs)
    names = []
    for split in ("train", "val"):
        name = f"{name_prefix}_{split}"
        json_file = data_root / "annotations" / f"instances_{split}.json"
        image_root = data_root / split
        old_params = getattr(MetadataCatalog.get(name), "synthetic_params", None) if name in DatasetCatalog.list() else None
        if old_params is not None and old_params != params:
            raise ValueError(
                f"Dataset '{name}' is already registered with other synthetic parameters "
                f"({old_params}); pick another name_prefix."
            )
        if _already_registered(name, json_file, image_root):
            names.append(name)
            continue

        def load(name=name, split=split):
            info = generate_synthetic_dataset(root=data_root, **gen_kwargs)
            return load_coco_json(info[split]["json_file"], info[split]["image_root"], name)

        DatasetCatalog.register(name, load)
        MetadataCatalog.get(name).set(
            thing_classes=list(SHAPE_CLASSES),
            thing_dataset_id_to_contiguous_id={i + 1: i for i in range(len(SHAPE_CLASSES))},
            json_file=str(json_file),
            image_root=str(image_root),
            evaluator_type="coco",
            synthetic_params=params,
            synthetic_root=str(data_root),
        )
        names.append(name)
    return names


def _already_registered(name, json_file, image_root):
    """True if ``name`` is registered with these paths; raise if with other paths."""
    if name not in DatasetCatalog.list():
        return False
    meta = MetadataCatalog.get(name)
    old = (getattr(meta, "json_file", None), getattr(meta, "image_root", None))
    new = (str(json_file), str(image_root))
    if old[0] and old[1] and all(os.path.abspath(a) == os.path.abspath(b) for a, b in zip(old, new)):
        return True
    raise ValueError(
        f"Dataset '{name}' is already registered with json_file={old[0]!r}, "
        f"image_root={old[1]!r}; cannot register it again with json_file={new[0]!r}, "
        f"image_root={new[1]!r}. Pick another name."
    )


def register_coco_dataset(name, json_file, image_root, **metadata):
    """Register a COCO-format instance data set (json + image folder) under ``name``.

    Both paths must exist (``FileNotFoundError`` naming the path otherwise). The metadata
    gets ``json_file``, ``image_root`` and ``evaluator_type="coco"`` so Detectron2's
    COCOEvaluator works; ``thing_classes`` come from the json's categories when the data
    set is loaded. Extra ``metadata`` (e.g. ``thing_colors``) is added as given.
    Registering the same name with the same paths again is a no-op; with other paths it
    raises ``ValueError``.
    """
    json_file, image_root = os.path.abspath(json_file), os.path.abspath(image_root)
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"Dataset '{name}': annotation file '{json_file}' does not exist")
    if not os.path.isdir(image_root):
        raise FileNotFoundError(f"Dataset '{name}': image folder '{image_root}' does not exist")
    if _already_registered(name, json_file, image_root):
        return name
    DatasetCatalog.register(name, lambda: load_coco_json(json_file, image_root, name))
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="coco", **metadata)
    return name


def check_dataset_available(name):
    """Make sure the files of the registered data set ``name`` are there.

    A synthetic data set is generated if needed (so its ``json_file`` exists before, for
    example, COCOEvaluator is built). For others, every path in the metadata
    (``json_file``, ``image_root``, ...) must exist, else ``FileNotFoundError`` says
    which path is missing and how to fix it.

    Returns:
        the data set's ``Metadata``.
    """
    if name not in DatasetCatalog.list():
        raise KeyError(
            f"Dataset '{name}' is not registered. Register it with "
            "adet.data.register_coco_dataset(name, json_file, image_root) (any COCO-format "
            "json + image folder) or use a registered name, e.g. synthetic_shapes_train."
        )
    meta = MetadataCatalog.get(name)
    params = getattr(meta, "synthetic_params", None)
    if params is not None:
        gen_kwargs = {k: v for k, v in params.items() if k != "version"}
        generate_synthetic_dataset(root=meta.synthetic_root, **gen_kwargs)
        return meta
    for key in _PATH_KEYS:
        path = getattr(meta, key, None)
        if path is None or os.path.exists(path):
            continue
        d2_root = os.environ.get("DETECTRON2_DATASETS", "datasets")
        raise FileNotFoundError(
            f"Dataset '{name}': {key} '{path}' does not exist.\n"
            f"Detectron2's builtin data sets are looked up under $DETECTRON2_DATASETS "
            f"(now '{os.path.abspath(d2_root)}'). To fix: set DETECTRON2_DATASETS=/path/to/datasets "
            "where the folder holds the expected layout, e.g. for COCO 2017\n"
            "  coco/annotations/instances_train2017.json  coco/train2017/\n"
            "  coco/annotations/instances_val2017.json    coco/val2017/\n"
            "or register your own COCO-format data with "
            "adet.data.register_coco_dataset(name, json_file, image_root)."
        )
    return meta


def shared_data_root():
    """The folder of the shared real data: ``$ADET_SHARED_DATA``, else
    ``<repository root>/../shared/data`` (next to the repository holding ``adet``)."""
    env = os.environ.get("ADET_SHARED_DATA")
    if env:
        return Path(env).expanduser()
    repo_root = Path(__file__).resolve().parent.parent.parent
    return repo_root.parent / "shared" / "data"


def register_shared_datasets(root=None):
    """Register the shared real data sets found under ``root`` (default
    :func:`shared_data_root`): ``coco_tiny_train`` / ``coco_tiny_val`` (80 COCO 2017
    images each, all 80 classes), ``fruits_nuts`` (18 images, 3 classes) and its fixed
    split ``fruits_nuts_train`` / ``fruits_nuts_val`` (14 / 4 images, see
    `register_fruits_nuts_splits`). Missing ones
    are skipped. The data is read in place, never copied.

    Returns:
        the names registered (or already registered with the same paths).
    """
    root = Path(root) if root is not None else shared_data_root()
    names = []
    coco_meta = _coco_metadata()
    for split in ("train", "val"):
        json_file = root / "coco_tiny" / "annotations" / f"instances_{split}2017.json"
        image_root = root / "coco_tiny" / f"{split}2017"
        if json_file.is_file() and image_root.is_dir():
            names.append(register_coco_dataset(f"coco_tiny_{split}", json_file, image_root, **coco_meta))
    json_file, image_root = root / "fruits_nuts" / "trainval.json", root / "fruits_nuts" / "images"
    if json_file.is_file() and image_root.is_dir():
        names.append(
            register_coco_dataset(
                "fruits_nuts", json_file, image_root, thing_classes=list(FRUITS_NUTS_CLASSES)
            )
        )
        names += register_fruits_nuts_splits(json_file, image_root)
    return names


def fruits_nuts_split(dicts, split):
    """The ``split`` ("train" or "val") of fruits_nuts' dataset dicts: "val" keeps the images
    whose ``image_id`` is in `FRUITS_NUTS_VAL_IMAGE_IDS`, "train" the others; each image
    keeps all its annotations."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    want_val = split == "val"
    return [d for d in dicts if (d["image_id"] in FRUITS_NUTS_VAL_IMAGE_IDS) == want_val]


def register_fruits_nuts_splits(json_file, image_root, name_prefix="fruits_nuts"):
    """Register ``<name_prefix>_train`` (14 images) and ``<name_prefix>_val`` (the 4 images
    of `FRUITS_NUTS_VAL_IMAGE_IDS`): fruits_nuts' ``trainval.json`` loaded with Detectron2's
    ``load_coco_json`` and filtered in memory (nothing is written next to the data).

    The metadata has no ``json_file``, so Detectron2's COCOEvaluator writes the ground truth
    of the split alone (``<output_dir>/<name>_coco_format.json``) and evaluates on it.
    Registering the same names with the same ``image_root`` again is a no-op.

    Returns:
        the two registered names.
    """
    json_file, image_root = os.path.abspath(json_file), os.path.abspath(image_root)
    names = []
    for split in ("train", "val"):
        name = f"{name_prefix}_{split}"
        names.append(name)
        if _split_already_registered(name, json_file, image_root):
            continue

        def load(name=name, split=split):
            return fruits_nuts_split(load_coco_json(json_file, image_root, name), split)

        DatasetCatalog.register(name, load)
        MetadataCatalog.get(name).set(
            thing_classes=list(FRUITS_NUTS_CLASSES),
            thing_dataset_id_to_contiguous_id={i + 1: i for i in range(len(FRUITS_NUTS_CLASSES))},
            image_root=image_root,
            source_json_file=json_file,
            evaluator_type="coco",
        )
    return names


def _split_already_registered(name, json_file, image_root):
    """True if the split ``name`` is registered from these files; raise if from others."""
    if name not in DatasetCatalog.list():
        return False
    meta = MetadataCatalog.get(name)
    old = (getattr(meta, "source_json_file", None), getattr(meta, "image_root", None))
    if old == (json_file, image_root):
        return True
    raise ValueError(
        f"Dataset '{name}' is already registered from {old[0]!r} / {old[1]!r}; cannot register "
        f"it again from {json_file!r} / {image_root!r}. Pick another name_prefix."
    )


def _coco_metadata():
    """COCO's class names, colours and id map, as Detectron2 gives them to coco_2017_*."""
    coco = MetadataCatalog.get("coco_2017_val")
    keys = ("thing_classes", "thing_colors", "thing_dataset_id_to_contiguous_id")
    return {k: getattr(coco, k) for k in keys if hasattr(coco, k)}


def register_all():
    """Register the default synthetic splits and the shared data sets that are present.

    Cheap (no data is generated or read); called when ``adet.data`` is imported.
    """
    names = register_synthetic()
    try:
        names += register_shared_datasets()
    except (OSError, ValueError):  # an unusable $ADET_SHARED_DATA must not break imports
        pass
    return names

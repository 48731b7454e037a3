"""Look-ups in the catalog, and models built from it."""
import difflib
import os
from pathlib import Path
from typing import List, Optional

from .catalog import CATALOG, ModelInfo

__all__ = ["NUM_CLASSES_KEYS", "configs_dir", "info", "has_config", "list_models", "get_config_file",
           "get_checkpoint_url", "get_config", "get", "sha256_for_url", "set_num_classes"]

CONFIGS_ENV = "ADET_CONFIGS"

# Config keys holding a number of classes, by method family (set_num_classes sets those present).
NUM_CLASSES_KEYS = (
    "MODEL.FCOS.NUM_CLASSES",              # FCOS, BlendMask, CondInst, BoxInst
    "MODEL.BASIS_MODULE.NUM_CLASSES",      # BlendMask auxiliary semantic head
    "MODEL.SOLOV2.NUM_CLASSES",
    "MODEL.SPARSE_INST.DECODER.NUM_CLASSES",
    "MODEL.ROI_HEADS.NUM_CLASSES",         # Detectron2's R-CNN
    "MODEL.RETINANET.NUM_CLASSES",
)


def configs_dir() -> Path:
    """``$ADET_CONFIGS``, else the ``configs/`` folder next to the ``adet`` package."""
    return Path(os.environ.get(CONFIGS_ENV) or Path(__file__).resolve().parents[2] / "configs")


def info(name: str) -> ModelInfo:
    """The catalog entry of ``name``; ``KeyError`` with the closest names otherwise."""
    try:
        return CATALOG[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(CATALOG), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"No model {name!r} in adet's model zoo.{hint} See MODEL_ZOO.md "
                       f"or adet.model_zoo.list_models().") from None


def has_config(name: str) -> bool:
    """Whether the config of catalog model ``name`` is in this tree."""
    return (configs_dir() / info(name).config).is_file()


def list_models(method: Optional[str] = None, available: bool = False) -> List[str]:
    """Catalog names, in MODEL_ZOO.md order; only ``method``'s; with ``available``, only
    those whose config is in this tree and that have a working download URL."""
    return [m.name for m in CATALOG.values()
            if (method is None or m.method == method) and not (available and not (m.url and has_config(m.name)))]


def get_config_file(name: str) -> str:
    """Path of the config file of catalog model ``name`` in this tree."""
    entry = info(name)
    path = configs_dir() / entry.config
    if not path.is_file():
        needs = f" (it needs the {entry.requires})" if entry.requires else ""
        raise FileNotFoundError(f"{name}: its config {path} is not in this tree{needs}. Set ${CONFIGS_ENV} "
                                f"if adet's configs/ folder is elsewhere.")
    return str(path)


def get_checkpoint_url(name: str) -> str:
    """The download URL of catalog model ``name`` (the first published one that works)."""
    entry = info(name)
    if entry.url is None:
        raise LookupError(f"{name}: no working download link was published; the only ones "
                          f"({', '.join(entry.dead_urls)}) are on a host that is gone.")
    return entry.url


def sha256_for_url(url: str) -> Optional[str]:
    """The sha256 the catalog knows for a checkpoint URL, else None."""
    return next((m.sha256 for m in CATALOG.values() if m.sha256 and url in m.urls), None)


def set_num_classes(cfg, num_classes: int) -> None:
    """Set every number-of-classes key of ``cfg`` that exists (``NUM_CLASSES_KEYS``) to
    ``num_classes``: what fine-tuning on a data set with that many classes needs."""
    for key in NUM_CLASSES_KEYS:
        *path, leaf = key.split(".")
        node = cfg
        for part in path:
            node = node.get(part) if node is not None else None
        if node is not None and leaf in node:
            setattr(node, leaf, num_classes)


def get_config(name: str, trained: bool = False):
    """adet's config of catalog model ``name``; with ``trained``, MODEL.WEIGHTS is its
    checkpoint URL (otherwise what the config says: usually an ImageNet backbone)."""
    from adet.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(get_config_file(name))
    if trained:
        cfg.MODEL.WEIGHTS = get_checkpoint_url(name)
    return cfg


def get(name: str, trained: bool = True, *, weights: Optional[str] = None, device: Optional[str] = None,
        cache_dir: Optional[str] = None):
    """Catalog model ``name`` built with Detectron2's ``build_model`` from adet's config,
    in eval mode.

    Args:
        trained: load the published weights (downloaded once into the cache, see
            `adet.checkpoint.download`); False: randomly initialised, nothing loaded.
        weights: a local path or URL to load instead of the published URL (e.g. a file
            downloaded by hand from Google Drive).
        device: MODEL.DEVICE; default "cuda" when available, else "cpu".
        cache_dir: download folder (default ``$ADET_CACHE``).
    """
    import torch
    from detectron2.modeling import build_model

    import adet.modeling  # noqa: F401  (registers the architectures)
    from adet.checkpoint import AdetCheckpointer

    cfg = get_config(name, trained=False)
    cfg.MODEL.DEVICE = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(cfg)
    if trained or weights:
        path = weights or get_checkpoint_url(name)
        AdetCheckpointer(model, cache_dir=cache_dir).load(path, sha256=None if weights else info(name).sha256)
    return model.eval()

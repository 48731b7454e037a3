"""adet's config: Detectron2's CfgNode with the keys of every adet method added."""
from .defaults import (
    ADET_ONLY_KEYS,
    FCOS_LOSS_NORMALIZERS,
    SPARSEINST_TOOLBOX_DEFAULTS,
    add_adet_config,
    get_cfg,
)

__all__ = [
    "add_adet_config",
    "get_cfg",
    "ADET_ONLY_KEYS",
    "FCOS_LOSS_NORMALIZERS",
    "SPARSEINST_TOOLBOX_DEFAULTS",
]

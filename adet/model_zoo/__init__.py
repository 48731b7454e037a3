"""adet's model zoo: the published AdelaiDet and SparseInst models (see MODEL_ZOO.md).

    from adet import model_zoo
    model = model_zoo.get("FCOS_R_50_1x")                  # eval mode, published weights
    cfg_file = model_zoo.get_config_file("FCOS_R_50_1x")
    url = model_zoo.get_checkpoint_url("FCOS_R_50_1x")
"""
from .catalog import CATALOG, SOURCES, ModelInfo
from .markdown import render_markdown
from .model_zoo import (
    NUM_CLASSES_KEYS,
    configs_dir,
    get,
    get_checkpoint_url,
    get_config,
    get_config_file,
    has_config,
    info,
    list_models,
    set_num_classes,
    sha256_for_url,
)

__all__ = [
    "CATALOG", "SOURCES", "ModelInfo", "render_markdown", "NUM_CLASSES_KEYS", "configs_dir", "get",
    "get_checkpoint_url", "get_config", "get_config_file", "has_config", "info", "list_models", "set_num_classes",
    "sha256_for_url",
]

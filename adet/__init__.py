"""adet: single-shot instance segmentation on Detectron2.

Importing adet registers its backbones, meta-architectures and heads with
Detectron2's registries, so `detectron2.modeling.build_model(cfg)` builds them.
"""
__version__ = "0.1.0"

from . import modeling  # noqa: F401,E402  (registers with Detectron2)

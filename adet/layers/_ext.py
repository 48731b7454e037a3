"""Loader of the optional compiled extension ``adet._C``.

adet works without it: every op has a pure-PyTorch path, and the compiled kernels are
chosen at run time only where :func:`has_op` says they are there. Set
``ADET_DISABLE_EXT=1`` to ignore a built extension (e.g. to compare against the pure path).
"""
import functools
import importlib
import logging
import os

__all__ = ["load_ext", "has_op", "available_ops", "compiled_with_cuda"]

logger = logging.getLogger(__name__)

EXT_NAME = "adet._C"


@functools.lru_cache(maxsize=None)
def load_ext():
    """Return the module ``adet._C``, or None when it is not built or cannot load.

    The result is cached; ``load_ext.cache_clear()`` forgets it.
    """
    if os.environ.get("ADET_DISABLE_EXT", "").strip() in ("1", "true", "yes"):
        logger.info("ADET_DISABLE_EXT is set: not loading %s", EXT_NAME)
        return None
    try:
        import torch  # noqa: F401  (the extension links against libtorch: load it first)

        return importlib.import_module(EXT_NAME)
    except ImportError as e:  # not built, or built against another torch
        logger.debug("%s is not available (%s); using the pure-PyTorch ops", EXT_NAME, e)
        return None


def available_ops():
    """Names of the compiled ops, sorted; empty without the extension."""
    ext = load_ext()
    return list(ext.available_ops()) if ext is not None else []


def has_op(name):
    """True when the extension is loaded and has the compiled op ``name``."""
    return name in available_ops()


def compiled_with_cuda():
    """True when the extension is loaded and was built with its CUDA kernels."""
    ext = load_ext()
    return bool(ext is not None and ext.compiled_with_cuda())

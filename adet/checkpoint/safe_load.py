"""Reading checkpoint files without running code from them.

* ``.pth`` (and any other torch file): ``torch.load(weights_only=True)``, with NumPy
  arrays and scalars (plain data) allowed besides tensors and containers.
* ``.pkl`` (Detectron2 / Caffe2 model zoo files: dicts of NumPy arrays): a pickle
  reader that only knows dicts, NumPy arrays, scalars and dtypes.

A file that needs anything else (a pickled class, a function) raises
`UnsafeCheckpointError`, which names the two ways to load it anyway, for a file from a
source you trust: ``allow_unsafe=True`` (e.g. ``AdetCheckpointer(model, allow_unsafe=True)``,
``tools/convert_checkpoint.py --allow-unsafe``) or the environment variable
``ADET_ALLOW_UNSAFE_PICKLE=1``. Converting such a file once with
``tools/convert_checkpoint.py --allow-unsafe IN OUT`` gives a weights-only file.
"""
import os
import pickle
from typing import Any, Optional

import numpy as np
import torch

from .atomic import CheckpointLoadError

__all__ = ["UNSAFE_ENV", "UnsafeCheckpointError", "unsafe_allowed", "load_torch_file", "check_pickle_safe",
           "load_pickle_file"]

UNSAFE_ENV = "ADET_ALLOW_UNSAFE_PICKLE"

try:  # NumPy >= 2 moved numpy.core to numpy._core; old files name the former
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover
    from numpy.core import multiarray as _multiarray

# (module, name) a data-only pickle may refer to.
_PICKLE_ALLOWED = {
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # bytes in protocol-2 pickles
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
}


class UnsafeCheckpointError(CheckpointLoadError):
    """The file needs more than plain data (tensors, arrays, containers) to be read."""


def unsafe_allowed(allow_unsafe: Optional[bool] = None) -> bool:
    """``allow_unsafe`` if given, else whether ``$ADET_ALLOW_UNSAFE_PICKLE`` is set to 1/true/yes."""
    if allow_unsafe is not None:
        return bool(allow_unsafe)
    return os.environ.get(UNSAFE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _unsafe_message(path: str, detail: str) -> str:
    return (
        f"'{path}' cannot be read safely: it needs more than tensors, arrays and containers "
        f"({detail}); unpickling it could run code from the file. If you trust its source, "
        f"load it with allow_unsafe=True (AdetCheckpointer(..., allow_unsafe=True), "
        f"tools/convert_checkpoint.py --allow-unsafe) or set {UNSAFE_ENV}=1; "
        f"`tools/convert_checkpoint.py --allow-unsafe IN OUT` writes a weights-only copy."
    )


def _numpy_globals():
    """NumPy data types for torch's weights-only reader, under their old and new names."""
    objs = [(_multiarray.scalar, "numpy.core.multiarray.scalar"),
            (_multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
            _multiarray.scalar, _multiarray._reconstruct, np.ndarray, np.dtype]
    objs += sorted({type(np.dtype(c)) for c in "?bBhHiIlLqQefdgFDG"}, key=str)
    return objs


def load_torch_file(path: str, allow_unsafe: Optional[bool] = None) -> Any:
    """``torch.load`` on the CPU, weights only unless unsafe loading is allowed."""
    if unsafe_allowed(allow_unsafe):
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():
            raise
        detail = str(e).split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
        raise UnsafeCheckpointError(_unsafe_message(path, detail)) from e


class _DataUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}")
        return super().find_class(module, name)


def load_pickle_file(path: str, allow_unsafe: Optional[bool] = None) -> Any:
    """A ``.pkl`` file's content, read with the data-only unpickler unless unsafe loading
    is allowed (Python 2 pickles are read as latin1, as Detectron2 does)."""
    with open(path, "rb") as f:
        if unsafe_allowed(allow_unsafe):
            return pickle.load(f, encoding="latin1")
        try:
            return _DataUnpickler(f, encoding="latin1").load()
        except pickle.UnpicklingError as e:
            if not str(e).startswith("it refers to"):
                raise
            raise UnsafeCheckpointError(_unsafe_message(path, str(e))) from e


def check_pickle_safe(path: str, allow_unsafe: Optional[bool] = None) -> None:
    """Raise `UnsafeCheckpointError` unless the pickle is data only (or unsafe is allowed)."""
    if not unsafe_allowed(allow_unsafe):
        load_pickle_file(path, allow_unsafe=False)

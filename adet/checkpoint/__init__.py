"""Checkpoints: crash-safe saving (`AtomicCheckpointer`), loading local files and URLs with a
cache, sha256 checks and safe unpickling (`AdetCheckpointer`), and the one conversion
table for checkpoints made by the reference toolboxes (`adet.checkpoint.convert`)."""
from .atomic import AtomicCheckpointer, CheckpointLoadError, atomic_write, nonfinite_tensors
from .checkpointer import AdetCheckpointer, IncompatibleCheckpointError
from .convert import CLASS_DEPENDENT, RENAMES, TRAINING_STATE, convert_checkpoint, convert_state_dict
from .download import (
    CACHE_ENV,
    ChecksumError,
    DownloadError,
    cache_path,
    default_cache_dir,
    detectron2_url,
    download,
    file_sha256,
    resolve_path,
)
from .safe_load import UNSAFE_ENV, UnsafeCheckpointError, load_pickle_file, load_torch_file

__all__ = [
    "AtomicCheckpointer", "CheckpointLoadError", "atomic_write", "nonfinite_tensors",
    "AdetCheckpointer", "IncompatibleCheckpointError",
    "CLASS_DEPENDENT", "RENAMES", "TRAINING_STATE", "convert_checkpoint", "convert_state_dict",
    "CACHE_ENV", "ChecksumError", "DownloadError", "cache_path", "default_cache_dir", "detectron2_url",
    "download", "file_sha256", "resolve_path",
    "UNSAFE_ENV", "UnsafeCheckpointError", "load_pickle_file", "load_torch_file",
]

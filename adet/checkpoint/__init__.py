"""Checkpoint utilities: crash-safe saving (`AtomicCheckpointer`) and clear load errors."""
from .atomic import AtomicCheckpointer, CheckpointLoadError, atomic_write, nonfinite_tensors

__all__ = ["AtomicCheckpointer", "CheckpointLoadError", "atomic_write", "nonfinite_tensors"]

"""Crash-safe checkpoint saving and clear errors for unreadable checkpoints.

`AtomicCheckpointer` is Detectron2's `DetectionCheckpointer` with three changes:

* ``save()`` writes ``<name>.pth`` (and ``last_checkpoint``) to a temporary file in the
  same folder, fsyncs it and ``os.replace``s it into place. A job killed while saving
  leaves at worst a stray ``.tmp`` file, never a truncated ``model_*.pth`` or a
  ``last_checkpoint`` that names a file which does not exist.
* A model whose parameters or buffers hold NaN/Inf is not saved (an error is logged and
  the previous checkpoint stays the last one), so ``--resume`` after a diverged run
  restarts from the last good state.
* Loading a truncated or corrupted file raises `CheckpointLoadError` naming the file.
"""
import logging
import os
import tempfile
from typing import Callable, List

import torch
from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["AtomicCheckpointer", "CheckpointLoadError", "atomic_write", "nonfinite_tensors"]

logger = logging.getLogger(__name__)


class CheckpointLoadError(RuntimeError):
    """A checkpoint file exists but cannot be read (truncated, corrupted, not a checkpoint)."""


def atomic_write(path: str, write_fn: Callable, mode: str = "wb") -> None:
    """Call ``write_fn(f)`` on a temporary file next to ``path``, then move it to ``path``.

    ``os.replace`` is atomic on POSIX and Windows when both paths are on the same file
    system, which holds because the temporary file lives in the destination folder.
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    try:  # persist the rename itself; not supported everywhere (e.g. Windows)
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def nonfinite_tensors(state_dict) -> List[str]:
    """Names of floating-point tensors in ``state_dict`` that contain NaN or Inf."""
    names, flags = [], []
    for k, v in state_dict.items():
        if torch.is_tensor(v) and v.is_floating_point() and v.numel() > 0:
            names.append(k)
            flags.append(torch.isfinite(v).all())
    if not flags:
        return []
    device = flags[0].device
    ok = torch.stack([f.to(device) for f in flags]).tolist()  # a single host sync
    return [n for n, good in zip(names, ok) if not good]


class AtomicCheckpointer(DetectionCheckpointer):
    """`DetectionCheckpointer` whose files are written atomically; see the module doc."""

    def __init__(self, model, save_dir="", *, save_to_disk=None, skip_nonfinite=True,
                 **checkpointables):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.skip_nonfinite = skip_nonfinite

    def _is_local(self) -> bool:
        return "://" not in self.save_dir

    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        if not self._is_local():  # remote storage: no rename; keep fvcore's behaviour
            return super().save(name, **kwargs)

        data = {"model": self.model.state_dict()}
        bad = nonfinite_tensors(data["model"]) if self.skip_nonfinite else []
        if bad:
            self.logger.error(
                f"Not saving checkpoint '{name}': the model has NaN/Inf values in "
                f"{len(bad)} tensor(s) (e.g. {bad[:3]}). The last good checkpoint is still "
                f"'{self.get_checkpoint_file() or 'none'}'."
            )
            return
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)

        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        assert os.path.basename(save_file) == basename, basename
        os.makedirs(self.save_dir, exist_ok=True)
        self.logger.info(f"Saving checkpoint to {save_file}")
        atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if not self._is_local():
            return super().tag_last_checkpoint(last_filename_basename)
        save_file = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write(save_file, lambda f: f.write(last_filename_basename), mode="w")

    def _load_file(self, filename):
        try:
            return super()._load_file(filename)
        except FileNotFoundError:
            raise
        except CheckpointLoadError:
            raise
        except Exception as e:
            raise unreadable_checkpoint(filename, e) from e


def unreadable_checkpoint(filename: str, error: Exception) -> CheckpointLoadError:
    """The `CheckpointLoadError` for a file that exists but could not be read."""
    size = os.path.getsize(filename) if os.path.isfile(filename) else "?"
    return CheckpointLoadError(
        f"Cannot read checkpoint '{filename}' ({size} bytes): the file is truncated, "
        f"corrupted or not a checkpoint ({type(error).__name__}: {error}). Delete it, or point "
        f"'last_checkpoint' / MODEL.WEIGHTS to another file."
    )

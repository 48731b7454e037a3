"""`AdetCheckpointer`: Detectron2's checkpointer for published weights and fine-tuning."""
import logging
from typing import List, Optional

from .atomic import AtomicCheckpointer, CheckpointLoadError, unreadable_checkpoint
from .convert import ShapeMismatch, convert_state_dict, is_class_dependent, shape_mismatches
from .download import resolve_path
from .safe_load import check_pickle_safe, load_torch_file

__all__ = ["AdetCheckpointer", "IncompatibleCheckpointError"]

logger = logging.getLogger(__name__)


class IncompatibleCheckpointError(CheckpointLoadError):
    """The checkpoint's tensors do not fit the model (other than in the number of classes)."""


def _known_sha256(path: str) -> Optional[str]:
    """The sha256 the model zoo catalog lists for a URL, if any."""
    from adet.model_zoo import sha256_for_url

    return sha256_for_url(path)


class AdetCheckpointer(AtomicCheckpointer):
    """Detectron2's ``DetectionCheckpointer`` (with `AtomicCheckpointer`'s crash-safe saves)
    that loads adet's and the reference toolboxes' weights:

    * from a local path, ``http(s)://`` (downloaded once into a cache folder, with a
      progress bar, resumable, sha256-checked where known), ``detectron2://`` and
      ``catalog://`` (Detectron2's ImageNet backbones); see `adet.checkpoint.download`;
    * safely: ``torch.load(weights_only=True)`` and a data-only reader for ``.pkl`` files;
      a file that needs more raises `UnsafeCheckpointError` (see `adet.checkpoint.safe_load`);
    * with the key conversions of `adet.checkpoint.convert` applied;
    * for fine-tuning: a class-dependent layer (``convert.CLASS_DEPENDENT``) whose number of
      classes differs keeps the model's fresh initialisation, and the log names it; any
      other shape mismatch raises `IncompatibleCheckpointError` (``strict_shapes=False``:
      skipped with a warning, as in Detectron2).

    Args:
        model, save_dir, save_to_disk, checkpointables: as for ``DetectionCheckpointer``.
        cache_dir: download folder (default ``$ADET_CACHE``, else ``~/.cache/adet/checkpoints``).
        allow_unsafe: unpickle files that need more than plain data (only for files from a
            source you trust); default: ``$ADET_ALLOW_UNSAFE_PICKLE``.
        strict_shapes: see above.
        progress: show a progress bar while downloading.

    Attributes:
        reinitialized (list[ShapeMismatch]): the class-dependent tensors the last `load`
            left at the model's initialisation.
        incompatible: fvcore's ``_IncompatibleKeys`` of the last `load` (missing and
            unexpected keys, other shapes), before the re-initialised ones are set apart.
    """

    def __init__(self, model, save_dir: str = "", *, cache_dir: Optional[str] = None,
                 allow_unsafe: Optional[bool] = None, strict_shapes: bool = True, progress: bool = True,
                 **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.cache_dir = cache_dir
        self.allow_unsafe = allow_unsafe
        self.strict_shapes = strict_shapes
        self.progress = progress
        self.reinitialized: List[ShapeMismatch] = []
        self.incompatible = None

    def load(self, path: str, checkpointables: Optional[List[str]] = None, *, sha256: Optional[str] = None):
        """Load ``path`` (local path or URL, see the class doc); ``sha256`` defaults to the
        one the model zoo catalog lists for the URL, if any. Returns what fvcore's
        ``Checkpointer.load`` returns."""
        self.reinitialized, self.incompatible = [], None
        if path:
            local = resolve_path(path, self.cache_dir, sha256=sha256 or _known_sha256(path),
                                 progress=self.progress)
            if local != path:
                self.logger.info(f"[AdetCheckpointer] {path} is {local}")
            path = local
        return super().load(path, checkpointables)

    def _read(self, read_fn, filename: str):
        try:
            return read_fn(filename, self.allow_unsafe)
        except (CheckpointLoadError, FileNotFoundError):
            raise
        except Exception as e:
            raise unreadable_checkpoint(filename, e) from e

    def _load_file(self, filename: str):
        if filename.endswith(".pkl"):  # Detectron2 reads it once this pass proves it data-only
            self._read(check_pickle_safe, filename)
            return super()._load_file(filename)
        if filename.endswith(".pyth"):  # pycls: Detectron2's reader (torch.load, weights only)
            return super()._load_file(filename)
        data = self._read(load_torch_file, filename)
        return data if isinstance(data, dict) and "model" in data else {"model": data}

    def _load_model(self, checkpoint):
        if not checkpoint.get("matching_heuristics", False):
            model_state = self.model.state_dict()
            checkpoint["model"] = convert_state_dict(checkpoint["model"], model_keys=model_state.keys())
            self._check_shapes(shape_mismatches(model_state, checkpoint["model"]))
        incompatible = super()._load_model(checkpoint)
        self.incompatible = incompatible
        self.reinitialized = [ShapeMismatch(k, a, b, True) for k, a, b in incompatible.incorrect_shapes
                              if is_class_dependent(k, a, b)]
        done = {m.key for m in self.reinitialized}
        return incompatible._replace(
            missing_keys=[k for k in incompatible.missing_keys if k not in done],
            incorrect_shapes=[x for x in incompatible.incorrect_shapes if x[0] not in done],
        )

    def _check_shapes(self, mismatches: List[ShapeMismatch]) -> None:
        bad = [m for m in mismatches if not m.class_dependent]
        if bad and self.strict_shapes:
            listing = "; ".join(f"{m.key}: {m.checkpoint_shape} in the checkpoint, {m.model_shape} in "
                                f"the model" for m in bad[:10])
            raise IncompatibleCheckpointError(
                f"The checkpoint does not fit the model: {len(bad)} tensor(s) that do not depend on "
                f"the number of classes have other shapes ({listing}{'; ...' if len(bad) > 10 else ''}). "
                f"The config differs from the one the checkpoint was trained with (backbone, "
                f"channels, head layout): use that config (adet.model_zoo.get_config_file), or load "
                f"with AdetCheckpointer(..., strict_shapes=False) to skip these tensors."
            )

    def _log_incompatible_keys(self, incompatible) -> None:
        if self.reinitialized:
            listing = "\n".join(f"  {m.key}: {m.checkpoint_shape} in the checkpoint -> {m.model_shape}"
                                for m in self.reinitialized)
            self.logger.info(
                f"Fine-tuning: the checkpoint has another number of classes; these "
                f"{len(self.reinitialized)} class-dependent tensor(s) keep the model's "
                f"initialisation:\n{listing}"
            )
        super()._log_incompatible_keys(incompatible)

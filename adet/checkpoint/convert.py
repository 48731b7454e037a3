"""One table for checkpoints made elsewhere: what is stripped, renamed or re-initialised.

adet's module and parameter names are those of the reference implementations (AdelaiDet
at 36721221, SparseInst at a8990153; see ``../shared/reference/schemas``), so a state dict
saved by either loads into the same adet model as is. What differs between a checkpoint
file and a model's state dict is therefore only:

* **training state** (``TRAINING_STATE``): Detectron2's checkpointer saves the optimizer,
  the LR scheduler, the iteration and the trainer's hooks next to ``"model"``. They are
  needed to resume a run, never to use or fine-tune the weights; `convert_checkpoint`
  (and ``tools/convert_checkpoint.py``) drops them.
* **wrappers** (``PREFIXES``): a model saved while wrapped in ``DistributedDataParallel``
  has every key prefixed with ``module.``.
* **renamed parameters** (``RENAMES``): ``(pattern, replacement, reason)`` rules applied
  in order with `re.sub`. Each rule names the checkpoints it is for. A rule is added only
  for a layout seen in a real checkpoint: the published AdelaiDet and SparseInst models
  use the reference names, which adet keeps, so the table holds only the conversion of
  the original DLA ImageNet checkpoint (``dla34-ba72cf86.pth``, what the FCOS-RT and
  BlendMask-RT DLA configs start from).
* **ResNet-vd names** (``RESNET_VD_NAMES``): SparseInst's ResNet-vd and its ImageNet
  weights use torchvision-style names; adet's ResNet-vd is Detectron2's ResNet. The
  backbone renames with this table when a state dict is loaded into it.
* **class-dependent layers** (``CLASS_DEPENDENT``): the layers whose first dimension is
  the number of classes. Fine-tuning a checkpoint on a data set with another number of
  classes keeps the freshly built model's initialisation for these, and only these.
"""
import re
from typing import Collection, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import torch

__all__ = [
    "TRAINING_STATE", "PREFIXES", "RENAMES", "CLASS_DEPENDENT", "RESNET_VD_NAMES", "Rename", "ShapeMismatch",
    "convert_state_dict", "convert_checkpoint", "is_class_dependent", "shape_mismatches",
]


class Rename(NamedTuple):
    """``re.sub(pattern, replacement, key)`` for the keys of the checkpoints ``reason`` names."""

    pattern: str
    replacement: str
    reason: str


class ShapeMismatch(NamedTuple):
    """A key whose tensor has another shape in the checkpoint than in the model."""

    key: str
    checkpoint_shape: Tuple[int, ...]
    model_shape: Tuple[int, ...]
    class_dependent: bool


# Top-level entries of a Detectron2 / fvcore checkpoint that are training state, not weights.
TRAINING_STATE = ("optimizer", "scheduler", "iteration", "trainer", "_trainer", "grad_scaler")

# Wrapper prefixes removed from every key (DataParallel / DistributedDataParallel).
PREFIXES = ("module.",)

# The original DLA ImageNet checkpoint: body keys at top level (``base_layer.*``,
# ``level0.*`` ... ``level5.*``) plus the 1000-way ``fc.*`` classifier.
_DLA_BODY = r"^((?:base_layer|level[0-5])\.)"
RENAMES: Tuple[Rename, ...] = (
    Rename(_DLA_BODY, r"backbone.bottom_up.\1",
           "DLA ImageNet checkpoint (dl.yf.io/dla/models/imagenet/dla34-ba72cf86.pth): the body "
           "is adet's DLA, which sits at backbone.bottom_up in the FCOS/BlendMask DLA-FPN models"),
)
# Keys dropped after renaming, with the reason.
DROPPED: Tuple[Rename, ...] = (
    Rename(r"^fc\.", "", "DLA ImageNet checkpoint: the ImageNet classifier, not part of a detector"),
)

# Keys (prefixes) of the layers whose output count is the number of classes (+1 for the
# BlendMask basis module's semantic head, which has a background class).
CLASS_DEPENDENT: Tuple[Tuple[str, str], ...] = (
    ("proposal_generator.fcos_head.cls_logits.", "FCOS classification (FCOS, BlendMask, CondInst, BoxInst)"),
    ("basis_module.seg_head.", "BlendMask auxiliary semantic head (MODEL.BASIS_MODULE.NUM_CLASSES + 1)"),
    ("mask_branch.logits.", "CondInst auxiliary semantic head (MODEL.CONDINST.MASK_BRANCH.SEMANTIC_LOSS_ON)"),
    ("ins_head.cate_pred.", "SOLOv2 category branch"),
    ("decoder.inst_branch.cls_score.", "SparseInst classification"),
    ("sem_seg_head.predictor.", "panoptic semantic head (MODEL.SEM_SEG_HEAD.NUM_CLASSES)"),
    ("roi_heads.box_predictor.cls_score.", "R-CNN classification"),
    ("roi_heads.box_predictor.bbox_pred.", "R-CNN class-specific box regression"),
    ("roi_heads.mask_head.predictor.", "R-CNN class-specific masks"),
)


# SparseInst's ResNet-vd (timm / torchvision names with a sequential stem) <-> adet's
# Detectron2-named ResNet-vd (adet.modeling.backbone.resnet_vd renames in both directions
# with it). (our name, reference name) patterns, in the backbone's own namespace. Stem: our
# conv1.{0,1,2} (each with .norm) are the reference's conv1.{0,3,6} with norms conv1.1,
# conv1.4 and bn1; stages: resN is layer(N-1), convK.norm is bnK, shortcut is downsample.1
# (after the pool, downsample.0, which holds nothing) with its norm downsample.2.
RESNET_VD_NAMES: Tuple[Tuple[str, str], ...] = (
    (r"stem\.conv1\.0\.weight", "conv1.0.weight"),
    (r"stem\.conv1\.0\.norm\.(\w+)", r"conv1.1.\1"),
    (r"stem\.conv1\.1\.weight", "conv1.3.weight"),
    (r"stem\.conv1\.1\.norm\.(\w+)", r"conv1.4.\1"),
    (r"stem\.conv1\.2\.weight", "conv1.6.weight"),
    (r"stem\.conv1\.2\.norm\.(\w+)", r"bn1.\1"),
    (r"res(\d)\.(\d+)\.conv(\d)\.weight", r"layer<\1>.\2.conv\3.weight"),
    (r"res(\d)\.(\d+)\.conv(\d)\.norm\.(\w+)", r"layer<\1>.\2.bn\3.\4"),
    (r"res(\d)\.(\d+)\.conv2_offset\.(\w+)", r"layer<\1>.\2.conv2_offset.\3"),
    (r"res(\d)\.(\d+)\.shortcut\.weight", r"layer<\1>.\2.downsample.1.weight"),
    (r"res(\d)\.(\d+)\.shortcut\.norm\.(\w+)", r"layer<\1>.\2.downsample.2.\3"),
)


def _strip_prefixes(key: str, prefixes: Sequence[str]) -> str:
    for prefix in prefixes:
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key


def convert_state_dict(state_dict: Mapping[str, object], model_keys: Optional[Collection[str]] = None,
                       renames: Iterable[Rename] = RENAMES, dropped: Iterable[Rename] = DROPPED) -> Dict[str, object]:
    """A checkpoint's state dict with adet's names: wrapper prefixes removed, then the
    ``renames`` rules applied in order, then the ``dropped`` keys removed. With
    ``model_keys`` (the state dict keys of the model to load into), a key the model has
    is left as it is. Values are not copied."""
    renames, dropped = tuple(renames), tuple(dropped)
    keep = set(model_keys) if model_keys is not None else set()
    out = {}
    for key, value in state_dict.items():
        key = _strip_prefixes(key, PREFIXES)
        if key not in keep:
            for rule in renames:
                key = re.sub(rule.pattern, rule.replacement, key)
            if any(re.search(rule.pattern, key) for rule in dropped):
                continue
        out[key] = value
    return out


def convert_checkpoint(checkpoint: Mapping[str, object], **kwargs) -> Dict[str, object]:
    """``{"model": state_dict}`` of a checkpoint file's content: training state dropped
    (see ``TRAINING_STATE``), a bare state dict accepted, keys converted with
    `convert_state_dict` (``kwargs`` go there). Other top-level entries (e.g.
    ``"__author__"``) are kept."""
    if "model" not in checkpoint:
        checkpoint = {"model": checkpoint}
    out = {k: v for k, v in checkpoint.items() if k not in TRAINING_STATE and k != "model"}
    out["model"] = convert_state_dict(checkpoint["model"], **kwargs)
    return out


def is_class_dependent(key: str, checkpoint_shape: Sequence[int], model_shape: Sequence[int]) -> bool:
    """True when ``key`` is in ``CLASS_DEPENDENT`` and the shapes differ in the first
    (class) dimension only."""
    if not any(key.startswith(prefix) for prefix, _ in CLASS_DEPENDENT):
        return False
    a, b = tuple(checkpoint_shape), tuple(model_shape)
    return len(a) == len(b) and len(a) > 0 and a[1:] == b[1:] and a[0] != b[0]


def shape_mismatches(model_state: Mapping[str, torch.Tensor],
                     checkpoint_state: Mapping[str, object]) -> List[ShapeMismatch]:
    """Every key present on both sides with different shapes, marked class-dependent or not."""
    found = []
    for key, value in checkpoint_state.items():
        if key not in model_state or not hasattr(value, "shape"):
            continue
        ours, theirs = tuple(model_state[key].shape), tuple(value.shape)
        if ours != theirs:
            found.append(ShapeMismatch(key, theirs, ours, is_class_dependent(key, theirs, ours)))
    return found

#!/usr/bin/env python
"""Convert a checkpoint file (AdelaiDet, SparseInst, Detectron2 or adet training output)
into a weights-only file for adet: ``{"model": state_dict}`` with the training state
(optimizer, scheduler, iteration, trainer hooks) dropped and the keys converted by the
table in adet/checkpoint/convert.py.

Examples:
    python tools/convert_checkpoint.py output/model_final.pth model_for_release.pth
    python tools/convert_checkpoint.py https://huggingface.co/.../R_50_1x.pth blendmask_R_50_1x.pth
    # a legacy file that pickles more than tensors, from a source you trust:
    python tools/convert_checkpoint.py --allow-unsafe old.pth converted.pth

The output loads with torch.load(weights_only=True) and with MODEL.WEIGHTS. Detectron2 /
Caffe2 ``.pkl`` files need no conversion: give them to MODEL.WEIGHTS as they are.
"""
import argparse
import os
import sys
from typing import List, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from adet.checkpoint import (  # noqa: E402
    TRAINING_STATE, atomic_write, convert_checkpoint, load_torch_file, resolve_path,
)


def convert_file(src: str, dst: str, allow_unsafe: bool = False) -> Tuple[dict, List[str]]:
    """Read ``src`` (path or URL), write the converted checkpoint to ``dst`` atomically;
    returns what was written and the names of the dropped training-state entries."""
    if src.endswith(".pkl"):
        raise ValueError(f"{src}: Detectron2/Caffe2 .pkl files load as they are (MODEL.WEIGHTS); "
                         f"nothing to convert.")
    loaded = load_torch_file(resolve_path(src), allow_unsafe=allow_unsafe or None)
    if not isinstance(loaded, dict):
        raise ValueError(f"{src}: expected a dict (a state dict or a checkpoint), got {type(loaded).__name__}")
    dropped = [k for k in loaded if k in TRAINING_STATE] if "model" in loaded else []
    out = convert_checkpoint(loaded)
    out["model"] = {k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v for k, v in out["model"].items()}
    atomic_write(dst, lambda f: torch.save(out, f))
    return out, dropped


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="checkpoint path or URL")
    parser.add_argument("output", help="where to write the converted .pth")
    parser.add_argument("--allow-unsafe", action="store_true",
                        help="unpickle a file that needs more than tensors (only for files you trust)")
    args = parser.parse_args(argv)
    out, dropped = convert_file(args.input, args.output, args.allow_unsafe)
    print(f"{args.input} -> {args.output}: {len(out['model'])} tensors; dropped: {', '.join(dropped) or 'nothing'}")


if __name__ == "__main__":
    main()

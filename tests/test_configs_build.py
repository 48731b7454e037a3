"""Every shipped YAML builds its model (on CPU, without weights)."""
from pathlib import Path

import pytest
import torch

from detectron2.modeling import build_model

from adet.config import get_cfg

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ALL_YAMLS = sorted(p for p in CONFIGS.rglob("*.yaml") if not p.name.startswith("Base-"))


def load(path):
    cfg = get_cfg()
    cfg.merge_from_file(str(path))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    return cfg


@pytest.mark.parametrize("path", ALL_YAMLS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_yaml_builds_its_model(path):
    cfg = load(path)
    model = build_model(cfg)
    assert sum(p.numel() for p in model.parameters()) > 0
    model.eval()
    with torch.no_grad():
        (out,) = model([{"image": torch.zeros(3, 64, 96, dtype=torch.uint8)}])
    assert out["instances"].image_size == (64, 96)

"""DLA-34 body, DLA + FPN backbone, and the FCOS-RT DLA configs (CPU)."""
from pathlib import Path

import pytest
import torch

from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, build_model
from detectron2.structures import Boxes, Instances

from adet.config import get_cfg
from adet.checkpoint import convert_state_dict
from adet.modeling.backbone.dla import DLA, DLA_SPECS, build_dla_backbone

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "FCOS-Detection" / "FCOS_RT"
DLA_YAMLS = sorted(CONFIGS.glob("MS_DLA_34_4x_syncbn*.yaml"))


def dla34(norm="BN", **kw):
    levels, channels, residual_root = DLA_SPECS["DLA34"]
    return DLA(levels, channels, norm=norm, residual_root=residual_root, **kw)


def load(path, *opts):
    cfg = get_cfg()
    cfg.merge_from_file(str(path))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", *opts])
    return cfg


def test_registered():
    assert "build_fcos_dla_fpn_backbone" in BACKBONE_REGISTRY
    assert "build_dla_backbone" in BACKBONE_REGISTRY
    assert len(DLA_YAMLS) == 4


def test_output_shapes_and_strides():
    model = dla34().eval()
    shapes = model.output_shape()
    assert list(shapes) == ["level2", "level3", "level4", "level5"]
    assert {k: (s.channels, s.stride) for k, s in shapes.items()} == {
        "level2": (64, 4), "level3": (128, 8), "level4": (256, 16), "level5": (512, 32)}
    with torch.no_grad():
        out = model(torch.randn(2, 3, 128, 160))
    for name, s in shapes.items():
        assert out[name].shape == (2, s.channels, 128 // s.stride, 160 // s.stride)
    assert model.size_divisibility == 32


def test_parameter_count_and_names():
    model = dla34()
    params = dict(model.named_parameters())
    total = sum(p.numel() for p in params.values())
    # original DLA-34 body (all keys of its checkpoint but the 512->1000 1x1-conv fc);
    # with the fc (513,000) that is 15.78 M; less the never-used outer projections of
    # level3/level4 (41,728) it is timm's 15.74 M.
    assert total == 15_270_832
    dead = [k for k, p in params.items() if not p.requires_grad]
    assert sorted(dead) == [f"level{i}.project.{j}.{w}" for i in (3, 4) for j, w in
                            ((0, "weight"), (1, "bias"), (1, "weight"))]
    assert total - sum(params[k].numel() for k in dead) + 513_000 == 15_742_104
    keys = set(model.state_dict())
    for k in ["base_layer.0.weight", "base_layer.1.running_var", "level0.0.weight", "level1.1.bias",
              "level2.tree1.conv1.weight", "level2.tree2.bn2.weight", "level2.root.conv.weight",
              "level2.project.0.weight", "level3.tree1.tree1.conv1.weight", "level3.tree1.root.conv.weight",
              "level3.tree1.project.1.weight", "level3.tree2.root.conv.weight", "level3.project.0.weight",
              "level5.root.bn.running_mean", "level5.project.0.weight"]:
        assert k in keys, k
    # roots aggregate (block outputs + children): level3.tree2 sees 128+128 + 64 (input) + 128 (tree1)
    assert params["level3.tree2.root.conv.weight"].shape == (128, 448, 1, 1)
    assert params["level5.root.conv.weight"].shape == (512, 512 + 512 + 256, 1, 1)
    assert params["level2.root.conv.weight"].shape == (64, 128, 1, 1)


def test_imagenet_checkpoint_keys_map():
    # the original checkpoint: our body's keys (no num_batches_tracked, which its PyTorch
    # predates) plus the 1x1-conv classifier
    ckpt = {k: v for k, v in dla34().state_dict().items() if not k.endswith("num_batches_tracked")}
    ckpt.update({"fc.weight": torch.zeros(1000, 512, 1, 1), "fc.bias": torch.zeros(1000)})
    converted = convert_state_dict(ckpt)  # the checkpointer's conversion table
    assert "backbone.bottom_up.level3.tree1.tree1.conv1.weight" in converted
    model = build_model(load(DLA_YAMLS[0]))
    result = model.load_state_dict(converted, strict=False)
    assert not result.unexpected_keys
    # (BatchNorm fills in a num_batches_tracked missing from an old checkpoint itself)
    assert not [k for k in result.missing_keys if k.startswith("backbone.bottom_up.")]


@pytest.mark.parametrize("norm", ["FrozenBN", "BN", "SyncBN", "GN"])
def test_norms(norm):
    model = dla34(norm).train()
    out = model(torch.randn(2, 3, 64, 64))
    assert out["level5"].shape == (2, 512, 2, 2)
    if norm == "FrozenBN":
        assert isinstance(model.base_layer[1], FrozenBatchNorm2d)
    if norm == "GN":  # 16-channel stages use 16 groups
        assert model.base_layer[1].num_groups == 16 and model.level5.root.bn.num_groups == 32


def test_freeze_at_and_out_features_from_config():
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.BACKBONE.FREEZE_AT", "2", "MODEL.DLA.NORM", "BN"])
    body = build_dla_backbone(cfg, ShapeSpec(channels=3))
    assert list(body.output_shape()) == ["level2", "level3", "level4", "level5"]  # "stageN" defaults
    assert not any(p.requires_grad for p in body.level2.parameters())
    assert not any(p.requires_grad for p in body.level1.parameters())
    assert isinstance(body.level2.root.bn, FrozenBatchNorm2d)
    assert all(p.requires_grad for n, p in body.level3.named_parameters() if not n.startswith("project."))
    cfg.merge_from_list(["MODEL.DLA.CONV_BODY", "DLA999"])
    with pytest.raises(ValueError, match="DLA34"):
        build_dla_backbone(cfg, ShapeSpec(channels=3))


@pytest.mark.parametrize("path", DLA_YAMLS, ids=lambda p: p.stem)
def test_fcos_rt_yaml_builds_and_infers(path):
    cfg = load(path)
    model = build_model(cfg).eval()
    shapes = model.backbone.output_shape()
    assert {k: s.stride for k, s in shapes.items()} == {"p3": 8, "p4": 16, "p5": 32}
    assert model.backbone.bottom_up.base_layer[1].__class__.__name__ == "SyncBatchNorm"
    image = torch.randint(0, 256, (3, 128, 160), dtype=torch.uint8)
    with torch.no_grad():
        (out,) = model([{"image": image}])
    inst = out["instances"]
    assert inst.image_size == (128, 160)
    assert inst.pred_boxes.tensor.shape[1] == 4 and len(inst.scores) == len(inst)


def _batch():
    batch = []
    for boxes, classes in [([[10, 20, 70, 90], [80, 30, 150, 120]], [0, 5]), ([[30, 30, 100, 110]], [2])]:
        inst = Instances((128, 160))
        inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        inst.gt_classes = torch.tensor(classes)
        batch.append({"image": torch.randint(0, 256, (3, 128, 160), dtype=torch.uint8), "instances": inst})
    return batch


@pytest.mark.parametrize("opts", [
    ("MODEL.DLA.NORM", "BN", "MODEL.FCOS.NORM", "BN"),
    (),  # SyncBN as in the YAML: nn.SyncBatchNorm without a process group acts as BN
], ids=["BN", "SyncBN"])
def test_fcos_rt_training_step(opts):
    torch.manual_seed(0)
    model = build_model(load(DLA_YAMLS[0], *opts)).train()
    losses = model(_batch())
    assert losses and all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values()), [n for n, g in grads.items() if g is None]
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert grads["backbone.bottom_up.base_layer.0.weight"].abs().sum() > 0

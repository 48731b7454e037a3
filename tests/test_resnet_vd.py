"""ResNet-vd (adet/modeling/backbone/resnet_vd.py): deep stem, average-pool shortcuts,
deformable stages, SparseInst's r50vd configs, and the parameter names of SparseInst's
ResNet-vd / timm's resnet50d (checkpoints in that naming load with no missing or
unexpected keys)."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.layers import Conv2d, ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.backbone.resnet import BottleneckBlock, build_resnet_backbone
from detectron2.structures import BitMasks, Instances
from detectron2.utils.events import EventStorage

from adet.config import get_cfg
from adet.modeling.backbone.resnet_deform import DeformBottleneckBlock
from adet.modeling.backbone.resnet_vd import (
    AvgDownConv2d,
    DeepStem,
    build_resnet_vd_backbone,
    convert_reference_state_dict,
    to_reference_names,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "SparseInst"
# timm's resnet50d has 25,576,264 parameters, 2,049,000 of them in its 1000-way classifier.
RESNET50D_PARAMS_WITHOUT_FC = 25_576_264 - 2_049_000
TINY_HEAD = [
    "MODEL.SPARSE_INST.ENCODER.NUM_CHANNELS", "32", "MODEL.SPARSE_INST.DECODER.NUM_MASKS", "8",
    "MODEL.SPARSE_INST.DECODER.KERNEL_DIM", "8", "MODEL.SPARSE_INST.DECODER.INST.DIM", "32",
    "MODEL.SPARSE_INST.DECODER.INST.CONVS", "1", "MODEL.SPARSE_INST.DECODER.MASK.DIM", "32",
    "MODEL.SPARSE_INST.DECODER.MASK.CONVS", "1",
]


def vd_cfg(name="sparse_inst_r50vd_giam.yaml", *opts):
    cfg = get_cfg()
    cfg.merge_from_file(str(CONFIGS / name))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", *opts])
    return cfg


def backbone(cfg):
    return build_resnet_vd_backbone(cfg, ShapeSpec(channels=3))


def reference_resnet_names(blocks=(3, 4, 6, 3)):
    """timm's ResNet-D state-dict names (without ``fc``), written out from its layout."""
    norm = ["weight", "bias", "running_mean", "running_var"]
    names = ["conv1.0.weight"] + [f"conv1.1.{n}" for n in norm] + ["conv1.3.weight"]
    names += [f"conv1.4.{n}" for n in norm] + ["conv1.6.weight"] + [f"bn1.{n}" for n in norm]
    for stage, num in enumerate(blocks, start=1):
        for i in range(num):
            block = f"layer{stage}.{i}"
            for k in (1, 2, 3):
                names += [f"{block}.conv{k}.weight"] + [f"{block}.bn{k}.{n}" for n in norm]
            if i == 0:
                names += [f"{block}.downsample.1.weight"] + [f"{block}.downsample.2.{n}" for n in norm]
    return names


def test_deep_stem_is_three_3x3_convs_then_relu_and_max_pool():
    stem = DeepStem(3, 64, norm="")
    assert [c.weight.shape for c in stem.conv1] == [(32, 3, 3, 3), (32, 32, 3, 3), (64, 32, 3, 3)]
    assert stem.stride == 4 and stem.out_channels == 64
    x = torch.randn(2, 3, 33, 47)
    w = [c.weight for c in stem.conv1]
    y = F.relu(F.conv2d(x, w[0], stride=2, padding=1))
    y = F.relu(F.conv2d(y, w[1], padding=1))
    y = F.relu(F.conv2d(y, w[2], padding=1))
    expected = F.max_pool2d(y, 3, 2, 1)
    torch.testing.assert_close(stem(x), expected)
    assert expected.shape[-2:] == (9, 12)


def test_avg_down_shortcut_averages_2x2_then_projects():
    conv = AvgDownConv2d(2, 3, pool=2, norm="")
    x = torch.randn(1, 2, 5, 7)
    expected = F.conv2d(F.avg_pool2d(x, 2, 2, ceil_mode=True, count_include_pad=False), conv.weight)
    torch.testing.assert_close(conv(x), expected)
    assert conv(x).shape[-2:] == (3, 4)  # ceil mode keeps the odd last row / column
    ones = AvgDownConv2d(1, 1, pool=2, norm="")
    torch.nn.init.ones_(ones.weight)
    # Padding is not counted: the 1-pixel-wide last windows average one value, not 0.5.
    assert torch.equal(ones(torch.ones(1, 1, 5, 5)), torch.ones(1, 1, 3, 3))


def test_r50vd_structure_outputs_and_parameter_count():
    cfg = vd_cfg("sparse_inst_r50vd_giam.yaml", "MODEL.RESNETS.NORM", "BN", "MODEL.BACKBONE.FREEZE_AT", "0")
    net = backbone(cfg)
    assert isinstance(net.stem, DeepStem)
    assert sum(p.numel() for p in net.parameters()) == RESNET50D_PARAMS_WITHOUT_FC
    first = [stage[0] for stage in net.stages]
    assert type(first[0].shortcut) is Conv2d  # res2: stride 1, a plain 1x1 projection
    assert [type(b.shortcut) for b in first[1:]] == [AvgDownConv2d] * 3
    assert all(isinstance(b, BottleneckBlock) for stage in net.stages for b in stage)
    out = net(torch.randn(1, 3, 64, 96))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "res3": (1, 512, 8, 12), "res4": (1, 1024, 4, 6), "res5": (1, 2048, 2, 3)}
    assert {k: (s.channels, s.stride) for k, s in net.output_shape().items()} == {
        "res3": (512, 8), "res4": (1024, 16), "res5": (2048, 32)}


def test_r50vd_dcn_has_deformable_res4_res5_and_trains():
    cfg = vd_cfg("sparse_inst_r50vd_dcn_giam.yaml")
    net = backbone(cfg)
    kinds = [{type(b) for b in stage} for stage in net.stages]
    assert kinds == [{BottleneckBlock}, {BottleneckBlock}, {DeformBottleneckBlock}, {DeformBottleneckBlock}]
    assert type(net.res4[0].shortcut) is AvgDownConv2d
    torch.manual_seed(0)
    for stage in (net.res4, net.res5):  # non-zero offsets, so the sampling really moves
        for block in stage:
            torch.nn.init.normal_(block.conv2_offset.weight, std=0.01)
    out = net(torch.randn(1, 3, 64, 64))
    sum(v.sum() for v in out.values()).backward()
    offset_grad = net.res5[0].conv2_offset.weight.grad
    assert offset_grad is not None and offset_grad.abs().sum() > 0
    assert net.stem.conv1[0].weight.grad.abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_freeze_at_freezes_the_deep_stem_and_res2():
    net = backbone(vd_cfg("sparse_inst_r50vd_giam.yaml", "MODEL.BACKBONE.FREEZE_AT", "2"))
    assert not any(p.requires_grad for p in net.stem.parameters())
    assert not any(p.requires_grad for p in net.res2.parameters())
    assert all(p.requires_grad for p in net.res3.parameters())


def test_our_names_are_detectron2_resnet_names_but_the_stem():
    cfg = vd_cfg()
    ours = set(backbone(cfg).state_dict())
    detectron2 = set(build_resnet_backbone(cfg, ShapeSpec(channels=3)).state_dict())
    assert {k for k in ours if not k.startswith("stem.")} == {k for k in detectron2 if not k.startswith("stem.")}
    norm = ["weight", "bias", "running_mean", "running_var"]
    assert {k for k in ours if k.startswith("stem.")} == {
        f"stem.conv1.{i}.{n}" for i in range(3) for n in ["weight"] + [f"norm.{m}" for m in norm]}


def test_reference_names_are_timm_resnet50d_names_with_its_shapes():
    state = backbone(vd_cfg()).state_dict()
    names = to_reference_names(state)
    assert sorted(names.values()) == sorted(reference_resnet_names())
    shapes = {names[k]: tuple(v.shape) for k, v in state.items()}
    assert shapes["conv1.0.weight"] == (32, 3, 3, 3)
    assert shapes["conv1.3.weight"] == (32, 32, 3, 3)
    assert shapes["conv1.6.weight"] == (64, 32, 3, 3)
    assert shapes["bn1.running_var"] == (64,)
    assert shapes["layer1.0.downsample.1.weight"] == (256, 64, 1, 1)
    assert shapes["layer3.0.downsample.2.weight"] == (1024,)
    assert shapes["layer4.2.conv3.weight"] == (2048, 512, 1, 1)
    # Same-shape entries that must not be swapped: each conv and norm to its own name.
    assert {k: names[k] for k in [
        "stem.conv1.0.norm.weight", "stem.conv1.1.weight", "stem.conv1.1.norm.bias",
        "stem.conv1.2.norm.running_mean", "res2.0.shortcut.norm.weight", "res3.1.conv1.norm.running_var",
        "res3.1.conv2.weight", "res4.5.conv3.norm.bias",
    ]} == {
        "stem.conv1.0.norm.weight": "conv1.1.weight", "stem.conv1.1.weight": "conv1.3.weight",
        "stem.conv1.1.norm.bias": "conv1.4.bias", "stem.conv1.2.norm.running_mean": "bn1.running_mean",
        "res2.0.shortcut.norm.weight": "layer1.0.downsample.2.weight",
        "res3.1.conv1.norm.running_var": "layer2.1.bn1.running_var", "res3.1.conv2.weight": "layer2.1.conv2.weight",
        "res4.5.conv3.norm.bias": "layer3.5.bn3.bias",
    }


def test_r101vd_reference_names():
    state = backbone(vd_cfg("sparse_inst_r50vd_giam.yaml", "MODEL.RESNETS.DEPTH", "101")).state_dict()
    assert sorted(to_reference_names(state).values()) == sorted(reference_resnet_names((3, 4, 23, 3)))


def test_dcn_blocks_keep_conv2_offset_under_reference_names():
    names = to_reference_names(backbone(vd_cfg("sparse_inst_r50vd_dcn_giam.yaml")).state_dict())
    assert names["res4.0.conv2_offset.weight"] == "layer3.0.conv2_offset.weight"
    assert names["res5.2.conv2.norm.running_mean"] == "layer4.2.bn2.running_mean"
    assert not any("conv2_offset" in v for v in names.values() if v.startswith(("layer1", "layer2")))


def tiny_model(name="sparse_inst_r50vd_giam.yaml"):
    torch.manual_seed(0)
    return build_model(vd_cfg(name, *TINY_HEAD)).eval()


def reference_named(state):
    """The model's state dict with the backbone in the reference naming."""
    names = to_reference_names(k[len("backbone."):] for k in state if k.startswith("backbone."))
    return {("backbone." + names[k[9:]] if k.startswith("backbone.") else k): v for k, v in state.items()}


@torch.no_grad()
def randomize_backbone(model, seed=7):
    """New random values for every backbone tensor (positive for the norms), so that a
    key mapped to the wrong place changes the outputs."""
    torch.manual_seed(seed)
    for name, tensor in model.state_dict().items():
        if name.startswith("backbone.") and tensor.is_floating_point():
            norm = ".norm." in name
            tensor.copy_(torch.rand_like(tensor) + 0.5 if norm else torch.randn_like(tensor) * 0.05)


@pytest.mark.parametrize("name", ["sparse_inst_r50vd_giam.yaml", "sparse_inst_r50vd_dcn_giam.yaml"])
def test_reference_named_checkpoint_loads_strictly_and_gives_same_outputs(name):
    source = tiny_model(name)
    randomize_backbone(source)
    state = reference_named(source.state_dict())
    assert "backbone.conv1.6.weight" in state and "backbone.stem.conv1.2.weight" not in state
    target = tiny_model(name)
    target.load_state_dict(state, strict=True)
    torch.manual_seed(1)
    x = torch.randn(1, 3, 64, 64)
    image = {"image": torch.randint(0, 255, (3, 64, 80), dtype=torch.uint8)}
    with torch.no_grad():
        expected, got = source.backbone(x), target.backbone(x)
        (a,), (b,) = source([image]), target([image])
    for k in ("res3", "res4", "res5"):
        assert torch.equal(got[k], expected[k]), k
    assert torch.equal(a["instances"].scores, b["instances"].scores)
    assert torch.equal(a["instances"].pred_masks, b["instances"].pred_masks)


def test_detectron2_checkpointer_loads_a_reference_named_file(tmp_path):
    source = tiny_model()
    randomize_backbone(source)
    path = tmp_path / "r50vd_reference_names.pth"
    torch.save({"model": reference_named(source.state_dict())}, path)
    target = tiny_model()
    DetectionCheckpointer(target).load(str(path))
    for (k, a), (_, b) in zip(source.state_dict().items(), target.state_dict().items()):
        assert torch.equal(a, b), k


def test_convert_bare_imagenet_state_dict():
    model = tiny_model()
    randomize_backbone(model)
    bare = {to_reference_names([k[9:]])[k[9:]]: v.clone() for k, v in model.state_dict().items()
            if k.startswith("backbone.")}
    bare.update({"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000),
                 "conv1.1.num_batches_tracked": torch.tensor(5), "layer1.0.bn1.num_batches_tracked": torch.tensor(5)})
    converted = convert_reference_state_dict(bare, model.backbone)
    assert set(converted) == {k for k in model.state_dict() if k.startswith("backbone.")}
    fresh = tiny_model()
    result = fresh.load_state_dict(converted, strict=False)
    assert not result.unexpected_keys
    assert not [k for k in result.missing_keys if k.startswith("backbone.")]
    for k, v in converted.items():
        assert torch.equal(fresh.state_dict()[k], v), k
    with pytest.raises(KeyError, match="not a reference ResNet-vd key"):
        convert_reference_state_dict({"layer9.0.conv1.weight": torch.zeros(1)}, model.backbone)


@pytest.mark.parametrize("name", ["sparse_inst_r50vd_base.yaml", "sparse_inst_r50vd_dcn_giam_aug.yaml"])
def test_sparseinst_r50vd_trains_one_step(name):
    torch.manual_seed(0)
    model = build_model(vd_cfg(name, *TINY_HEAD)).train()
    masks = torch.zeros(2, 64, 64, dtype=torch.bool)
    masks[0, 8:30, 8:40] = True
    masks[1, 36:60, 20:60] = True
    inst = Instances((64, 64), gt_classes=torch.tensor([3, 7]), gt_masks=BitMasks(masks))
    batch = [{"image": torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8), "instances": inst}]
    with EventStorage(0):
        losses = model(batch)
    assert set(losses) == {"loss_ce", "loss_mask", "loss_dice", "loss_objectness"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    stem_grad = model.backbone.stem.conv1[0].weight.grad
    assert stem_grad is not None and torch.isfinite(stem_grad).all() and stem_grad.abs().sum() > 0

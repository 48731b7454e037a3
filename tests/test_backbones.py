"""Backbones and necks beyond ResNet-FPN: BiFPN, MobileNetV2, VoVNet-V2, EfficientNet-Lite0-4
with the FPN variants of every method, DLA's ImageNet checkpoint (CPU, small inputs)."""
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone, build_model

from adet.config import get_cfg
from adet.modeling.backbone.bifpn import SingleBiFPN, bifpn_nodes
from adet.modeling.backbone.efficientnet_lite import (
    EFFICIENTNET_LITE_SPECS,
    EfficientNetLite,
    convert_efficientnet_lite_imagenet_state_dict,
    round_channels,
)
from adet.modeling.backbone.mobilenet_v2 import MobileNetV2, convert_mobilenet_v2_imagenet_state_dict
from adet.modeling.backbone.vovnet import ESEModule, VoVNet

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
NO_WEIGHTS = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.EFFICIENTNET.PRETRAINED", False]
P3_P7 = {"p3": 8, "p4": 16, "p5": 32, "p6": 64, "p7": 128}
P2_P6 = {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
EFFICIENTNET_FPN = ["MODEL.EFFICIENTNET.NAME", "lite0", "MODEL.EFFICIENTNET.NORM", "BN"]
RES2_RES5 = ["res2", "res3", "res4", "res5"]


def load(yaml, *opts):
    cfg = get_cfg()
    cfg.merge_from_file(str(CONFIGS / yaml))
    cfg.merge_from_list([*NO_WEIGHTS, *opts])
    return cfg


def from_opts(*opts):
    cfg = get_cfg()
    cfg.merge_from_list([*NO_WEIGHTS, *opts])
    return cfg


# (id, cfg factory, expected {output: stride}, expected channels of every output or None)
CASES = [
    ("condinst_R50_BiFPN", lambda: load("CondInst/MS_R_50_BiFPN_1x.yaml"), P3_P7, 160),
    ("boxinst_R101_BiFPN_dcni3", lambda: load("BoxInst/MS_R_101_BiFPN_dcni3_3x.yaml"), P3_P7, 160),
    ("MNV2_BiFPN", lambda: load("CondInst/MS_R_50_BiFPN_1x.yaml", "MODEL.MOBILENET", True,
                                "MODEL.BiFPN.NUM_REPEATS", 2, "MODEL.BiFPN.OUT_CHANNELS", 64), P3_P7, 64),
    ("MNV2_FCOS_FPN", lambda: load("FCOS-Detection/R_50_1x.yaml", "MODEL.MOBILENET", True), P3_P7, 256),
    ("MNV2_FPN_P2_P6", lambda: from_opts(
        "MODEL.BACKBONE.NAME", "build_mnv2_fpn_backbone", "MODEL.RESNETS.OUT_FEATURES", RES2_RES5,
        "MODEL.FPN.IN_FEATURES", RES2_RES5, "MODEL.FPN.OUT_CHANNELS", 64), P2_P6, 64),
    ("MNV2_body_res3_res5", lambda: from_opts(
        "MODEL.BACKBONE.NAME", "build_mnv2_backbone", "MODEL.RESNETS.OUT_FEATURES", ["res3", "res4", "res5"]),
     {"res3": 8, "res4": 16, "res5": 32}, None),
    ("V39_FCOS_FPN", lambda: load("FCOS-Detection/vovnet/MS_V_39_3x.yaml"), P3_P7, 256),
    ("V39_FPN_P2_P6", lambda: from_opts(
        "MODEL.BACKBONE.NAME", "build_vovnet_fpn_backbone", "MODEL.VOVNET.NORM", "BN",
        "MODEL.FPN.IN_FEATURES", ["stage2", "stage3", "stage4", "stage5"], "MODEL.FPN.OUT_CHANNELS", 64), P2_P6, 64),
    ("lite0_FPN_P2_P6", lambda: from_opts(
        "MODEL.BACKBONE.NAME", "build_efficientnet_lite_fpn_backbone", *EFFICIENTNET_FPN,
        "MODEL.FPN.IN_FEATURES", ["stage2", "stage3", "stage4", "stage5"], "MODEL.FPN.OUT_CHANNELS", 64), P2_P6, 64),
    ("lite2_FCOS_FPN", lambda: from_opts(
        "MODEL.BACKBONE.NAME", "build_fcos_efficientnet_lite_fpn_backbone", "MODEL.EFFICIENTNET.NAME", "lite2",
        "MODEL.FPN.IN_FEATURES", ["stage3", "stage4", "stage5"], "MODEL.FPN.OUT_CHANNELS", 64), P3_P7, 64),
    ("lite1_body_res3_res5", lambda: from_opts(
        "MODEL.BACKBONE.NAME", "build_efficientnet_lite_backbone", "MODEL.EFFICIENTNET.NAME", "lite1",
        "MODEL.EFFICIENTNET.OUT_FEATURES", ["res3", "res4", "res5"]), {"res3": 8, "res4": 16, "res5": 32}, None),
    ("DLA34_FCOS_RT", lambda: load("FCOS-Detection/FCOS_RT/MS_DLA_34_4x_syncbn.yaml"),
     {"p3": 8, "p4": 16, "p5": 32}, 256),
]


@pytest.mark.parametrize("make_cfg,strides,channels", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_backbone_builds_runs_forward_and_backward(make_cfg, strides, channels):
    torch.manual_seed(0)
    backbone = build_backbone(make_cfg()).train()
    shapes = backbone.output_shape()
    assert {k: s.stride for k, s in shapes.items()} == strides
    if channels is not None:
        assert {s.channels for s in shapes.values()} == {channels}
    x = torch.randn(2, 3, 64, 64)  # batch 2: BatchNorm needs 2 values at the 1x1 levels
    out = backbone(x)
    assert list(out) == list(shapes)
    for name, s in shapes.items():
        side = -(-64 // s.stride)  # ceil: the top levels of a 64x64 input are 1x1
        assert out[name].shape == (2, s.channels, side, side), name
    sum(v.square().mean() for v in out.values()).backward()
    trainable = {n: p for n, p in backbone.named_parameters() if p.requires_grad}
    assert trainable
    missing = [n for n, p in trainable.items() if p.grad is None]
    assert not missing, missing[:5]
    assert all(torch.isfinite(p.grad).all() for p in trainable.values())


def test_builders_registered():
    for name in ["build_fcos_resnet_bifpn_backbone", "build_mnv2_backbone", "build_mnv2_fpn_backbone",
                 "build_vovnet_backbone", "build_vovnet_fpn_backbone", "build_fcos_vovnet_fpn_backbone",
                 "build_efficientnet_lite_backbone", "build_efficientnet_lite_fpn_backbone",
                 "build_fcos_efficientnet_lite_fpn_backbone", "build_fcos_dla_fpn_backbone"]:
        assert name in BACKBONE_REGISTRY, name


# --- BiFPN ---------------------------------------------------------------------------


def test_bifpn_node_graphs():
    # the published 3- and 5-level BiFPN layers: top-down, then bottom-up
    assert bifpn_nodes(3) == [(1, (1, 2)), (0, (0, 3)), (1, (1, 3, 4)), (2, (2, 5))]
    assert bifpn_nodes(5) == [(3, (3, 4)), (2, (2, 5)), (1, (1, 6)), (0, (0, 7)),
                              (1, (1, 7, 8)), (2, (2, 6, 9)), (3, (3, 5, 10)), (4, (4, 11))]
    with pytest.raises(ValueError, match="at least 2"):
        bifpn_nodes(1)


def test_bifpn_parameter_names():
    model = build_model(load("CondInst/MS_R_50_BiFPN_1x.yaml"))
    keys = set(model.state_dict())
    assert "backbone.bottom_up.backbone.res5.2.conv3.weight" in keys
    res6 = {k for k in keys if k.startswith("backbone.bottom_up.res")}
    assert res6 == {f"backbone.bottom_up.res6.reduction.{p}" for p in
                    ["weight", "norm.weight", "norm.bias", "norm.running_mean", "norm.running_var",
                     "norm.num_batches_tracked"]}  # res7 (160 -> 160) is a max pool only
    assert model.backbone.bottom_up.res6.reduction.weight.shape == (160, 2048, 1, 1)
    assert len(model.backbone.repeated_bifpn) == 6
    first = {k.split(".")[3] for k in keys if k.startswith("backbone.repeated_bifpn.0.")}
    nodes = ["f3_3_4", "f2_2_5", "f1_1_6", "f0_0_7", "f1_1_7_8", "f2_2_6_9", "f3_3_5_10", "f4_4_11"]
    expected = {f"weights_{n}" for n in nodes} | {f"outputs_{n}" for n in nodes}
    assert first == expected | {"lateral_0_f0", "lateral_1_f1", "lateral_2_f2"}
    second = {k.split(".")[3] for k in keys if k.startswith("backbone.repeated_bifpn.5.")}
    assert second == expected  # later layers' inputs are already 160 wide
    bifpn = model.backbone.repeated_bifpn[0]
    assert bifpn.lateral_0_f0.weight.shape == (160, 512, 1, 1) and bifpn.lateral_0_f0.bias is not None
    assert bifpn.outputs_f1_1_7_8.bias is None  # SyncBN: no bias
    assert bifpn.weights_f1_1_7_8.shape == (3,)


def test_bifpn_fast_normalized_fusion():
    torch.manual_seed(0)
    layer = SingleBiFPN([4, 4], 4, norm="").eval()
    for name in ["outputs_f0_0_1", "outputs_f1_1_2"]:
        conv = getattr(layer, name)
        torch.nn.init.dirac_(conv.weight)
        torch.nn.init.zeros_(conv.bias)
    with torch.no_grad():
        layer.weights_f0_0_1.copy_(torch.tensor([1.0, 3.0]))
        layer.weights_f1_1_2.copy_(torch.tensor([-2.0, 2.0]))  # ReLU: the input is ignored
    x0, x1 = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 4, 4)
    with torch.no_grad():
        out0, out1 = layer([x0, x1])
    td = F.silu((1.0 * x0 + 3.0 * F.interpolate(x1, size=(8, 8), mode="nearest")) / (4.0 + 1e-4))
    bu = F.silu(2.0 * F.max_pool2d(td, 3, 2, 1) / (2.0 + 1e-4))
    torch.testing.assert_close(out0, td)
    torch.testing.assert_close(out1, bu)


def test_bifpn_inputs_must_be_body_outputs():
    cfg = load("CondInst/MS_R_50_BiFPN_1x.yaml", "MODEL.BiFPN.IN_FEATURES", ["res2", "res3", "res4", "res5"])
    with pytest.raises(ValueError, match=r"MODEL.BiFPN.IN_FEATURES.*res2"):
        build_backbone(cfg)


# --- MobileNetV2 -----------------------------------------------------------------------


def test_mobilenet_v2_equals_torchvision():
    """Same network as torchvision's ``mobilenet_v2`` features 0-17, whose checkpoints load
    after the key conversion."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    reference = torchvision.models.mobilenet_v2().eval()
    for m in reference.modules():  # non-trivial statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    body = MobileNetV2(norm="BN").eval()
    body.load_state_dict(convert_mobilenet_v2_imagenet_state_dict(reference.state_dict()), strict=True)
    assert "features.1.conv.3.weight" in body.state_dict() and "features.2.conv.7.running_var" in body.state_dict()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        out = body(x)
        for i, layer in enumerate(reference.features[:18]):
            x = layer(x)
            name = {3: "res2", 6: "res3", 13: "res4", 17: "res5"}.get(i)
            if name:
                torch.testing.assert_close(out[name], x, rtol=0, atol=0)
    assert {k: (s.channels, s.stride) for k, s in body.output_shape().items()} == {
        "res2": (24, 4), "res3": (32, 8), "res4": (96, 16), "res5": (320, 32)}


def test_mobilenet_v2_freeze_at():
    cfg = from_opts("MODEL.BACKBONE.NAME", "build_mnv2_backbone", "MODEL.RESNETS.NORM", "BN",
                    "MODEL.BACKBONE.FREEZE_AT", 2)
    body = build_backbone(cfg)
    frozen = [i for i, m in enumerate(body.features) if not any(p.requires_grad for p in m.parameters())]
    assert frozen == [0, 1, 2, 3]  # stride <= 4: up to res2
    assert isinstance(body.features[3].conv[1], FrozenBatchNorm2d)
    assert isinstance(body.features[4].conv[1], torch.nn.BatchNorm2d)


# --- VoVNet ----------------------------------------------------------------------------


@pytest.mark.parametrize("conv_body,modules", [("V-39-eSE", (1, 1, 2, 2)), ("V-57-eSE", (1, 1, 4, 3)),
                                               ("V-99-eSE", (1, 3, 9, 3))])
def test_vovnet_structure_and_names(conv_body, modules):
    body = VoVNet(conv_body, norm="FrozenBN")
    for stage, n in zip(range(2, 6), modules):
        names = [k for k in getattr(body, f"stage{stage}")._modules if k.startswith("OSA")]
        assert names == [f"OSA{stage}_{m}" for m in range(1, n + 1)]
        osa = getattr(body, f"stage{stage}")
        assert [getattr(osa, k).identity for k in names] == [False] + [True] * (n - 1)
        assert ("Pooling" in osa._modules) == (stage > 2)
    keys = set(body.state_dict())
    for k in ["stem.stem_1/conv.weight", "stem.stem_3/norm.running_var",
              "stage2.OSA2_1.layers.4.OSA2_1_4/conv.weight", "stage2.OSA2_1.concat.OSA2_1_concat/conv.weight",
              "stage5.OSA5_1.ese.fc.weight", "stage5.OSA5_1.ese.fc.bias"]:
        assert k in keys, k
    # concat: the module's input and its 5 layers' outputs
    assert body.stage4.OSA4_1.concat[0].weight.shape == (768, 512 + 5 * 192, 1, 1)
    assert body.stage4.OSA4_2.concat[0].weight.shape == (768, 768 + 5 * 192, 1, 1)


def test_vovnet_ese_and_freeze():
    ese = ESEModule(8)
    x = torch.randn(2, 8, 5, 5)
    expected = x * F.hardsigmoid(ese.fc(x.mean(dim=(2, 3), keepdim=True)))
    torch.testing.assert_close(ese(x), expected)
    cfg = from_opts("MODEL.BACKBONE.NAME", "build_vovnet_backbone", "MODEL.VOVNET.NORM", "BN",
                    "MODEL.BACKBONE.FREEZE_AT", 2, "MODEL.VOVNET.OUT_FEATURES", ["stage4"])
    body = build_backbone(cfg)
    assert not any(p.requires_grad for p in [*body.stem.parameters(), *body.stage2.parameters()])
    assert all(p.requires_grad for p in body.stage3.parameters())
    assert isinstance(body.stage2.OSA2_1.concat[1], FrozenBatchNorm2d)
    assert list(body(torch.randn(1, 3, 64, 64))) == ["stage4"]
    with pytest.raises(ValueError, match="V-39-eSE"):
        VoVNet("V-42")


# --- EfficientNet-Lite -----------------------------------------------------------------


LITE_TABLE = {  # published shapes: channels of stages 1-7, blocks per stage
    "lite0": ((16, 24, 40, 80, 112, 192, 320), (1, 2, 2, 3, 3, 4, 1)),
    "lite1": ((16, 24, 40, 80, 112, 192, 320), (1, 3, 3, 4, 4, 5, 1)),
    "lite2": ((16, 24, 48, 88, 120, 208, 352), (1, 3, 3, 4, 4, 5, 1)),
    "lite3": ((24, 32, 48, 96, 136, 232, 384), (1, 3, 3, 5, 5, 6, 1)),
    "lite4": ((24, 32, 56, 112, 160, 272, 448), (1, 4, 4, 6, 6, 8, 1)),
}


@pytest.mark.parametrize("name", sorted(LITE_TABLE))
def test_efficientnet_lite_shapes(name):
    stem, stages = EFFICIENTNET_LITE_SPECS[name]
    assert stem == 32
    assert (tuple(s[0] for s in stages), tuple(s[1] for s in stages)) == LITE_TABLE[name]
    body = EfficientNetLite(name, norm="BN", out_features=["stage2", "stage3", "stage4", "stage5"])
    channels = LITE_TABLE[name][0]
    assert [s.channels for s in body.output_shape().values()] == [channels[1], channels[2], channels[4], channels[6]]
    package = pytest.importorskip("efficientnet_lite_pytorch")
    reference = package.EfficientNet.from_name(f"efficientnet-{name}")
    ours = {k: v.shape for k, v in body.state_dict().items()}
    theirs = {k: v.shape for k, v in convert_efficientnet_lite_imagenet_state_dict(reference.state_dict()).items()}
    assert ours == theirs


def test_round_channels():
    assert [round_channels(c, 1.2) for c in (16, 24, 112)] == [24, 32, 136]  # 16 * 1.2 -> 16 loses > 10 %
    assert round_channels(320, 1.4) == 448


def test_efficientnet_lite_res_output_names():
    body = EfficientNetLite(out_features=["stage5", "stage3"], output_prefix="res").eval()
    assert {k: s.stride for k, s in body.output_shape().items()} == {"res3": 8, "res5": 32}
    with torch.no_grad():
        assert list(body(torch.randn(1, 3, 64, 64))) == ["res3", "res5"]
    cfg = from_opts("MODEL.BACKBONE.NAME", "build_efficientnet_lite_backbone",
                    "MODEL.EFFICIENTNET.OUT_FEATURES", ["stage3", "res4"])
    with pytest.raises(ValueError, match="OUT_FEATURES"):
        build_backbone(cfg)


# --- the FPN variants in every method ----------------------------------------------------


METHODS = [
    ("CondInst_lite0_P3_P7", "CondInst/MS_R_50_1x.yaml", [
        "MODEL.BACKBONE.NAME", "build_fcos_efficientnet_lite_fpn_backbone", *EFFICIENTNET_FPN,
        "MODEL.FPN.IN_FEATURES", ["stage3", "stage4", "stage5"]]),
    ("SOLOv2_lite0_P2_P6", "SOLOv2/R50_3x.yaml", [
        "MODEL.BACKBONE.NAME", "build_efficientnet_lite_fpn_backbone", *EFFICIENTNET_FPN,
        "MODEL.FPN.IN_FEATURES", ["stage2", "stage3", "stage4", "stage5"]]),
    ("SparseInst_lite0_res3_res5", "SparseInst/sparse_inst_r50_giam.yaml", [
        "MODEL.BACKBONE.NAME", "build_efficientnet_lite_backbone", *EFFICIENTNET_FPN,
        "MODEL.EFFICIENTNET.OUT_FEATURES", ["res3", "res4", "res5"]]),
    ("SOLOv2_V39_P2_P6", "SOLOv2/R50_3x.yaml", [
        "MODEL.BACKBONE.NAME", "build_vovnet_fpn_backbone", "MODEL.VOVNET.NORM", "BN",
        "MODEL.FPN.IN_FEATURES", ["stage2", "stage3", "stage4", "stage5"]]),
    ("SparseInst_MNV2_res3_res5", "SparseInst/sparse_inst_r50_giam.yaml", [
        "MODEL.BACKBONE.NAME", "build_mnv2_backbone"]),
]


@pytest.mark.parametrize("yaml,opts", [m[1:] for m in METHODS], ids=[m[0] for m in METHODS])
def test_method_runs_on_backbone_variant(yaml, opts):
    model = build_model(load(yaml, *opts)).eval()
    with torch.no_grad():
        (out,) = model([{"image": torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8)}])
    inst = out["instances"]
    assert inst.image_size == (64, 96)
    assert inst.pred_masks.shape[1:] == (64, 96)


# --- DLA-34: the ImageNet checkpoint named by the DLA configs ----------------------------


def test_dla_imagenet_checkpoint_loads_through_the_checkpointer(tmp_path):
    """``MODEL.WEIGHTS: .../dla34-ba72cf86.pth`` (keys ``base_layer.*``, ``level*``, ``fc.*``)
    loads into the DLA body of an FCOS-RT model with adet's checkpointer."""
    from adet.checkpoint import AdetCheckpointer, convert_state_dict

    cfg = load("FCOS-Detection/FCOS_RT/MS_DLA_34_4x_syncbn.yaml")
    source = build_model(cfg).backbone.bottom_up  # another random init than `model`'s
    checkpoint = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    checkpoint.update({"fc.weight": torch.randn(1000, 512, 1, 1), "fc.bias": torch.randn(1000)})
    path = tmp_path / "dla34-ba72cf86.pth"
    torch.save(checkpoint, path)

    assert convert_state_dict(checkpoint).keys() == {
        "backbone.bottom_up." + k for k in checkpoint if not k.startswith("fc.")}
    model = build_model(cfg)
    assert not torch.equal(model.backbone.bottom_up.level5.root.conv.weight, source.level5.root.conv.weight)
    AdetCheckpointer(model).load(str(path))
    for k, v in source.state_dict().items():
        torch.testing.assert_close(model.backbone.bottom_up.state_dict()[k], v, rtol=0, atol=0)

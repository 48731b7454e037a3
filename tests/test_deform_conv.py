"""Deformable convolution: the op against hand-made cases and an independent bilinear
reference, the modules' parameter names, the deformable ResNet and the FCOS head option."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone.resnet import BottleneckBlock, build_resnet_backbone
from detectron2.modeling.backbone.resnet import DeformBottleneckBlock as D2DeformBottleneckBlock

from adet.config import get_cfg
from adet.layers import DeformConv, DFConv2d, ModulatedDeformConv, deform_conv2d
from adet.layers import _ext
from adet.layers import deform_conv as deform_conv_module
from adet.modeling.backbone.resnet_deform import (
    DeformBottleneckBlock, build_resnet_deform_backbone, make_deform_stage,
)
from adet.modeling.fcos.head import FCOSHead


# ------------------------------------------------------------- independent reference
def _bilinear_zero_padded(x, py, px):
    """Sample x (N, C, H, W) at real positions py, px (N, Ho, Wo): bilinear, reading 0
    outside the image. Returns (N, C, Ho, Wo)."""
    n, c, h, w = x.shape
    y0, x0 = torch.floor(py), torch.floor(px)
    out = x.new_zeros(n, c, *py.shape[1:])
    flat = x.reshape(n, c, h * w)
    for cy, cx in ((y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)):
        weight = (1 - (py - cy).abs()) * (1 - (px - cx).abs())
        inside = (cy >= 0) & (cy <= h - 1) & (cx >= 0) & (cx <= w - 1)
        index = (cy.clamp(0, h - 1) * w + cx.clamp(0, w - 1)).long().reshape(n, 1, -1)
        value = flat.gather(2, index.expand(n, c, index.shape[-1])).reshape(out.shape)
        out = out + value * (weight * inside).unsqueeze(1)
    return out


def reference_deform_conv(x, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
    """Deformable convolution written from its definition: for every output position o,
    kernel tap k and deformable group g, sample the group's channels at
    o * stride - padding + k * dilation + offset[g, k] and sum weight * mask * sample."""
    n, c_in, h, w = x.shape
    c_out, c_per_group, kh, kw = weight.shape
    groups = c_in // c_per_group
    dgroups = offset.shape[1] // (2 * kh * kw)
    ho = (h + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    wo = (w + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    base_y = (torch.arange(ho, dtype=x.dtype) * stride - padding).view(1, ho, 1)
    base_x = (torch.arange(wo, dtype=x.dtype) * stride - padding).view(1, 1, wo)
    off = offset.reshape(n, dgroups, kh * kw, 2, ho, wo)
    msk = None if mask is None else mask.reshape(n, dgroups, kh * kw, ho, wo)
    cols = x.new_zeros(n, c_in, kh * kw, ho, wo)
    c_per_dgroup = c_in // dgroups
    for g in range(dgroups):
        xs = x[:, g * c_per_dgroup:(g + 1) * c_per_dgroup]
        for i in range(kh):
            for j in range(kw):
                k = i * kw + j
                py = base_y + i * dilation + off[:, g, k, 0]
                px = base_x + j * dilation + off[:, g, k, 1]
                sample = _bilinear_zero_padded(xs, py, px)
                if msk is not None:
                    sample = sample * msk[:, g, k].unsqueeze(1)
                cols[:, g * c_per_dgroup:(g + 1) * c_per_dgroup, k] = sample
    cols = cols.reshape(n, groups, c_per_group * kh * kw, ho, wo)
    wg = weight.reshape(groups, c_out // groups, c_per_group * kh * kw)
    out = torch.einsum("ngkhw,gok->ngohw", cols, wg).reshape(n, c_out, ho, wo)
    return out if bias is None else out + bias.view(1, -1, 1, 1)


def _out_size(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


# ------------------------------------------------------------------------ the op
@pytest.mark.parametrize("stride,padding,dilation,groups", [(1, 1, 1, 1), (2, 1, 1, 2), (1, 2, 2, 1), (2, 0, 1, 4)])
def test_zero_offset_is_regular_conv(stride, padding, dilation, groups):
    torch.manual_seed(0)
    x = torch.randn(2, 8, 11, 9)
    conv = ModulatedDeformConv(8, 12, 3, stride, padding, dilation, groups=groups, bias=True)
    nn.init.normal_(conv.bias)
    ho, wo = _out_size(11, 3, stride, padding, dilation), _out_size(9, 3, stride, padding, dilation)
    offset = torch.zeros(2, 18, ho, wo)
    expected = F.conv2d(x, conv.weight, conv.bias, stride, padding, dilation, groups)
    torch.testing.assert_close(conv(x, offset, torch.ones(2, 9, ho, wo)), expected, atol=1e-5, rtol=0)
    plain = DeformConv(8, 12, 3, stride, padding, dilation, groups=groups)
    plain.weight.data.copy_(conv.weight)
    expected = F.conv2d(x, conv.weight, None, stride, padding, dilation, groups)
    torch.testing.assert_close(plain(x, offset), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dy,dx", [(1, -2), (-3, 0), (2, 2)])
def test_integer_offset_is_shifted_conv(dy, dx):
    torch.manual_seed(1)
    x = torch.randn(1, 4, 10, 12)
    weight = torch.randn(6, 4, 3, 3)
    stride, padding, dilation = 1, 1, 2
    ho, wo = _out_size(10, 3, stride, padding, dilation), _out_size(12, 3, stride, padding, dilation)
    offset = torch.tensor([float(dy), float(dx)]).repeat(9).view(1, 18, 1, 1).expand(1, 18, ho, wo)
    out = deform_conv2d(x, offset, weight, stride=stride, padding=padding, dilation=dilation)
    # Output o reads input o - padding + k * dilation + (dy, dx): embed x in a zero border
    # of M pixels and start the (unpadded) convolution at M - padding + (dy, dx).
    m = 8
    big = F.pad(x, (m, m, m, m))
    shifted = big[:, :, m - padding + dy:, m - padding + dx:]
    expected = F.conv2d(shifted, weight, dilation=dilation)[:, :, :ho, :wo]
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_mask_scales_the_samples():
    torch.manual_seed(2)
    x = torch.randn(2, 4, 7, 7)
    offset = torch.randn(2, 18, 7, 7) * 2
    conv = ModulatedDeformConv(4, 5, 3, padding=1, bias=False)
    plain = conv(x, offset, torch.ones(2, 9, 7, 7))
    torch.testing.assert_close(conv(x, offset, torch.full((2, 9, 7, 7), 0.5)), 0.5 * plain, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "stride,padding,dilation,groups,dgroups,modulated",
    [(1, 1, 1, 1, 1, True), (2, 1, 1, 2, 2, True), (1, 2, 2, 1, 2, False), (2, 0, 1, 2, 1, False)],
)
def test_matches_independent_bilinear_reference(stride, padding, dilation, groups, dgroups, modulated):
    torch.manual_seed(3)
    x = torch.randn(2, 4, 9, 8)
    weight = torch.randn(6, 4 // groups, 3, 3)
    bias = torch.randn(6)
    ho, wo = _out_size(9, 3, stride, padding, dilation), _out_size(8, 3, stride, padding, dilation)
    # Fractional offsets, many of which sample partly or wholly outside the image.
    offset = torch.rand(2, dgroups * 18, ho, wo) * 8 - 4
    mask = torch.rand(2, dgroups * 9, ho, wo) if modulated else None
    out = deform_conv2d(x, offset, weight, bias, stride, padding, dilation, mask)
    expected = reference_deform_conv(x, offset, weight, bias, stride, padding, dilation, mask)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_gradients_flow_to_every_input():
    torch.manual_seed(4)
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    offset = (torch.rand(1, 18, 5, 5, dtype=torch.float64) * 2 - 1).requires_grad_()
    mask = torch.rand(1, 9, 5, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
    out = deform_conv2d(x, offset, weight, bias, 1, 1, 1, mask)
    out.square().sum().backward()
    for t in (x, offset, mask, weight, bias):
        assert t.grad is not None and t.grad.abs().sum() > 0
    # And they are the right gradients (fractional offsets: away from the kinks).
    small = [t.detach()[..., :3, :3].clone().requires_grad_() for t in (x, offset, mask)]
    assert torch.autograd.gradcheck(
        lambda a, o, w, b, m: deform_conv2d(a, o, w, b, 1, 1, 1, m),
        (small[0], small[1], weight, bias, small[2]), eps=1e-6, atol=1e-5,
    )


@pytest.mark.parametrize("modulated", [False, True])
def test_runs_in_float32_under_cpu_autocast(modulated):
    """SOLVER.AMP on the CPU (bfloat16 autocast): the op computes in float32, equal to the
    float32 result, and gradients reach the bfloat16 producer of its input."""
    torch.manual_seed(5)
    conv = (ModulatedDeformConv if modulated else DeformConv)(4, 6, 3, padding=1)
    x = torch.randn(2, 4, 7, 7)
    offset = torch.rand(2, 18, 7, 7) * 2 - 1
    extra = (torch.rand(2, 9, 7, 7),) if modulated else ()
    reference = conv(x, offset, *extra)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(x, offset, *extra)
        half_x = x.to(torch.bfloat16).requires_grad_()
        out_from_half = conv(half_x, offset, *extra)
    assert out.dtype == torch.float32 and torch.allclose(out, reference, atol=1e-5)
    out_from_half.sum().backward()
    assert half_x.grad is not None and torch.isfinite(half_x.grad.float()).all()


def test_empty_input_gives_empty_output_of_the_right_shape():
    conv = DeformConv(4, 6, 3, stride=2, padding=1)
    out = conv(torch.zeros(0, 4, 9, 9), torch.zeros(0, 18, 5, 5))
    assert out.shape == (0, 6, 5, 5)
    out = conv(torch.zeros(1, 4, 0, 9), torch.zeros(1, 18, 0, 5))
    assert out.shape == (1, 6, 0, 5)


def test_norm_and_activation_follow_the_conv():
    conv = ModulatedDeformConv(4, 4, 3, padding=1, norm=nn.BatchNorm2d(4), activation=F.relu)
    conv.eval()
    x, offset, mask = torch.randn(1, 4, 6, 6), torch.randn(1, 18, 6, 6), torch.rand(1, 9, 6, 6)
    raw = deform_conv2d(x, offset, conv.weight, conv.bias, 1, 1, 1, mask)
    torch.testing.assert_close(conv(x, offset, mask), F.relu(conv.norm(raw)))


def test_deform_conv_has_no_bias_like_detectron2():
    assert DeformConv(4, 4, 3).bias is None
    with pytest.raises(ValueError, match="no bias"):
        DeformConv(4, 4, 3, bias=True)
    assert dict(ModulatedDeformConv(4, 6, 3, groups=2).named_parameters())["weight"].shape == (6, 2, 3, 3)


# ----------------------------------------------------------------------- DFConv2d
def test_dfconv2d_names_shapes_and_forward():
    m = DFConv2d(8, 16, with_modulated_dcn=True, kernel_size=3, deformable_groups=2, bias=True)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {
        "offset.weight": (54, 8, 3, 3), "offset.bias": (54,),
        "conv.weight": (16, 8, 3, 3), "conv.bias": (16,),
    }
    x = torch.randn(2, 8, 7, 5)
    out, offset_mask = m(x, return_offset=True)
    assert out.shape == (2, 16, 7, 5)
    expected = deform_conv2d(x, offset_mask[:, :36], m.conv.weight, m.conv.bias, 1, 1, 1,
                             offset_mask[:, 36:].sigmoid())
    torch.testing.assert_close(out, expected)

    m = DFConv2d(8, 16, with_modulated_dcn=False, kernel_size=3, stride=2, dilation=2)
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == {
        "offset.weight": (18, 8, 3, 3), "offset.bias": (18,), "conv.weight": (16, 8, 3, 3),
    }
    assert m.conv.padding == (2, 2) and m(x).shape == (2, 16, 4, 3)


# ---------------------------------------------------------------- deformable ResNet
@pytest.mark.parametrize("modulated", [False, True])
def test_block_matches_detectron2_names_and_starts_as_a_bottleneck(modulated):
    kwargs = dict(bottleneck_channels=16, stride=2, num_groups=2, norm="BN", stride_in_1x1=False)
    ours = DeformBottleneckBlock(32, 64, deform_modulated=modulated, deform_num_groups=2, **kwargs).eval()
    d2 = D2DeformBottleneckBlock(32, 64, deform_modulated=modulated, deform_num_groups=2, **kwargs)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in d2.state_dict().items()}
    assert list(ours.state_dict()) == list(d2.state_dict())
    ours.load_state_dict(d2.state_dict())

    # conv2_offset starts at zero: offsets 0 (and mask sigmoid(0) = 0.5 when modulated).
    plain = BottleneckBlock(32, 64, **kwargs).eval()
    state = ours.state_dict()
    if modulated:
        state["conv2.weight"] = state["conv2.weight"] * 0.5
    plain.load_state_dict({k: v for k, v in state.items() if "conv2_offset" not in k})
    x = torch.randn(2, 32, 12, 10)
    torch.testing.assert_close(ours(x), plain(x), atol=1e-5, rtol=1e-5)


def test_deform_interval_makes_every_nth_block_deformable():
    blocks = make_deform_stage(
        5, deform_interval=2, deform_modulated=True, in_channels=16, out_channels=32,
        bottleneck_channels=8, stride_per_block=[2, 1, 1, 1, 1], norm="BN",
    )
    assert [isinstance(b, DeformBottleneckBlock) for b in blocks] == [True, False, True, False, True]
    assert [type(b) for b in blocks[1::2]] == [BottleneckBlock, BottleneckBlock]
    assert blocks[0].stride == 2 and blocks[0].shortcut is not None
    with pytest.raises(ValueError, match="DEFORM_INTERVAL"):
        make_deform_stage(2, deform_interval=0, in_channels=8, out_channels=8, bottleneck_channels=4)


def _deform_cfg(depth=50, interval=1, modulated=True, groups=1, width=64):
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.NUM_GROUPS = groups
    cfg.MODEL.RESNETS.WIDTH_PER_GROUP = width
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE = [False, False, True, True]
    cfg.MODEL.RESNETS.DEFORM_MODULATED = modulated
    cfg.MODEL.RESNETS.DEFORM_INTERVAL = interval
    return cfg


def test_resnet_matches_detectron2_builder_keys():
    cfg = _deform_cfg(groups=32, width=4)
    ours = build_resnet_deform_backbone(cfg, ShapeSpec(channels=3))
    d2 = build_resnet_backbone(cfg, ShapeSpec(channels=3))  # builds; cannot run its ops here
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in d2.state_dict().items()}
    assert ours.output_shape() == d2.output_shape()
    assert [n for n, p in ours.named_parameters() if p.requires_grad] == [
        n for n, p in d2.named_parameters() if p.requires_grad
    ]
    names = {n for n, _ in ours.named_modules()}
    assert "res4.5.conv2_offset" in names and "res3.0.conv2_offset" not in names


def test_resnet_interval_and_forward():
    cfg = _deform_cfg(interval=3)
    model = build_resnet_deform_backbone(cfg, ShapeSpec(channels=3)).eval()
    deform = {n.split(".conv2_offset")[0] for n, _ in model.named_modules() if n.endswith("conv2_offset")}
    assert deform == {"res4.0", "res4.3", "res5.0"}
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 96))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "res3": (1, 512, 8, 12), "res4": (1, 1024, 4, 6), "res5": (1, 2048, 2, 3)}


# --------------------------------------------------------------------- FCOS head
def test_fcos_head_deformable_towers_have_reference_names():
    head = FCOSHead(in_channels=32, num_levels=2, num_classes=3, norm="GN", use_deformable=True)
    keys = set(head.state_dict())
    for tower in ("cls_tower", "bbox_tower"):
        assert {f"{tower}.9.offset.weight", f"{tower}.9.offset.bias",
                f"{tower}.9.conv.weight", f"{tower}.9.conv.bias"} <= keys
        assert f"{tower}.9.weight" not in keys and f"{tower}.6.weight" in keys
    assert head.state_dict()["cls_tower.9.offset.weight"].shape == (27, 32, 3, 3)
    plain = FCOSHead(in_channels=32, num_levels=2, num_classes=3, norm="GN")
    renamed = {k.replace(".9.conv.", ".9.") for k in keys if ".offset." not in k}
    assert renamed == set(plain.state_dict())
    feats = [torch.randn(1, 32, 8, 8), torch.randn(1, 32, 4, 4)]
    logits, reg, ctr, _, _ = head(feats)
    assert [t.shape[-2:] for t in logits] == [(8, 8), (4, 4)] and reg[1].shape == (1, 4, 4, 4)


# ------------------------------------------------------------ compiled kernel (opt.)
@pytest.mark.skipif("cpu" not in deform_conv_module._compiled_backends(), reason="no compiled deform_conv")
@pytest.mark.parametrize("modulated", [False, True])
def test_compiled_kernel_equals_torchvision(modulated):
    torch.manual_seed(5)
    x = torch.randn(2, 8, 13, 11)
    weight = torch.randn(12, 4, 3, 3)
    bias = torch.randn(12)
    offset = torch.rand(2, 36, 7, 6) * 6 - 3
    mask = torch.rand(2, 18, 7, 6) if modulated else None
    with torch.no_grad():
        ours = deform_conv2d(x, offset, weight, bias, 2, 1, 1, mask)
    expected = torchvision_deform(x, offset, weight, bias, 2, 1, 1, mask)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
@pytest.mark.parametrize("modulated", [False, True])
def test_cuda_kernel_equals_torchvision_on_gpu_and_cpu(modulated):
    assert "cuda" in deform_conv_module._compiled_backends(), "adet._C was built without CUDA (FORCE_CUDA=1)"
    torch.manual_seed(6)
    x, weight, bias = torch.randn(2, 8, 13, 11), torch.randn(12, 4, 3, 3), torch.randn(12)
    offset = torch.rand(2, 36, 7, 6) * 6 - 3
    mask = torch.rand(2, 18, 7, 6) if modulated else None
    on_gpu = [t.cuda() if t is not None else None for t in (x, offset, weight, bias, mask)]
    with torch.no_grad():
        ours = deform_conv2d(*on_gpu[:4], 2, 1, 1, on_gpu[4])  # no grad: the compiled kernel
    expected_gpu = torchvision_deform(*on_gpu[:4], 2, 1, 1, on_gpu[4])
    torch.testing.assert_close(ours, expected_gpu, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.cpu(), torchvision_deform(x, offset, weight, bias, 2, 1, 1, mask),
                               atol=1e-4, rtol=1e-4)


def torchvision_deform(x, offset, weight, bias, stride, padding, dilation, mask):
    from torchvision.ops import deform_conv2d as tv

    return tv(x, offset, weight, bias, stride=stride, padding=padding, dilation=dilation, mask=mask)


def test_extension_absent_means_torchvision_path(monkeypatch):
    monkeypatch.setattr(deform_conv_module, "_compiled_backends", lambda: frozenset())
    x, offset, weight = torch.randn(1, 2, 5, 5), torch.randn(1, 18, 5, 5), torch.randn(3, 2, 3, 3)
    with torch.no_grad():
        out = deform_conv2d(x, offset, weight, None, 1, 1, 1)
    torch.testing.assert_close(out, torchvision_deform(x, offset, weight, None, 1, 1, 1, None))
    assert isinstance(_ext.available_ops(), list)

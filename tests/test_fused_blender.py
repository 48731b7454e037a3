"""The fused blender op (adet/layers/blender_op.py, kernels in adet/layers/csrc/blender/)
equals the plain PyTorch path (torchvision roi_align + interpolate + softmax + sum),
forward and backward, on random cases; BlendMask's Blender gives the same masks and
losses on either path. CUDA cases run only where a GPU is present."""
import os

import pytest
import torch

from detectron2.structures import BitMasks, Boxes, Instances

from adet.layers import blender_op
from adet.layers.blender_op import blend, blend_plain
from adet.modeling.blendmask import Blender

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]
# (resolution, attention size, sampling ratio, aligned): BlendMask's (56, 14, 1, ROIAlignV2)
# scaled down, adaptive sampling, legacy ROIAlign, attentions larger than the crop.
SETTINGS = [(8, 4, 1, True), (7, 3, 2, False), (6, 6, 0, True), (5, 7, -1, False), (9, 2, 3, True)]
TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture(autouse=True)
def require_compiled_op(request, monkeypatch):
    """The fused tests need adet._C's blender op. It is built wherever a C++ compiler
    is (setup.py); only a build that was turned off on purpose skips them."""
    monkeypatch.delenv(blender_op.FORCE_PLAIN_ENV, raising=False)
    if os.environ.get("ADET_NO_EXT") == "1" or os.environ.get("ADET_DISABLE_EXT") == "1":
        pytest.skip("adet._C turned off (ADET_NO_EXT / ADET_DISABLE_EXT)")
    assert "cpu" in blender_op._compiled_backends(), "adet._C has no blender op: rebuild it (pip install -e .)"
    device = getattr(request.node, "callspec", None) and request.node.callspec.params.get("device")
    if device == "cuda":
        assert "cuda" in blender_op._compiled_backends(), "adet._C was built without CUDA (FORCE_CUDA=1)"


def random_case(num_images=3, num_bases=4, height=20, width=27, num_rois=9, attn=4, stride=4.0,
                dtype=torch.float32, device="cpu", seed=0):
    """Bases, rois (batch index, xyxy in image pixels) and attentions; boxes are anywhere
    from well inside to partly (or wholly) outside the image, down to under a pixel wide."""
    g = torch.Generator().manual_seed(seed)
    bases = torch.randn(num_images, num_bases, height, width, generator=g, dtype=dtype) * 3
    size = torch.tensor([width, height]) * stride
    xy0 = torch.rand(num_rois, 2, generator=g) * size * 1.4 - 0.2 * size
    wh = torch.rand(num_rois, 2, generator=g) * size * 0.8 + 0.3
    index = torch.randint(0, num_images, (num_rois, 1), generator=g).float()
    rois = torch.cat([index, xy0, xy0 + wh], dim=1).to(dtype)
    attns = torch.randn(num_rois, num_bases, attn, attn, generator=g, dtype=dtype) * 2
    return bases.to(device), rois.to(device), attns.to(device)


def both_paths(bases, rois, attns, res, scale, ratio, aligned):
    """Outputs and (bases, attns) gradients of the fused and the plain path for one
    random upstream gradient."""
    grad = torch.randn(rois.shape[0], res, res, dtype=bases.dtype, generator=torch.Generator().manual_seed(1))
    results = []
    for impl in ("fused", "plain"):
        b, a = bases.clone().requires_grad_(), attns.clone().requires_grad_()
        out = blend(b, rois, a, res, scale, ratio, aligned, impl=impl)
        out.backward(grad.to(out.device))
        results.append((out.detach(), b.grad, a.grad))
    return results


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("res,attn,ratio,aligned", SETTINGS)
def test_fused_equals_plain_forward_and_gradients(device, res, attn, ratio, aligned):
    bases, rois, attns = random_case(attn=attn, device=device, seed=res)
    (out, gb, ga), (out_ref, gb_ref, ga_ref) = both_paths(bases, rois, attns, res, 0.25, ratio, aligned)
    assert out.shape == (rois.shape[0], res, res)
    torch.testing.assert_close(out, out_ref, **TOL)
    torch.testing.assert_close(gb, gb_ref, **TOL)
    torch.testing.assert_close(ga, ga_ref, **TOL)
    assert gb.abs().sum() > 0 and ga.abs().sum() > 0


@pytest.mark.parametrize("device", DEVICES)
def test_boxes_outside_the_image(device):
    bases, _, attns = random_case(num_rois=6, device=device)
    h, w = bases.shape[-2] * 4, bases.shape[-1] * 4  # image size at stride 4
    rois = torch.tensor([
        [0, -30.0, -20.0, 40.0, 30.0],        # over the top-left corner
        [1, w - 25.0, h - 9.0, w + 60.0, h + 50.0],  # over the bottom-right corner
        [2, -80.0, 10.0, w + 80.0, 30.0],     # wider than the image on both sides
        [0, w + 10.0, h + 10.0, w + 50.0, h + 70.0],  # wholly outside: zeros
        [1, 10.0, 10.0, 10.2, 10.1],          # smaller than a feature pixel
        [2, 40.0, 30.0, 35.0, 20.0],          # inverted
    ], device=device)
    (out, gb, ga), (out_ref, gb_ref, ga_ref) = both_paths(bases, rois, attns, 7, 0.25, 2, True)
    torch.testing.assert_close(out, out_ref, **TOL)
    torch.testing.assert_close(gb, gb_ref, **TOL)
    torch.testing.assert_close(ga, ga_ref, **TOL)
    assert out[3].abs().max() == 0 and ga[3].abs().max() == 0


@pytest.mark.parametrize("device", DEVICES)
def test_empty_instance_set(device):
    bases = torch.randn(2, 4, 10, 12, device=device, requires_grad=True)
    attns = torch.zeros(0, 4, 3, 3, device=device, requires_grad=True)
    out = blend(bases, torch.zeros(0, 5, device=device), attns, 6, 0.25, 1, impl="fused")
    assert out.shape == (0, 6, 6)
    out.sum().backward()
    assert torch.equal(bases.grad, torch.zeros_like(bases)) and attns.grad.shape == (0, 4, 3, 3)


@pytest.mark.parametrize("device", DEVICES)
def test_each_roi_reads_its_own_image(device):
    bases, rois, attns = random_case(num_images=3, num_rois=8, device=device, seed=5)
    with torch.no_grad():
        together = blend(bases, rois, attns, 8, 0.25, 1, impl="fused")
        for i in range(3):
            mine = rois[:, 0] == i
            alone = rois[mine].clone()
            alone[:, 0] = 0
            torch.testing.assert_close(together[mine], blend(bases[i:i + 1], alone, attns[mine], 8, 0.25, 1,
                                                             impl="fused"))


def test_batch_index_outside_the_batch_is_refused():
    bases, rois, attns = random_case(num_images=2, num_rois=3)
    rois[1, 0] = 2
    with pytest.raises(RuntimeError, match="batch index"):
        blend(bases, rois, attns, 4, 0.25, 1, impl="fused")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("ratio,aligned", [(1, True), (2, False), (0, True)])
def test_gradcheck_float64(device, ratio, aligned):
    bases, rois, attns = random_case(num_images=2, num_bases=3, height=6, width=7, num_rois=4, attn=3,
                                     dtype=torch.float64, device=device, seed=7)
    bases.requires_grad_()
    attns.requires_grad_()
    # nondet_tol: the CUDA backward adds with atomics, in no fixed order
    assert torch.autograd.gradcheck(lambda b, a: blend(b, rois, a, 5, 0.25, ratio, aligned, impl="fused"),
                                    (bases, attns), eps=1e-6, atol=1e-6, nondet_tol=1e-12)


def test_cuda_equals_cpu_kernel():
    if not torch.cuda.is_available():
        pytest.skip("no GPU")
    bases, rois, attns = random_case(num_rois=40, attn=14)
    grad = torch.randn(40, 56, 56, generator=torch.Generator().manual_seed(2))
    results = []
    for device in ("cpu", "cuda"):
        # fresh leaves on each device (`.to("cpu")` of a CPU tensor is the tensor itself)
        b, a = (t.detach().clone().to(device).requires_grad_() for t in (bases, attns))
        out = blend(b, rois.to(device), a, 56, 0.25, 1, impl="fused")
        out.backward(grad.to(device))
        results.append([t.detach().cpu() for t in (out, b.grad, a.grad)])
    # Two processors' float32 arithmetic (FMA, exp, atomics order): looser than TOL.
    for on_cpu, on_gpu in zip(*results):
        torch.testing.assert_close(on_gpu, on_cpu, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------- dispatch
def test_env_switch_and_missing_kernel_give_the_plain_path(monkeypatch):
    bases, rois, attns = random_case()
    assert blender_op.fused_available(bases)
    assert not blender_op.fused_available(bases, interp="nearest")
    assert not blender_op.fused_available(bases.half())
    monkeypatch.setenv(blender_op.FORCE_PLAIN_ENV, "plain")
    assert not blender_op.fused_available(bases)
    with pytest.raises(RuntimeError, match="not available"):
        blend(bases, rois, attns, 4, 0.25, 1, impl="fused")
    monkeypatch.delenv(blender_op.FORCE_PLAIN_ENV)
    monkeypatch.setattr(blender_op, "_compiled_backends", lambda: frozenset())
    torch.testing.assert_close(blend(bases, rois, attns, 4, 0.25, 1), blend_plain(bases, rois, attns, 4, 0.25, 1))
    with pytest.raises(ValueError, match="impl"):
        blend(bases, rois, attns, 4, 0.25, 1, impl="fast")


# ----------------------------------------------------------------- BlendMask Blender
def make_blender(fused):
    return Blender(resolution=14, attn_size=4, top_interp="bilinear", pooler_scales=[0.25], sampling_ratio=1,
                   pooler_type="ROIAlignV2", fused=fused)


def detections(image_size, boxes, top_feat):
    det = Instances(image_size)
    det.pred_boxes = Boxes(boxes)
    det.top_feat = top_feat
    return det


def test_blender_predict_uses_the_fused_op_with_the_same_masks(monkeypatch):
    bases, rois, attns = random_case(num_images=2, num_rois=7, seed=3)
    image_size = (bases.shape[-2] * 4, bases.shape[-1] * 4)
    per_image = [rois[:, 0] == i for i in range(2)]
    calls = []
    monkeypatch.setattr(blender_op, "_FusedBlend", _spy(blender_op._FusedBlend, calls))

    def masks(fused):
        dets = [detections(image_size, rois[m, 1:], attns[m].flatten(1)) for m in per_image]
        return [d.pred_masks for d in make_blender(fused).predict([bases], dets)]

    fused, plain = masks(True), masks(False)
    assert len(calls) == 1
    for a, b, m in zip(fused, plain, per_image):
        assert a.shape == (int(m.sum()), 1, 14, 14)
        torch.testing.assert_close(a, b, **TOL)


def test_blender_loss_and_gradients_equal_on_both_paths(monkeypatch):
    bases, rois, attns = random_case(num_images=2, num_rois=6, seed=4)
    image_size = (bases.shape[-2] * 4, bases.shape[-1] * 4)
    gts = []
    for i in range(2):
        gt = Instances(image_size)
        gt.gt_boxes = Boxes(rois[rois[:, 0] == i, 1:])
        noise = torch.rand(len(gt.gt_boxes), *image_size, generator=torch.Generator().manual_seed(i))
        gt.gt_masks = BitMasks(noise > 0.5)
        gts.append(gt)
    pos = Instances((0, 0))
    pos.gt_inds = torch.tensor([0, 0, 1, 3, 5, 5, 2])  # several positives per gt box
    pos.gt_ctrs = torch.rand(7, generator=torch.Generator().manual_seed(9))
    feats = torch.randn(7, attns[0].numel(), generator=torch.Generator().manual_seed(8))
    calls = []
    monkeypatch.setattr(blender_op, "_FusedBlend", _spy(blender_op._FusedBlend, calls))

    def loss_and_grads(fused):
        b, pos.top_feats = bases.clone().requires_grad_(), feats.clone().requires_grad_()
        loss = make_blender(fused).loss([b], pos, gts)["loss_mask"]
        loss.backward()
        return loss.detach(), b.grad, pos.top_feats.grad

    fused, plain = loss_and_grads(True), loss_and_grads(False)
    assert len(calls) == 1
    for a, b in zip(fused, plain):
        torch.testing.assert_close(a, b, **TOL)


def _spy(function_class, calls):
    """The autograd Function, recording each forward call."""
    class Spy(function_class):
        @staticmethod
        def forward(ctx, *args):
            calls.append(args[3])
            return function_class.forward(ctx, *args)

    return Spy


# ------------------------------------------------------------------------ benchmark
def test_benchmark_blender_section_reports_both_paths(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "tools" / "benchmark.py"
    spec = importlib.util.spec_from_file_location("benchmark", path)
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    rows = benchmark.main(["--blender", "--blender-instances", "6", "--blender-image", "96", "160",
                           "--warmup", "0", "--runs", "1", "--json", str(tmp_path / "blender.json")])
    assert [(r["path"], r["pass"]) for r in rows] == [
        ("plain", "forward"), ("fused", "forward"), ("plain", "forward + backward"), ("fused", "forward + backward")]
    assert all(r["ms"] > 0 for r in rows)
    # The plain forward holds crops, resized attentions and weights (3 x N x K x R x R floats);
    # the fused one allocates little more than its output (N x R x R).
    plain, fused = rows[0]["peak_mib"] * 2 ** 20, rows[1]["peak_mib"] * 2 ** 20
    assert plain >= 3 * 6 * 4 * 56 * 56 * 4 and fused < 2 * 6 * 56 * 56 * 4
    assert (tmp_path / "blender.json").is_file()
    with pytest.raises(SystemExit):
        benchmark.parse_args([])  # neither --config-file nor --blender


@pytest.mark.slow
def test_gpu_check_dry_run_selects_the_cuda_cases():
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    bad = subprocess.run(["bash", "tools/gpu_check.sh", "--no-such-flag"], cwd=repo, capture_output=True, text=True)
    assert bad.returncode == 2
    dry = subprocess.run(["bash", "tools/gpu_check.sh", "--dry-run"], cwd=repo, capture_output=True, text=True,
                         timeout=300)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    cuda_cases = [line for line in dry.stdout.splitlines() if "::" in line and "cuda" in line]
    assert any("test_fused_blender.py" in c for c in cuda_cases)
    assert any("test_deform_conv.py" in c for c in cuda_cases)
    assert "tests/test_solov2_units.py" in dry.stdout  # collected: it has a case when CUDA is present
    assert dry.stdout.count("arguments ok") == 7 and "tools/benchmark.py --blender --device cuda" in dry.stdout
    assert dry.stdout.count("--profile-train") == 2  # the two training profiles (PROFILES)

"""CondInst / BoxInst pieces on hand-made cases."""
import math

import pytest
import torch

from detectron2.structures import Boxes, Instances, PolygonMasks

from adet.config import get_cfg
from adet.layers import dice_loss
from adet.modeling.condinst import boxinst
from adet.modeling.condinst.condinst import CondInst
from adet.modeling.condinst.dynamic_mask_head import (
    DynamicMaskHead,
    dynamic_param_counts,
    parse_dynamic_params,
    relative_coords,
)
from adet.modeling.condinst.mask_branch import semantic_targets
from adet.modeling.condinst.utils import aligned_bilinear


# -- dice loss ------------------------------------------------------------------------

def test_dice_loss_hand_values():
    target = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    assert dice_loss(target, target).item() == pytest.approx(0.0, abs=1e-5)
    assert dice_loss(1 - target, target).item() == pytest.approx(1.0)
    # x = (0.5, 0.5, 0, 0): 1 - 2 * 1 / (0.5 + 2) = 0.2
    assert dice_loss(target * 0.5, target).item() == pytest.approx(0.2, abs=1e-5)


def test_dice_loss_is_per_instance():
    x = torch.rand(3, 1, 4, 5)
    t = (torch.rand(3, 1, 4, 5) > 0.5).float()
    losses = dice_loss(x, t)
    assert losses.shape == (3,)
    assert torch.allclose(losses[1:2], dice_loss(x[1:2], t[1:2]))


# -- aligned bilinear -----------------------------------------------------------------

def test_aligned_bilinear_hand_values():
    x = torch.tensor([[[[0.0, 1.0]]]])
    out = aligned_bilinear(x, 2)
    assert out.shape == (1, 1, 2, 4)
    assert out[0, 0, 0].tolist() == [0.0, 0.0, 0.5, 1.0]
    assert torch.equal(aligned_bilinear(x, 1), x)
    constant = torch.full((2, 3, 4, 5), 7.0)
    assert torch.allclose(aligned_bilinear(constant, 4), torch.full((2, 3, 16, 20), 7.0))


def test_aligned_bilinear_rejects_non_integer_factor():
    with pytest.raises(ValueError):
        aligned_bilinear(torch.zeros(1, 1, 2, 2), 1.5)


# -- dynamic mask head ----------------------------------------------------------------

def test_relative_coords_hand_values():
    instance_locations = torch.tensor([[12.0, 4.0], [0.0, 0.0]])
    pixels = torch.tensor([[4.0, 4.0], [12.0, 20.0]])
    coords = relative_coords(instance_locations, pixels, torch.tensor([8, 64]))
    assert coords.shape == (2, 2, 2)  # (instances, (x, y), pixels)
    assert coords[0].tolist() == [[1.0, 0.0], [0.0, -2.0]]
    assert coords[1].tolist() == [[-4 / 64, -12 / 64], [-4 / 64, -20 / 64]]


def test_dynamic_param_counts_match_the_reference_controller():
    weights, biases = dynamic_param_counts(8, 8, 3)
    assert (weights, biases) == ([80, 64, 8], [8, 8, 1])
    assert sum(weights) + sum(biases) == 169  # controller.weight [169, 256, 3, 3]
    weights, biases = dynamic_param_counts(16, 8, 3)
    assert sum(weights) + sum(biases) == 233
    assert dynamic_param_counts(8, 8, 3, rel_coords=False)[0][0] == 64


def test_parse_dynamic_params_split():
    weight_nums, bias_nums = dynamic_param_counts(2, 3, 2)  # (4*3, 3*1), (3, 1)
    params = torch.arange(2 * 19, dtype=torch.float32).reshape(2, 19)
    weights, biases = parse_dynamic_params(params, weight_nums, bias_nums)
    assert [w.shape for w in weights] == [(6, 4, 1, 1), (2, 3, 1, 1)]
    assert [b.shape for b in biases] == [(6,), (2,)]
    # instance 1, layer 0: its first 12 values, 3 output rows of 4 inputs
    assert weights[0][3:6, :, 0, 0].flatten().tolist() == list(range(19, 31))
    assert biases[0][3:].tolist() == [34.0, 35.0, 36.0]
    assert weights[1][1, :, 0, 0].tolist() == [31.0, 32.0, 33.0]
    assert biases[1].tolist() == [18.0, 37.0]
    with pytest.raises(ValueError):
        parse_dynamic_params(params[:, :-1], weight_nums, bias_nums)


def test_dynamic_convs_equal_per_instance_matmuls():
    torch.manual_seed(0)
    head = DynamicMaskHead(in_channels=3, channels=4, num_layers=3, mask_out_stride=8,
                           sizes_of_interest=[64, 128, 256, 512])
    mask_feats = torch.randn(2, 3, 5, 6)
    inst = Instances((40, 48))
    inst.im_inds = torch.tensor([1, 0, 1])
    inst.locations = torch.tensor([[4.0, 12.0], [20.0, 28.0], [44.0, 36.0]])
    inst.fpn_levels = torch.tensor([0, 2, 4])
    inst.mask_head_params = torch.randn(3, head.num_gen_params)
    logits = head.mask_logits(mask_feats, 8, inst)
    assert logits.shape == (3, 1, 5, 6)

    pixels = torch.stack(torch.meshgrid(torch.arange(5.0) * 8 + 4, torch.arange(6.0) * 8 + 4, indexing="ij")[::-1],
                         dim=-1).reshape(-1, 2)
    soi = torch.tensor([64.0, 128, 256, 512, 1024])
    for i in range(3):
        x = torch.cat([((inst.locations[i] - pixels) / soi[inst.fpn_levels[i]]).t(),
                       mask_feats[inst.im_inds[i]].reshape(3, -1)])
        w, b = parse_dynamic_params(inst.mask_head_params[i:i + 1], head.weight_nums, head.bias_nums)
        for layer in range(3):
            x = w[layer][:, :, 0, 0] @ x + b[layer][:, None]
            if layer < 2:
                x = x.relu()
        assert torch.allclose(logits[i, 0].flatten(), x[0], atol=1e-5)


def test_use_fp16_runs_the_dynamic_convs_in_half_precision_and_losses_in_float32():
    """MASK_HEAD.USE_FP16: bfloat16 convs on the CPU; logits come back float32, close to
    the float32 head's, and the dice loss back-propagates finite gradients."""
    torch.manual_seed(0)
    kwargs = dict(in_channels=8, channels=8, num_layers=3, mask_out_stride=4,
                  sizes_of_interest=[64, 128, 256, 512])
    full, half = DynamicMaskHead(**kwargs), DynamicMaskHead(**kwargs, use_fp16=True)
    cfg = get_cfg()
    cfg.MODEL.CONDINST.MASK_HEAD.USE_FP16 = True
    assert DynamicMaskHead(cfg).use_fp16
    inst = Instances((64, 64))
    inst.im_inds = torch.tensor([0, 0])
    inst.locations = torch.tensor([[12.0, 20.0], [40.0, 36.0]])
    inst.fpn_levels = torch.tensor([0, 1])
    inst.gt_inds = torch.tensor([0, 1])
    inst.mask_head_params = torch.randn(2, full.num_gen_params, requires_grad=True)
    feats = torch.randn(1, 8, 8, 8)

    reference = full.mask_logits(feats, 8, inst)
    logits = half.mask_logits(feats, 8, inst)
    assert logits.dtype == torch.float32 and logits.shape == reference.shape
    assert not torch.equal(logits, reference)  # it really ran in lower precision
    assert torch.allclose(logits, reference, atol=0.05 * reference.abs().max().item())

    gt = Instances((64, 64))
    gt.gt_bitmasks = (torch.rand(2, 16, 16) > 0.5).float()
    half.train()
    loss = half(feats, 8, inst, [gt])["loss_mask"]
    assert loss.dtype == torch.float32
    loss.backward()
    grad = inst.mask_head_params.grad
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_training_counts_iterations_and_warms_up_pairwise_loss():
    head = DynamicMaskHead(in_channels=2, channels=2, num_layers=2, mask_out_stride=8,
                           sizes_of_interest=[64, 128, 256, 512], boxinst_enabled=True,
                           pairwise_warmup_iters=4)
    head.train()
    inst = Instances((32, 32))
    inst.im_inds = torch.tensor([0])
    inst.locations = torch.tensor([[12.0, 12.0]])
    inst.fpn_levels = torch.tensor([0])
    inst.gt_inds = torch.tensor([0])
    inst.mask_head_params = torch.randn(1, head.num_gen_params)
    gt = Instances((32, 32))
    gt.gt_bitmasks = torch.ones(1, 4, 4)
    gt.image_color_similarity = torch.ones(1, 8, 4, 4)
    feats = torch.randn(1, 2, 4, 4)
    first = head(feats, 8, inst, [gt])
    second = head(feats, 8, inst, [gt])
    assert head._iter.item() == 2
    assert second["loss_pairwise"].item() == pytest.approx(2 * first["loss_pairwise"].item(), rel=1e-5)
    assert first["loss_prj"].item() == pytest.approx(second["loss_prj"].item())


# -- BoxInst --------------------------------------------------------------------------

def test_projection_loss_zero_for_the_box_itself_and_hand_value():
    box = torch.zeros(1, 1, 4, 4)
    box[0, 0, 1:3, 1:3] = 1
    assert boxinst.projection_loss(box, box).item() == pytest.approx(0.0, abs=1e-5)
    # Any mask touching every row and column of the box has the box's projections.
    diagonal = torch.zeros(1, 1, 4, 4)
    diagonal[0, 0, 1, 1] = diagonal[0, 0, 2, 2] = 1
    assert boxinst.projection_loss(diagonal, box).item() == pytest.approx(0.0, abs=1e-5)
    # Half-confident everywhere: each axis' dice loss is 1 - 2 * 1 / (4 * 0.25 + 2).
    half = torch.full((1, 1, 4, 4), 0.5)
    assert boxinst.projection_loss(half, box).item() == pytest.approx(2 * (1 - 2 / 3), abs=1e-5)


def test_unfold_wo_center_neighbours():
    x = torch.arange(9.0).reshape(1, 1, 3, 3)
    out = boxinst.unfold_wo_center(x, kernel_size=3, dilation=1)
    assert out.shape == (1, 1, 8, 3, 3)
    assert out[0, 0, :, 1, 1].tolist() == [0, 1, 2, 3, 5, 6, 7, 8]
    assert out[0, 0, :, 0, 0].tolist() == [0, 0, 0, 0, 1, 0, 3, 4]  # zero outside the map
    dilated = boxinst.unfold_wo_center(torch.arange(25.0).reshape(1, 1, 5, 5), 3, 2)
    assert dilated[0, 0, :, 2, 2].tolist() == [0, 2, 4, 10, 14, 20, 22, 24]


def test_pairwise_nll_hand_values():
    confident = torch.full((1, 1, 3, 3), 30.0)
    assert boxinst.pairwise_nll(confident, 3, 1)[:, :, 1, 1].abs().max().item() < 1e-6
    unsure = torch.zeros(1, 1, 3, 3)
    assert torch.allclose(boxinst.pairwise_nll(unsure, 3, 1)[0, :, 1, 1], torch.full((8,), math.log(2.0)))
    # Certain, disagreeing neighbours: P(same) = 2 sigmoid(30) sigmoid(-30) ~ 2 exp(-30).
    split = torch.tensor([[[[30.0, -30.0]]]])
    assert boxinst.pairwise_nll(split, 3, 1)[0, 4, 0, 0].item() == pytest.approx(30.0 - math.log(2.0), rel=1e-4)
    # Neighbours outside the map (zero log-probabilities) cost nothing.
    assert boxinst.pairwise_nll(split, 3, 1)[0, 0, 0, 0].item() == pytest.approx(0.0, abs=1e-6)


def test_color_similarity_on_a_tiny_image():
    lab = torch.zeros(1, 3, 3, 4)
    lab[0, 0, :, 2:] = 2.0  # two flat regions, L differs by 2
    valid = torch.ones(3, 4)
    valid[2] = 0  # e.g. removed bottom rows / padding
    sim = boxinst.image_color_similarity(lab, valid, kernel_size=3, dilation=1)
    assert sim.shape == (1, 8, 3, 4)
    # pixel (0, 1): right neighbour (index 4) differs by 2 -> exp(-1); left one (3) is equal
    assert sim[0, 4, 0, 1].item() == pytest.approx(math.exp(-1.0))
    assert sim[0, 3, 0, 1].item() == pytest.approx(1.0)
    # neighbours in the invalid row or outside the image get 0
    assert sim[0, 6, 1, 1].item() == 0.0 and sim[0, 0, 0, 1].item() == 0.0


def test_pairwise_loss_counts_similar_pairs_inside_the_box_only():
    logits = torch.zeros(1, 1, 3, 3)
    similarity = torch.ones(1, 8, 3, 3)
    box = torch.zeros(1, 1, 3, 3)
    box[0, 0, 1, 1] = 1
    loss = boxinst.pairwise_loss(logits, similarity, box, 3, 1, color_thresh=0.3)
    assert loss.item() == pytest.approx(math.log(2.0))
    assert boxinst.pairwise_loss(logits, similarity * 0.1, box, 3, 1, 0.3).item() == 0.0


def test_rgb_to_lab_known_colours():
    rgb = torch.tensor([[255.0, 0.0, 255.0], [255.0, 0.0, 0.0], [255.0, 0.0, 0.0]])[:, :, None]
    lab = boxinst.rgb_to_lab(rgb)  # white, black, red
    # scikit-image's constants leave white a hair off neutral: (100, -0.00245, 0.00465).
    assert lab[:, 0, 0].tolist() == pytest.approx([100.0, -0.0024549, 0.0046534], abs=1e-5)
    assert lab[:, 1, 0].tolist() == pytest.approx([0.0, 0.0, 0.0], abs=1e-6)
    assert lab[:, 2, 0].tolist() == pytest.approx([53.2408, 80.0925, 67.2032], abs=1e-3)


def test_box_bitmasks_cover_truncated_inclusive_ranges():
    masks = boxinst.box_bitmasks(torch.tensor([[1.5, 0.2, 3.0, 2.9]]), 5, 6)
    expected = torch.zeros(1, 5, 6)
    expected[0, 0:3, 1:4] = 1
    assert torch.equal(masks, expected)


# -- meta-architecture ----------------------------------------------------------------

def _positives(n, num_images=2):
    inst = Instances((0, 0))
    inst.im_inds = torch.arange(n) % num_images
    inst.gt_inds = inst.im_inds * 2 + (torch.arange(n) // num_images) % 2
    inst.logits_pred = torch.randn(n, 3)
    inst.ctrness_pred = torch.randn(n)
    inst.locations = torch.randn(n, 2)
    inst.ids = torch.arange(n)
    return inst


def _bare_condinst(**kwargs):
    model = CondInst.__new__(CondInst)
    torch.nn.Module.__init__(model)
    model.max_proposals, model.topk_proposals_per_im = -1, -1
    for key, value in kwargs.items():
        setattr(model, key, value)
    return model


def test_max_proposals_draws_the_references_randperm():
    inst = _positives(10)
    model = _bare_condinst(max_proposals=4)
    torch.manual_seed(0)
    kept = model.sample_instances(inst, 2)
    torch.manual_seed(0)
    assert kept.ids.tolist() == torch.randperm(10)[:4].tolist()
    assert len(_bare_condinst(max_proposals=20).sample_instances(inst, 2)) == 10


def test_topk_proposals_per_image_keeps_the_best_per_ground_truth():
    torch.manual_seed(0)
    inst = _positives(20)
    kept = _bare_condinst(topk_proposals_per_im=4).sample_instances(inst, 2)
    assert len(kept) == 8  # 2 images x 2 gt x 2
    quality = inst.logits_pred.sigmoid().max(dim=1).values * inst.ctrness_pred.sigmoid()
    for gt in range(4):
        rows = (inst.gt_inds == gt).nonzero().squeeze(1)
        best = set(rows[quality[rows].topk(2).indices].tolist())
        assert set(kept.ids[kept.gt_inds == gt].tolist()) == best


def test_semantic_targets_take_the_smallest_mask():
    gt = Instances((4, 4))
    masks = torch.zeros(2, 4, 4)
    masks[0, :, :] = 1
    masks[1, :2, :2] = 1
    gt.gt_bitmasks_full = masks
    gt.gt_classes = torch.tensor([3, 7])
    targets = semantic_targets([gt], stride=1)
    assert targets.shape == (1, 1, 4, 4)
    assert targets[0, 0, 0, 0].item() == 8 and targets[0, 0, 3, 3].item() == 4


def _small_cfg(path):
    cfg = get_cfg()
    cfg.merge_from_file(path)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    return cfg


@pytest.mark.parametrize("path,expected", [
    ("configs/CondInst/MS_R_50_3x_sem.yaml", {"loss_mask", "loss_sem"}),
    ("configs/BoxInst/MS_R_50_1x.yaml", {"loss_prj", "loss_pairwise"}),
])
def test_training_step_on_a_tiny_batch(path, expected):
    from pathlib import Path

    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    torch.manual_seed(0)
    model = build_model(_small_cfg(str(Path(__file__).resolve().parents[1] / path)))
    model.train()
    inputs = []
    for h, w in ((96, 128), (128, 96)):
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(torch.tensor([[10.0, 12.0, 60.0, 70.0], [30.0, 20.0, 90.0, 80.0]]))
        inst.gt_classes = torch.tensor([1, 5])
        inst.gt_masks = PolygonMasks([[[10, 12, 60, 12, 60, 70, 10, 70]], [[30, 20, 90, 20, 60, 80]]])
        inputs.append({"image": torch.randint(0, 255, (3, h, w), dtype=torch.uint8), "height": h, "width": w,
                       "instances": inst})
    with EventStorage(0):
        losses = model(inputs)
    assert expected <= set(losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert model.controller.weight.grad is not None


@pytest.mark.parametrize("threshold", [0.0, 1.0])  # 0: detections; 1: none
def test_inference_on_images_of_different_sizes(threshold):
    from pathlib import Path

    from detectron2.modeling import build_model

    torch.manual_seed(0)
    cfg = _small_cfg(str(Path(__file__).resolve().parents[1] / "configs/CondInst/MS_R_50_1x.yaml"))
    cfg.MODEL.FCOS.INFERENCE_TH_TEST = threshold
    model = build_model(cfg).eval()
    inputs = [{"image": torch.randint(0, 255, (3, 96, 128), dtype=torch.uint8), "height": 48, "width": 64},
              {"image": torch.randint(0, 255, (3, 70, 90), dtype=torch.uint8)}]
    with torch.no_grad():
        outputs = model(inputs)
    for out, size in zip(outputs, [(48, 64), (70, 90)]):
        inst = out["instances"]
        assert inst.image_size == size
        assert inst.pred_masks.dtype == torch.bool and inst.pred_masks.shape == (len(inst), *size)
        assert not inst.has("pred_global_masks")
    counts = [len(out["instances"]) for out in outputs]
    assert all(n == 0 for n in counts) if threshold == 1.0 else all(n > 0 for n in counts)

"""FCOS pieces on hand-made cases: locations, targets, losses, inference, options."""
import math

import pytest
import torch
from torch.nn import functional as F

from detectron2.modeling import build_model
from detectron2.structures import Boxes, ImageList, Instances

from adet.config import get_cfg
from adet.layers import IOULoss, NaiveGroupNorm, ml_nms
from adet.modeling.fcos.inference import FCOSPredictor
from adet.modeling.fcos.losses import FCOSLoss, centerness_targets
from adet.modeling.fcos.targets import (
    INF, compute_locations, fcos_targets, level_size_ranges, targets_for_image,
)


def gt(boxes, classes, size=(64, 64)):
    inst = Instances(size)
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.gt_classes = torch.tensor(classes, dtype=torch.long)
    return inst


# ---------------------------------------------------------------- locations and targets
def test_locations_are_cell_centres_row_major():
    (loc,) = compute_locations([torch.zeros(1, 1, 2, 3)], [8])
    assert loc.tolist() == [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]]


def test_level_size_ranges():
    assert level_size_ranges([64, 128], 3) == [[-1, 64], [64, 128], [128, INF]]
    with pytest.raises(ValueError, match="SIZES_OF_INTEREST"):
        level_size_ranges([64], 3)


def _assign(locations, boxes, classes, strides, ranges, center_sample=False, radius=1.5):
    locations = torch.tensor(locations, dtype=torch.float32)
    return targets_for_image(locations, torch.tensor(strides, dtype=torch.float32),
                             torch.tensor(ranges, dtype=torch.float32), gt(boxes, classes), 5,
                             center_sample, radius)


def test_inside_box_positive_outside_background():
    labels, reg, _ = _assign([[10, 10], [50, 50]], [[0, 0, 20, 30]], [2], [8, 8], [[-1, INF]] * 2)
    assert labels.tolist() == [2, 5]
    assert reg[0].tolist() == [10, 10, 10, 20]


def test_overlapping_boxes_take_the_smallest():
    labels, reg, inds = _assign([[10, 10]], [[0, 0, 40, 40], [5, 5, 15, 15]], [1, 3], [8], [[-1, INF]])
    assert labels.tolist() == [3] and inds.tolist() == [1]
    assert reg[0].tolist() == [5, 5, 5, 5]


def test_level_range_filters_by_largest_distance():
    # Max distance 20 from the location: in range [0, 16]? no; in [16, 64]? yes.
    labels, _, _ = _assign([[10, 10], [10, 10]], [[0, 0, 20, 30]], [1], [8, 16], [[-1, 16], [16, 64]])
    assert labels.tolist() == [5, 1]


def test_center_sampling_keeps_only_the_centre_region():
    box = [[0, 0, 100, 100]]  # centre (50, 50); radius 1.5 * stride 8 = 12 -> (38, 62)
    labels, _, _ = _assign([[50, 50], [40, 40], [36, 50], [10, 10]], box, [0], [8] * 4, [[-1, INF]] * 4,
                           center_sample=True)
    assert labels.tolist() == [0, 0, 5, 5]


def test_center_sampling_region_is_clipped_to_the_box():
    # A thin box: the centre square is wider than the box, locations outside stay negative.
    labels, _, _ = _assign([[50, 3], [50, 9]], [[0, 0, 100, 6]], [0], [8, 8], [[-1, INF]] * 2, center_sample=True)
    assert labels.tolist() == [0, 5]


def test_center_sampling_uses_mask_centre_of_mass_when_given():
    inst = gt([[0, 0, 100, 100]], [0], size=(100, 100))
    masks = torch.zeros(1, 100, 100)
    masks[0, 80:100, 80:100] = 1  # mass centre at (89.5, 89.5)
    inst.gt_bitmasks_full = masks
    locations = torch.tensor([[50.0, 50.0], [88.0, 88.0]])
    labels, _, _ = targets_for_image(locations, torch.tensor([8.0, 8.0]), torch.tensor([[-1, INF]] * 2),
                                     inst, 5, True, 1.5)
    assert labels.tolist() == [5, 0]


def test_image_without_boxes_is_all_background():
    labels, reg, inds = _assign([[1, 1], [2, 2]], [], [], [8, 8], [[-1, INF]] * 2)
    assert labels.tolist() == [5, 5] and inds.tolist() == [-1, -1] and reg.abs().sum() == 0


def test_batch_targets_are_level_major_with_global_gt_indices_and_stride_units():
    features = [torch.zeros(2, 1, 2, 2), torch.zeros(2, 1, 1, 1)]
    locations = compute_locations(features, [8, 16])  # 4 + 1 locations
    images = [gt([[0, 0, 16, 16]], [1], (16, 16)), gt([[0, 0, 6, 6], [0, 0, 16, 16]], [2, 0], (16, 16))]
    t = fcos_targets(locations, images, [8, 16], [12], num_classes=3, center_sample=False)
    # rows: level0 img0 (4), level0 img1 (4), level1 img0 (1), level1 img1 (1)
    assert t["fpn_levels"].tolist() == [0] * 8 + [1] * 2
    assert t["im_inds"].tolist() == [0] * 4 + [1] * 4 + [0, 1]
    # Level 0 takes boxes whose largest distance is <= 12: all of them here; level 1 none.
    # Image 1's location (4, 4) lies in both of its boxes and takes the smaller one.
    assert t["labels"].tolist() == [1, 1, 1, 1, 2, 0, 0, 0, 3, 3]
    assert t["gt_inds"][[0, 4, 5]].tolist() == [0, 1, 2]
    assert t["reg_targets"][0].tolist() == [4 / 8, 4 / 8, 12 / 8, 12 / 8]
    assert t["reg_targets"][4].tolist() == [4 / 8, 4 / 8, 2 / 8, 2 / 8]
    assert t["locations"][8].tolist() == [8, 8]


# ---------------------------------------------------------------- losses
def test_centerness_targets():
    out = centerness_targets(torch.tensor([[1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 2.0, 2.0]]))
    assert torch.allclose(out, torch.tensor([math.sqrt(1 / 3 * 2 / 4), 1.0]))


@pytest.mark.parametrize("kind, expected", [
    ("iou", -math.log(0.25)), ("linear_iou", 0.75), ("giou", 1 - (0.25 - 2 / 9)),
])
def test_iou_losses_on_offset_boxes(kind, expected):
    # pred [-1,1]^2 and target [0,2]^2 around the same point: intersection 1, union 7,
    # enclosing 9; with the +1 smoothing IoU = 2/8.
    pred, target = torch.tensor([[1.0, 1, 1, 1]]), torch.tensor([[0.0, 0, 2, 2]])
    assert IOULoss(kind)(pred, target).item() == pytest.approx(expected, rel=1e-6)


def test_iou_loss_weighting_and_identity():
    box = torch.tensor([[1.0, 2, 3, 4], [1.0, 1, 1, 1]])
    assert IOULoss("giou")(box, box).item() == pytest.approx(0.0, abs=1e-6)
    pred, target = torch.tensor([[1.0, 1, 1, 1]] * 2), torch.tensor([[0.0, 0, 2, 2]] * 2)
    weighted = IOULoss("linear_iou")(pred, target, torch.tensor([1.0, 3.0]))
    assert weighted.item() == pytest.approx(4 * 0.75)
    with pytest.raises(ValueError, match="LOC_LOSS_TYPE"):
        IOULoss("l1")


def _rows(labels, logits, reg_pred, reg_targets, ctr_pred):
    rows = Instances((0, 0))
    rows.labels = torch.tensor(labels)
    rows.logits_pred = torch.tensor(logits)
    rows.reg_pred = torch.tensor(reg_pred)
    rows.reg_targets = torch.tensor(reg_targets)
    rows.ctrness_pred = torch.tensor(ctr_pred)
    return rows


def _focal(logits, targets, alpha=0.25, gamma=2.0):
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    return ((alpha * targets + (1 - alpha) * (1 - targets)) * ce * (1 - p_t) ** gamma).sum()


def test_fcos_loss_by_hand():
    rows = _rows([1, 2, 2], [[0.5, -1.0], [0.0, 2.0], [-0.5, 0.1]],
                 [[1.0, 1, 1, 1], [0.0, 0, 0, 0], [0.0, 0, 0, 0]],
                 [[0.0, 0, 2, 2], [1.0, 1, 1, 1], [1.0, 1, 1, 1]], [0.3, 0.0, 0.0])
    loss = FCOSLoss(IOULoss("linear_iou"), 0.25, 2.0, "ctrness", "fg", 1.0)
    losses, positives = loss(rows, num_classes=2)
    target = torch.tensor([[0.0, 1.0], [0, 0], [0, 0]])
    assert losses["loss_fcos_cls"].item() == pytest.approx(_focal(rows.logits_pred, target).item(), rel=1e-6)
    ctr = centerness_targets(torch.tensor([[0.0, 0, 2, 2]]))  # = 0: on the box edge
    assert losses["loss_fcos_loc"].item() == pytest.approx((0.75 * ctr).item() / 1e-6 if ctr.item() > 0 else 0.0)
    expected_ctr = F.binary_cross_entropy_with_logits(torch.tensor([0.3]), ctr, reduction="sum").item()
    assert losses["loss_fcos_ctr"].item() == pytest.approx(expected_ctr, rel=1e-6)
    assert positives.pos_inds.tolist() == [0] and positives.gt_ctrs.tolist() == ctr.tolist()


def test_fcos_loss_centerness_weighting_and_normalisers():
    rows = _rows([0, 0, 1], [[0.5], [0.2], [-0.3]], [[1.0, 1, 1, 1], [2.0, 2, 2, 2], [0.0, 0, 0, 0]],
                 [[1.0, 2, 3, 4], [2.0, 2, 2, 2], [1.0, 1, 1, 1]], [0.1, 0.2, 0.3])
    ctr = centerness_targets(rows.reg_targets[:2])
    per_box = IOULoss("iou")(rows.reg_pred[:2], rows.reg_targets[:2], torch.tensor([1.0, 0.0])) * ctr[0] + \
        IOULoss("iou")(rows.reg_pred[:2], rows.reg_targets[:2], torch.tensor([0.0, 1.0])) * ctr[1]
    losses, _ = FCOSLoss(IOULoss("iou"), 0.25, 2.0, "ctrness", "fg", 2.0)(rows, num_classes=1)
    assert losses["loss_fcos_loc"].item() == pytest.approx((per_box / ctr.sum()).item(), rel=1e-5)
    focal = _focal(rows.logits_pred, torch.tensor([[1.0], [1.0], [0.0]])).item()
    assert losses["loss_fcos_cls"].item() == pytest.approx(2.0 * focal / 2, rel=1e-6)
    losses_all, _ = FCOSLoss(IOULoss("iou"), 0.25, 2.0, "ctrness", "all", 1.0)(rows, num_classes=1)
    assert losses_all["loss_fcos_cls"].item() == pytest.approx(focal / 3, rel=1e-6)
    moving = FCOSLoss(IOULoss("iou"), 0.25, 2.0, "ctrness", "moving_fg", 1.0)
    losses_moving, _ = moving(rows, num_classes=1)
    assert moving.moving_num_fg == pytest.approx(0.9 * 100 + 0.1 * 2)
    assert losses_moving["loss_fcos_cls"].item() == pytest.approx(focal / moving.moving_num_fg, rel=1e-6)


def test_iou_box_quality_uses_detached_iou_targets():
    rows = _rows([0], [[0.5]], [[1.0, 1, 1, 1]], [[0.0, 0, 2, 2]], [0.4])
    losses, positives = FCOSLoss(IOULoss("giou"), 0.25, 2.0, "iou", "fg", 1.0)(rows, num_classes=1)
    assert set(losses) == {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_iou"}
    assert positives.gt_ious.tolist() == pytest.approx([0.25])
    assert losses["loss_fcos_iou"].item() == pytest.approx(
        F.binary_cross_entropy_with_logits(torch.tensor(0.4), torch.tensor(0.25)).item(), rel=1e-6)


def test_no_positive_gives_zero_box_losses():
    rows = _rows([1, 1], [[0.5], [0.2]], [[1.0, 1, 1, 1]] * 2, [[1.0, 1, 1, 1]] * 2, [0.1, 0.2])
    losses, positives = FCOSLoss(IOULoss("giou"), 0.25, 2.0, "ctrness", "fg", 1.0)(rows, num_classes=1)
    assert len(positives) == 0
    assert losses["loss_fcos_loc"].item() == 0 and losses["loss_fcos_ctr"].item() == 0
    assert losses["loss_fcos_cls"].item() > 0


# ---------------------------------------------------------------- inference
def _logit(p):
    return math.log(p / (1 - p))


def _predictor(**kw):
    args = dict(pre_nms_thresh=0.05, pre_nms_topk=1000, nms_thresh=0.6, post_nms_topk=100,
                thresh_with_ctr=False, num_classes=2)
    args.update(kw)
    return FCOSPredictor(**args)


def _one_level(cls_probs, ltrb, ctr_prob=0.9):
    """A single 1x2 level (locations (4, 4) and (12, 4), stride 8)."""
    logits = torch.full((1, 2, 1, 2), -20.0)
    for (cell, cls), p in cls_probs.items():
        logits[0, cls, 0, cell] = _logit(p)
    reg = torch.tensor(ltrb, dtype=torch.float32).t().reshape(1, 4, 1, 2)
    ctr = torch.full((1, 1, 1, 2), _logit(ctr_prob))
    locations = compute_locations([logits], [8])
    return locations, [logits], [reg], [ctr]


def test_decode_boxes_and_scores():
    locations, logits, reg, ctr = _one_level({(1, 1): 0.8}, [[0, 0, 0, 0], [2, 3, 4, 5]])
    (result,) = _predictor()(locations, logits, reg, ctr, [(16, 16)], reg_scales=[1])
    assert result.pred_boxes.tensor.tolist() == [[10, 1, 16, 9]]
    assert result.scores.item() == pytest.approx(math.sqrt(0.8 * 0.9), rel=1e-5)
    assert result.pred_classes.tolist() == [1] and result.fpn_levels.tolist() == [0]
    # Stride units: distances are multiplied by the level's stride.
    (scaled,) = _predictor()(locations, logits, reg, ctr, [(16, 16)], reg_scales=[8])
    assert scaled.pred_boxes.tensor.tolist() == [[12 - 16, 4 - 24, 12 + 32, 4 + 40]]


def test_threshold_with_or_without_centerness():
    locations, logits, reg, ctr = _one_level({(0, 0): 0.1}, [[1, 1, 1, 1], [1, 1, 1, 1]], ctr_prob=0.3)
    assert len(_predictor()(locations, logits, reg, ctr, [(16, 16)])[0]) == 1
    # 0.1 * 0.3 = 0.03 < 0.05
    assert len(_predictor(thresh_with_ctr=True)(locations, logits, reg, ctr, [(16, 16)])[0]) == 0


def test_nms_is_per_class_and_topk_limits():
    # The two locations predict nearly the same box.
    locations, logits, reg, ctr = _one_level({(0, 0): 0.9, (1, 0): 0.8, (1, 1): 0.7},
                                             [[4, 4, 8, 4], [12, 4, 0, 4]])
    (result,) = _predictor()(locations, logits, reg, ctr, [(16, 16)])
    assert result.pred_classes.tolist() == [0, 1]  # the class-0 duplicate is suppressed
    (top1,) = _predictor(post_nms_topk=1)(locations, logits, reg, ctr, [(16, 16)])
    assert top1.pred_classes.tolist() == [0]
    (pre1,) = _predictor(pre_nms_topk=1)(locations, logits, reg, ctr, [(16, 16)])
    assert len(pre1) == 1 and pre1.scores.item() == pytest.approx(math.sqrt(0.9 * 0.9), rel=1e-5)
    (no_nms,) = _predictor(nms_thresh=0.0)(locations, logits, reg, ctr, [(16, 16)])
    assert len(no_nms) == 3


def test_ml_nms_keeps_sorted_by_score():
    inst = Instances((10, 10))
    inst.pred_boxes = Boxes(torch.tensor([[0, 0, 5, 5], [0, 0, 5, 5.1], [5, 5, 9, 9]], dtype=torch.float32))
    inst.scores = torch.tensor([0.5, 0.9, 0.7])
    inst.pred_classes = torch.tensor([0, 0, 0])
    assert ml_nms(inst, 0.5).scores.tolist() == pytest.approx([0.9, 0.7])
    assert len(ml_nms(inst, 0.5, max_proposals=1)) == 1


def test_naive_group_norm_equals_group_norm():
    x = torch.randn(2, 64, 5, 7)
    naive, gn = NaiveGroupNorm(32, 64), torch.nn.GroupNorm(32, 64)
    with torch.no_grad():
        naive.weight.normal_(), naive.bias.normal_()
    gn.load_state_dict(naive.state_dict())
    assert torch.allclose(naive(x), gn(x), atol=1e-5)


# ---------------------------------------------------------------- the whole model, each option
def tiny_cfg(*opts):
    cfg = get_cfg()
    cfg.merge_from_file(str(__import__("oracle_utils").REPO / "configs/FCOS-Detection/R_50_1x.yaml"))
    cfg.merge_from_list([
        "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.RESNETS.DEPTH", 18,
        "MODEL.RESNETS.RES2_OUT_CHANNELS", 64, "MODEL.FPN.OUT_CHANNELS", 64, "MODEL.FCOS.NUM_CLASSES", 3,
        *opts,
    ])
    return cfg


def tiny_batch():
    torch.manual_seed(0)
    inputs = []
    for boxes, classes in (([[4, 6, 40, 50], [30, 30, 60, 62]], [0, 2]), ([[10, 10, 20, 24]], [1])):
        instances = gt(boxes, classes, (64, 80))
        inputs.append({"image": torch.randint(0, 255, (3, 64, 80), dtype=torch.uint8), "instances": instances})
    return inputs


@pytest.mark.parametrize("opts", [
    [],
    ["MODEL.FCOS.NORM", "BN"], ["MODEL.FCOS.NORM", "SyncBN"], ["MODEL.FCOS.NORM", "NaiveGN"],
    ["MODEL.FCOS.NORM", "none"],
    ["MODEL.FCOS.NUM_SHARE_CONVS", 2, "MODEL.FCOS.NUM_CLS_CONVS", 1, "MODEL.FCOS.NUM_BOX_CONVS", 0],
    ["MODEL.FCOS.USE_SCALE", False, "MODEL.FCOS.CENTER_SAMPLE", False],
    ["MODEL.FCOS.BOX_QUALITY", "iou", "MODEL.FCOS.LOC_LOSS_TYPE", "iou"],
    ["MODEL.FCOS.LOSS_NORMALIZER_CLS", "moving_fg", "MODEL.FCOS.LOC_LOSS_TYPE", "linear_iou"],
    ["MODEL.FCOS.NORM_REG_TARGETS", False, "MODEL.FCOS.USE_RELU", False, "MODEL.FCOS.CENTERNESS_ON_REG", False],
    ["MODEL.FCOS.TOP_LEVELS", 1, "MODEL.FCOS.IN_FEATURES", ["p3", "p4", "p5", "p6"],
     "MODEL.FCOS.FPN_STRIDES", [8, 16, 32, 64], "MODEL.FCOS.SIZES_OF_INTEREST", [64, 128, 256],
     "MODEL.FCOS.THRESH_WITH_CTR", True],
])
def test_every_option_trains_and_infers(opts):
    model = build_model(tiny_cfg(*opts))
    model.train()
    losses = model(tiny_batch())
    total = sum(losses.values())
    assert torch.isfinite(total) and total.item() > 0
    total.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "proposal_generator" in n)
    model.eval()
    with torch.no_grad():
        (out,) = model([{"image": tiny_batch()[0]["image"], "height": 32, "width": 40}])
    inst = out["instances"]
    assert inst.image_size == (32, 40)
    assert len(inst) <= 100 and (inst.scores <= 1).all()
    boxes = inst.pred_boxes.tensor
    assert ((boxes[:, 0] >= 0) & (boxes[:, 2] <= 40) & (boxes[:, 3] <= 32)).all()


def test_top_module_extension_point():
    model = build_model(tiny_cfg())
    fcos = model.proposal_generator
    top = torch.nn.Conv2d(64, 7, 3, padding=1)
    batch = tiny_batch()
    images = ImageList.from_tensors([x["image"].float() for x in batch], 32)
    features = model.backbone(images.tensor)
    fcos.train()
    results, losses = fcos(images, features, [x["instances"] for x in batch], top_module=top)
    positives = results["instances"]
    assert len(positives) > 0 and positives.top_feats.shape == (len(positives), 7)
    for field in ("gt_inds", "im_inds", "fpn_levels", "locations", "reg_targets", "pos_inds", "gt_ctrs"):
        assert positives.has(field)
    assert set(positives.im_inds.tolist()) == {0, 1}
    fcos.eval()
    detections, _ = fcos(images, features, None, top_module=top)
    assert detections[0].top_feat.shape == (len(detections[0]), 7)


def test_fcos_config_errors_are_clear():
    with pytest.raises(ValueError, match="FPN_STRIDES"):
        build_model(tiny_cfg("MODEL.FCOS.FPN_STRIDES", [8, 16]))
    with pytest.raises(ValueError, match="LOSS_NORMALIZER_CLS"):
        build_model(tiny_cfg("MODEL.FCOS.LOSS_NORMALIZER_CLS", "bogus"))

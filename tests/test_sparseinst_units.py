"""SparseInst pieces on hand-made cases: matcher, criterion parts, IAM normalisation,
coordinates, inference rescoring."""
import math
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from adet.modeling.sparseinst.criterion import SparseInstCriterion, mask_iou, matched_target_index
from adet.modeling.sparseinst.decoder import (
    GroupInstanceBranch,
    coordinate_features,
    normalized_sigmoid_iam,
)
from adet.modeling.sparseinst.matcher import SparseInstMatcher, dice_score, padded_target_masks
from adet.modeling.sparseinst.sparseinst import rescore

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "SparseInst"
BIG = 20.0  # a logit whose sigmoid is 1 to float precision


def two_by_two_case():
    """Two predictions, two 4x4 targets: prediction 0 covers target 1's mask and has its
    class, prediction 1 covers target 0's: the optimal matching is the anti-diagonal."""
    t0 = torch.zeros(4, 4)
    t0[:2] = 1
    t1 = torch.zeros(4, 4)
    t1[2:] = 1
    masks = torch.stack([t1, t0]) * 2 * BIG - BIG  # pred 0 ~ t1, pred 1 ~ t0
    logits = torch.full((1, 2, 3), -BIG)
    logits[0, 0, 2] = BIG  # pred 0 says class 2 (target 1's)
    logits[0, 1, 1] = BIG  # pred 1 says class 1 (target 0's)
    outputs = {"pred_masks": masks[None], "pred_logits": logits, "pred_scores": torch.zeros(1, 2, 1)}
    targets = [{"labels": torch.tensor([1, 2]), "masks": torch.stack([t0, t1]).bool()}]
    return outputs, targets


def test_matcher_2x2_known_assignment():
    outputs, targets = two_by_two_case()
    (rows, cols), = SparseInstMatcher(alpha=0.8, beta=0.2)(outputs, targets, (4, 4))
    assert sorted(zip(rows.tolist(), cols.tolist())) == [(0, 1), (1, 0)]


def test_matcher_score_is_dice_power_alpha_times_prob_power_beta():
    logits = torch.tensor([[0.0, 0.0]])  # sigmoid 0.5 on both pixels
    targets = torch.tensor([[1.0, 0.0]])
    dice = 2 * 0.5 / (0.5 + 1.0 + 1e-4)
    assert dice_score(logits, targets).item() == pytest.approx(dice, rel=1e-6)
    matcher = SparseInstMatcher(alpha=0.8, beta=0.2)
    score = matcher.matching_score(logits, torch.tensor([[0.3, 0.7]]), targets, torch.tensor([1]))
    assert score.item() == pytest.approx(dice ** 0.8 * 0.7 ** 0.2, rel=1e-6)


def test_matcher_without_targets_returns_empty_pairs():
    outputs, _ = two_by_two_case()
    targets = [{"labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, 4, 4, dtype=torch.bool)}]
    (rows, cols), = SparseInstMatcher()(outputs, targets, (4, 4))
    assert rows.numel() == cols.numel() == 0


def test_padded_target_masks_pads_each_image_at_top_left():
    targets = [{"masks": torch.ones(1, 2, 3, dtype=torch.bool)}, {"masks": torch.ones(2, 4, 2, dtype=torch.bool)}]
    out = padded_target_masks(targets, (4, 4), torch.zeros(1))
    assert out.shape == (3, 4, 4) and out.dtype == torch.float32
    assert out[0].sum() == 6 and out[0, :2, :3].all()
    assert out[1].sum() == 8 and out[2, :, :2].all()


def test_matched_target_index_offsets_by_image():
    indices = [(torch.tensor([5, 7]), torch.tensor([1, 0])), (torch.tensor([3]), torch.tensor([2]))]
    assert matched_target_index(indices, [2, 3]).tolist() == [1, 0, 4]


def test_mask_iou_thresholds():
    logits = torch.tensor([[BIG, BIG, -BIG, -BIG]])
    targets = torch.tensor([[1.0, 0.6, 0.4, 1.0]])  # binarised at 0.5: 1 1 0 1
    assert mask_iou(logits, targets).item() == pytest.approx(2 / 3, rel=1e-5)


def test_criterion_on_perfect_predictions():
    outputs, targets = two_by_two_case()
    criterion = SparseInstCriterion(matcher=SparseInstMatcher(), num_classes=3)
    losses = criterion(outputs, targets, (4, 4))
    assert set(losses) == {"loss_ce", "loss_mask", "loss_dice", "loss_objectness"}
    assert losses["loss_ce"].item() < 1e-6
    assert losses["loss_dice"].item() < 1e-4
    assert losses["loss_mask"].item() < 1e-6
    # objectness logit 0 against IoU 1: BCE = log 2, weight 1.
    assert losses["loss_objectness"].item() == pytest.approx(math.log(2), rel=1e-6)


def test_criterion_weights_and_normalisation():
    outputs, targets = two_by_two_case()
    outputs["pred_masks"] = torch.zeros_like(outputs["pred_masks"])  # sigmoid 0.5 everywhere
    weights = dict(class_weight=3.0, mask_pixel_weight=7.0, mask_dice_weight=11.0, objectness_weight=13.0)
    losses = SparseInstCriterion(matcher=SparseInstMatcher(), num_classes=3, **weights)(outputs, targets, (4, 4))
    # Each matched mask: 8 of 16 pixels on, p = 0.5: dice = 1 - 2*4 / (4 + 8 + 1e-4); summed over 2, / 2 targets.
    assert losses["loss_dice"].item() == pytest.approx(11.0 * (1 - 8 / (12 + 1e-4)), rel=1e-5)
    assert losses["loss_mask"].item() == pytest.approx(7.0 * math.log(2), rel=1e-5)
    # IoU of an all-on prediction (0.5 >= 0.4) with a half mask: 0.5.
    expected_obj = F.binary_cross_entropy_with_logits(torch.zeros(2), torch.full((2,), 0.5)).item()
    assert losses["loss_objectness"].item() == pytest.approx(13.0 * expected_obj, rel=1e-5)


def test_iam_normalisation_sums_to_one_and_is_sigmoid_proportional():
    iam = torch.randn(2, 3, 5, 7)
    weights = normalized_sigmoid_iam(iam)
    assert weights.shape == (2, 3, 35)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3))
    ratio = weights / iam.sigmoid().flatten(2)
    torch.testing.assert_close(ratio, ratio[..., :1].expand_as(ratio))


def test_group_branch_concatenates_one_instance_maps_group_major():
    branch = GroupInstanceBranch(in_channels=4, dim=2, num_convs=1, num_masks=3, kernel_dim=5, num_classes=6,
                                 groups=2)
    with torch.no_grad():
        branch.fc.weight.copy_(torch.eye(4))
        branch.fc.bias.zero_()
    inst = torch.arange(12.0).view(1, 6, 2)  # map g*3 + n has features [2(g*3+n), 2(g*3+n)+1]
    out = branch.instance_features(inst)
    assert out.shape == (1, 3, 4)
    assert out[0, 1].tolist() == [2.0, 3.0, 8.0, 9.0]  # instance 1: maps 1 and 4


def test_coordinate_features_span_minus_one_to_one():
    coords = coordinate_features(torch.zeros(2, 8, 3, 5))
    assert coords.shape == (2, 2, 3, 5)
    assert coords[0, 0, 0].tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0]  # x along the width
    assert coords[0, 1, :, 0].tolist() == [-1.0, 0.0, 1.0]  # y along the height


def test_rescore_by_mean_probability_inside_mask():
    probs = torch.tensor([[[0.9, 0.5], [0.2, 0.1]]])
    assert rescore(torch.tensor([0.5]), probs, 0.45).item() == pytest.approx(0.5 * 0.7, rel=1e-5)


def test_inference_keeps_queries_above_threshold_at_output_size():
    from types import SimpleNamespace

    from adet.modeling.sparseinst import SparseInst

    logits = torch.full((1, 3, 2), -BIG)
    logits[0, 1, 0] = BIG  # only query 1 is confident
    masks = torch.full((1, 3, 4, 4), -BIG)
    masks[0, 1, :2, :2] = BIG
    outputs = {"pred_logits": logits, "pred_scores": torch.full((1, 3, 1), BIG), "pred_masks": masks}
    fake = SimpleNamespace(cls_threshold=0.005, mask_threshold=0.45)
    (result,) = SparseInst.inference(fake, outputs, (16, 16), [(16, 12)], [(32, 24)])
    assert result.image_size == (32, 24)
    assert result.pred_classes.tolist() == [0]
    assert result.scores.tolist() == pytest.approx([1.0])
    assert result.pred_masks.shape == (1, 32, 24)
    x0, y0, x1, y1 = result.pred_boxes.tensor[0].tolist()
    assert x0 == 0 and y0 == 0 and 15 <= x1 <= 18 and 15 <= y1 <= 18
    outputs["pred_logits"][0, 1, 0] = -BIG
    (empty,) = SparseInst.inference(fake, outputs, (16, 16), [(16, 12)], [(32, 24)])
    assert len(empty) == 0 and empty.pred_masks.shape == (0, 32, 24)


def test_prepare_target_from_polygons_and_without_masks():
    from detectron2.structures import Instances, PolygonMasks

    from adet.modeling.sparseinst import SparseInst

    inst = Instances((8, 8))
    inst.gt_classes = torch.tensor([3])
    inst.gt_masks = PolygonMasks([[[0.0, 0.0, 4.0, 0.0, 4.0, 4.0, 0.0, 4.0]]])
    target = SparseInst.prepare_target(inst)
    assert target["masks"].shape == (1, 8, 8) and target["masks"].dtype == torch.bool
    assert 9 <= target["masks"].sum() <= 25
    empty = Instances((8, 8))
    empty.gt_classes = torch.zeros(0, dtype=torch.long)
    assert SparseInst.prepare_target(empty)["masks"].shape == (0, 8, 8)


# Mixed precision (SOLVER.AMP.ENABLED, sparse_inst_r50_giam_fp16.yaml) ----------------------

HALF = [torch.float16, torch.bfloat16]


def random_case(num_classes, sizes=(3, 2), n=6, hw=(16, 16), stride=2, seed=0):
    """Random predictions at ``hw`` for images with ``sizes`` targets each (masks at
    ``stride`` x the prediction size, as the padded input is)."""
    g = torch.Generator().manual_seed(seed)
    b = len(sizes)
    outputs = {
        "pred_masks": torch.randn(b, n, *hw, generator=g) * 4,
        "pred_logits": torch.randn(b, n, num_classes, generator=g) * 3,
        "pred_scores": torch.randn(b, n, 1, generator=g),
    }
    input_shape = (hw[0] * stride, hw[1] * stride)
    targets = [{"labels": torch.randint(0, num_classes, (k,), generator=g),
                "masks": torch.rand(k, *input_shape, generator=g) > 0.6} for k in sizes]
    return outputs, targets, input_shape


def as_dtype(outputs, dtype):
    return {k: v.to(dtype) for k, v in outputs.items()}


def pairs(indices):
    return [(r.tolist(), c.tolist()) for r, c in indices]


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("num_classes", [1, 80])
def test_matcher_under_cpu_autocast_equals_float32_matching(dtype, num_classes):
    outputs, targets, shape = random_case(num_classes)
    half = as_dtype(outputs, dtype)
    matcher = SparseInstMatcher()
    expected = matcher(as_dtype(half, torch.float32), targets, shape)  # same values, float32
    labels = torch.cat([t["labels"] for t in targets])
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        got = matcher(half, targets, shape)
        score = matcher.batch_score(half, targets, labels, shape)
    assert pairs(got) == pairs(expected)
    assert score.dtype == torch.float32 and torch.isfinite(score).all()
    assert torch.equal(score, matcher.batch_score(as_dtype(half, torch.float32), targets, labels, shape))


@pytest.mark.parametrize("dtype", HALF)
def test_matcher_known_assignment_in_half_precision(dtype):
    outputs, targets = two_by_two_case()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        (rows, cols), = SparseInstMatcher()(as_dtype(outputs, dtype), targets, (4, 4))
    assert sorted(zip(rows.tolist(), cols.tolist())) == [(0, 1), (1, 0)]


def test_matcher_scores_do_not_overflow_in_float16():
    """Over 65504 pixels, float16 sums overflow (inf / inf = NaN dice); the matcher's
    float32 scores stay exact."""
    hw = (260, 260)
    logits = torch.full((1, 2, *hw), BIG, dtype=torch.float16)
    logits[0, 1] = -BIG
    outputs = {"pred_masks": logits, "pred_logits": torch.zeros(1, 2, 1, dtype=torch.float16),
               "pred_scores": torch.zeros(1, 2, 1, dtype=torch.float16)}
    targets = [{"labels": torch.tensor([0]), "masks": torch.ones(1, *hw, dtype=torch.bool)}]
    naive = dice_score(logits[0].flatten(1), torch.ones(1, hw[0] * hw[1], dtype=torch.float16))
    assert not torch.isfinite(naive).all()  # what float16 would give
    matcher = SparseInstMatcher(alpha=0.8, beta=0.2)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        score = matcher.batch_score(outputs, targets, torch.tensor([0]), hw)
        (rows, cols), = matcher(outputs, targets, hw)
    pixels = hw[0] * hw[1]
    assert score[0, :, 0].tolist() == pytest.approx([(2 * pixels / (2 * pixels + 1e-4)) ** 0.8 * 0.5 ** 0.2, 0.0],
                                                    abs=1e-6)
    assert (rows.tolist(), cols.tolist()) == ([0], [0])


@pytest.mark.parametrize("dtype", HALF)
def test_matcher_with_empty_targets_in_half_precision(dtype):
    outputs, targets, shape = random_case(1, sizes=(0, 2))
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        (r0, c0), (r1, c1) = SparseInstMatcher()(as_dtype(outputs, dtype), targets, shape)
        none = SparseInstMatcher()(as_dtype(outputs, dtype), [targets[0], targets[0]], shape)
    assert r0.numel() == c0.numel() == 0 and sorted(c1.tolist()) == [0, 1]
    assert all(r.numel() == c.numel() == 0 for r, c in none)


def test_matcher_rejects_nan_predictions_with_a_clear_error():
    outputs, targets, shape = random_case(3)
    outputs["pred_masks"][0, 2] = float("nan")
    with pytest.raises(FloatingPointError, match="predictions hold NaN"):
        SparseInstMatcher()(outputs, targets, shape)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("num_classes,sizes", [(1, (3, 2)), (80, (3, 2)), (1, (0, 0)), (80, (0, 2))])
def test_criterion_under_cpu_autocast_is_float32_and_finite(dtype, num_classes, sizes):
    outputs, targets, shape = random_case(num_classes, sizes=sizes)
    half = {k: v.to(dtype).requires_grad_() for k, v in outputs.items()}
    criterion = SparseInstCriterion(matcher=SparseInstMatcher(), num_classes=num_classes)
    expected = criterion(as_dtype(half, torch.float32), targets, shape)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        losses = criterion(half, targets, shape)
    assert set(losses) == {"loss_ce", "loss_mask", "loss_dice", "loss_objectness"}
    for k, v in losses.items():
        assert v.dtype == torch.float32 and torch.isfinite(v), k
        assert torch.equal(v, expected[k]), k  # computed from the same values in float32
    sum(losses.values()).backward()
    assert half["pred_logits"].grad.dtype == dtype and torch.isfinite(half["pred_logits"].grad.float()).all()
    if sum(sizes):
        assert half["pred_masks"].grad.float().abs().sum() > 0


def test_amp_trainer_on_cpu_trains_the_fp16_config_in_bfloat16(coco_tiny, tmp_path):
    """sparse_inst_r50_giam_fp16.yaml (SOLVER.AMP.ENABLED) through adet's Trainer on CPU:
    Detectron2's AMPTrainer needs CUDA, so the forward runs under bfloat16 autocast."""
    from adet.config import get_cfg
    from adet.engine import Trainer
    from adet.engine.trainer import TrainingAutocast

    cfg = get_cfg()
    cfg.merge_from_file(str(CONFIGS / "sparse_inst_r50_giam_fp16.yaml"))
    cfg.merge_from_list([
        "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.RESNETS.DEPTH", "18",
        "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.SPARSE_INST.ENCODER.NUM_CHANNELS", "32",
        "MODEL.SPARSE_INST.DECODER.NUM_MASKS", "10", "MODEL.SPARSE_INST.DECODER.KERNEL_DIM", "16",
        "MODEL.SPARSE_INST.DECODER.INST.DIM", "32", "MODEL.SPARSE_INST.DECODER.INST.CONVS", "1",
        "MODEL.SPARSE_INST.DECODER.MASK.DIM", "32", "MODEL.SPARSE_INST.DECODER.MASK.CONVS", "1",
        "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "192", "INPUT.CROP.ENABLED", "False",
        "DATASETS.TRAIN", "('adet_test_train2',)", "DATASETS.TEST", "()", "DATALOADER.NUM_WORKERS", "0",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "1",
        "SOLVER.CHECKPOINT_PERIOD", "100000", "TEST.EVAL_PERIOD", "0", "SEED", "0", "OUTPUT_DIR", str(tmp_path),
    ])
    assert cfg.SOLVER.AMP.ENABLED
    trainer = Trainer(cfg)
    assert isinstance(trainer._trainer.model, TrainingAutocast)
    decoder = trainer._trainer.model.model.decoder
    dtypes = []
    decoder.register_forward_hook(lambda m, i, out: dtypes.append(out["pred_masks"].dtype))
    trainer.train()
    assert dtypes == [torch.bfloat16] * 2
    losses = trainer.storage.history("total_loss").values()
    assert len(losses) == 2 and all(math.isfinite(v) for v, _ in losses)
    assert all(p.dtype == torch.float32 for p in decoder.parameters())


def test_amp_trainer_choice_by_device():
    from types import SimpleNamespace

    from detectron2.engine import AMPTrainer, SimpleTrainer

    from adet.engine.trainer import TrainingAutocast, build_amp_trainer

    def cfg(device):
        return SimpleNamespace(MODEL=SimpleNamespace(DEVICE=device))

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    cpu = build_amp_trainer(cfg("cpu"), model, [], optimizer)
    assert type(cpu) is SimpleTrainer and isinstance(cpu.model, TrainingAutocast)
    assert cpu.model.dtype == torch.bfloat16
    with warnings.catch_warnings():  # without CUDA, the GradScaler warns that it is disabled
        warnings.simplefilter("ignore")
        assert type(build_amp_trainer(cfg("cuda:0"), model, [], optimizer)) is AMPTrainer
    with pytest.raises(ValueError, match="mixed-precision training runs on MODEL.DEVICE"):
        build_amp_trainer(cfg("meta"), model, [], optimizer)
    wrapped = TrainingAutocast(torch.nn.Linear(2, 2))
    assert wrapped.train()(torch.ones(1, 2)).dtype == torch.bfloat16
    assert wrapped.eval()(torch.ones(1, 2)).dtype == torch.float32


# tools/benchmark.py: SparseInst's inference stages and post-processing share -------------


def load_benchmark():
    import importlib.util

    path = REPO / "tools" / "benchmark.py"
    spec = importlib.util.spec_from_file_location("benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_splits_sparseinst_inference_into_stages():
    from detectron2.modeling import build_model

    from adet.config import get_cfg

    benchmark = load_benchmark()
    assert benchmark.guess_schema("configs/SparseInst/sparse_inst_r50_giam.yaml") == "sparseinst_r50_giam"
    cfg = get_cfg()
    cfg.merge_from_file(str(CONFIGS / "sparse_inst_r50_giam.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.RESNETS.DEPTH", "18",
                         "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.SPARSE_INST.CLS_THRESHOLD", "0.0"])
    model = build_model(cfg)
    inputs = [{"image": torch.randint(0, 255, (3, 64, 96), dtype=torch.uint8), "height": 128, "width": 192}]
    stages = benchmark.time_inference_stages(model, inputs, warmup=0, runs=2, device="cpu")
    assert list(stages) == ["preprocess", "backbone", "encoder", "decoder", "postprocess", "total"]
    assert all(v > 0 for v in stages.values())
    parts = sum(v for k, v in stages.items() if k != "total")
    assert parts <= stages["total"] * 1.05  # medians of each part: roughly additive
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    row = {"model": "tiny", "stages_ms": stages, "postprocess_share": stages["postprocess"] / stages["total"]}
    table = benchmark.stage_report([row])
    assert "| tiny" in table and f"{100 * row['postprocess_share']:.1f}%" in table
    assert benchmark.time_inference_stages(torch.nn.Identity(), inputs, 0, 1, "cpu") is None


# Instance context encoder: optional normalisation (ENCODER.NORM) --------------------------

def _encoder(norm):
    from adet.modeling.sparseinst.encoder import InstanceContextEncoder

    torch.manual_seed(0)
    return InstanceContextEncoder(in_features=["res3", "res4", "res5"], in_channels=[8, 16, 32],
                                  num_channels=32, norm=norm)


def test_encoder_without_norm_keeps_the_reference_parameter_names():
    keys = set(_encoder("").state_dict())
    assert "fpn_laterals.0.weight" in keys and "fpn_laterals.0.bias" in keys
    assert not any(".norm." in k for k in keys)


def test_encoder_norm_tames_unactivated_backbone_features():
    # Stage outputs with std ~7 (EfficientNet-Lite's): without a norm the encoder's output
    # keeps that scale; with GN each lateral/output conv is normalised.
    features = {"res3": 7 * torch.randn(2, 8, 16, 16), "res4": 7 * torch.randn(2, 16, 8, 8),
                "res5": 7 * torch.randn(2, 32, 4, 4)}
    plain, normed = _encoder(""), _encoder("GN")
    assert any(".norm." in k for k in normed.state_dict())
    out_plain, out_normed = plain(features), normed(features)
    assert out_normed.shape == out_plain.shape == (2, 32, 16, 16)
    assert out_plain.std() > 3 * out_normed.std()
    assert out_normed.std() < 3

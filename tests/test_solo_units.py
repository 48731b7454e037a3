"""SOLO (v1) and Decoupled SOLO: per-level targets, mask assembly from the heads' outputs,
cells of several levels at one resolution, training steps and inference (Matrix and mask NMS)."""
import pytest
import torch

from adet.config import get_cfg
from adet.modeling.solov2.solo_heads import DecoupledSOLOInsHead, SOLOInsHead
from adet.modeling.solov2.targets import image_targets
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances

GRIDS = [40, 36, 24, 16, 12]
RANGES = [[1, 96], [48, 192], [96, 384], [192, 768], [384, 2048]]
# A 256 x 256 padded input: SOLO's masks are at strides 4, 4, 8, 16, 16.
SHAPES = [(64, 64), (64, 64), (32, 32), (16, 16), (16, 16)]
STRIDES = [4, 4, 8, 16, 16]


def _instances(hw, boxes, classes):
    inst = Instances(hw)
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    inst.gt_classes = torch.tensor(classes)
    masks = torch.zeros(len(boxes), *hw, dtype=torch.bool)
    for m, (x0, y0, x1, y1) in zip(masks, boxes):
        m[int(y0):int(y1), int(x0):int(x1)] = True
    inst.gt_masks = BitMasks(masks)
    return inst


def _cells(rows, cols, grid):
    return sorted(i * grid + j for i in rows for j in cols)


def test_targets_at_each_level_resolution():
    # A: 64 x 64 box centred at 95.5 -> sqrt(area) 64: levels 0 and 1.
    # B: 200 x 160 box at the origin -> sqrt(area) 178.9: levels 1 and 2.
    inst = _instances((256, 256), [[64, 64, 128, 128], [0, 0, 200, 160]], [7, 3])
    levels = image_targets(inst, SHAPES, STRIDES, 80, RANGES, GRIDS, 0.2)
    assert [t.grid_order.numel() for t in levels] == [9, 18, 9, 0, 0]

    # Level 0 (S = 40, cell 6.4 px): A's mass center 95.5 -> cell 14, region cells 13..15.
    assert sorted(levels[0].grid_order.tolist()) == _cells((13, 14, 15), (13, 14, 15), 40)
    assert levels[0].masks.shape == (9, 64, 64)
    assert levels[0].masks[0, 16:32, 16:32].all() and levels[0].masks[0].sum() == 16 * 16

    # Level 1 (S = 36, cell 7.11 px): A -> cells 12..14 both ways; B's center (99.5, 79.5)
    # -> cell (11, 13), its region clipped to the 3 x 3 around it.
    t = levels[1]
    assert t.grid_order.tolist()[:9] == _cells((12, 13, 14), (12, 13, 14), 36)
    assert sorted(t.grid_order.tolist()[9:]) == _cells((10, 11, 12), (12, 13, 14), 36)
    assert (t.cate_labels == 3).sum() == 9 and (t.cate_labels == 7).sum() == 9 - 3  # B overwrites row 12 of A's cells
    assert t.masks[:9].sum((1, 2)).tolist() == [256] * 9  # A at 1/4
    assert t.masks[9:].sum((1, 2)).tolist() == [50 * 40] * 9  # B at 1/4

    # Level 2 (S = 24, stride 8): B's mask is 25 x 20 at 1/8, in a 32 x 32 target.
    t = levels[2]
    assert t.masks.shape == (9, 32, 32) and t.masks.dtype == torch.uint8
    assert t.masks[0, :20, :25].all() and t.masks[0].sum() == 25 * 20
    assert (t.cate_labels == 3).sum() == 9 and t.positive.sum() == 9


def _head(cls, grids):
    return cls(in_channels=32, channels=32, num_classes=5, num_grids=grids, num_convs=1)


def test_vanilla_head_cell_owns_channel_row_times_s_plus_column():
    head = _head(SOLOInsHead, [4])
    logits = torch.full((2, 16, 8, 8), -20.0)
    logits[1, 2 * 4 + 3, 1:3, 5:7] = 20.0  # image 1, cell (row 2, column 3)
    probs = head.level_mask_probs([logits], 1, 0, torch.tensor([11, 0]))
    assert probs.shape == (2, 8, 8)
    assert (probs[0] > 0.5).nonzero().tolist() == [[1, 5], [1, 6], [2, 5], [2, 6]]
    assert (probs[1] < 1e-6).all()


def test_decoupled_head_mask_is_product_of_column_x_and_row_y():
    # X channel j is on at columns 2j, 2j+1; Y channel i at rows 2i, 2i+1: cell (i, j)'s
    # mask is the 2 x 2 block at (2i, 2j).
    head = _head(DecoupledSOLOInsHead, [4])
    x = torch.full((1, 4, 8, 8), -20.0)
    y = torch.full((1, 4, 8, 8), -20.0)
    for k in range(4):
        x[0, k, :, 2 * k:2 * k + 2] = 20.0
        y[0, k, 2 * k:2 * k + 2, :] = 20.0
    for i, j in [(0, 0), (1, 3), (3, 2)]:
        (probs,) = head.level_mask_probs([(x, y)], 0, 0, torch.tensor([i * 4 + j]))
        assert (probs > 0.5).nonzero().tolist() == [[r, c] for r in (2 * i, 2 * i + 1) for c in (2 * j, 2 * j + 1)]
    # Soft values multiply: sigmoid(0) * sigmoid(0) = 0.25.
    (probs,) = head.level_mask_probs([(torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2))], 0, 0, torch.tensor([5]))
    assert torch.allclose(probs, torch.full((2, 2), 0.25))


def test_decoupled_predicts_2s_channels_vanilla_s_squared():
    feats = [torch.randn(1, 32, 6, 8), torch.randn(1, 32, 3, 4)]
    cate, masks = _head(SOLOInsHead, [5, 3])(feats)
    assert [tuple(c.shape) for c in cate] == [(1, 5, 5, 5), (1, 5, 3, 3)]
    assert [tuple(m.shape) for m in masks] == [(1, 25, 12, 16), (1, 9, 6, 8)]
    cate, masks = _head(DecoupledSOLOInsHead, [5, 3])(feats)
    assert [(tuple(x.shape), tuple(y.shape)) for x, y in masks] == [((1, 5, 12, 16),) * 2, ((1, 3, 6, 8),) * 2]


def _cfg(mask_type, nms_type="matrix"):
    cfg = get_cfg()
    cfg.merge_from_file("configs/SOLO/R50_3x.yaml" if mask_type == "vanilla" else "configs/SOLO/Decoupled_R50_3x.yaml")
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.SOLOV2.INSTANCE_IN_CHANNELS = cfg.MODEL.SOLOV2.INSTANCE_CHANNELS = 32
    cfg.MODEL.SOLOV2.NUM_INSTANCE_CONVS = 2
    cfg.MODEL.SOLOV2.NUM_GRIDS = [12, 10, 8, 6, 4]
    cfg.MODEL.SOLOV2.SCORE_THR = cfg.MODEL.SOLOV2.UPDATE_THR = 0.0  # an untrained model scores low
    cfg.MODEL.SOLOV2.NMS_TYPE = nms_type
    if mask_type == "decoupled":  # untrained: sigmoid(x) * sigmoid(y) is about 0.5 * 0.5
        cfg.MODEL.SOLOV2.MASK_THR = 0.25
    return cfg


HEADS = {"vanilla": SOLOInsHead, "decoupled": DecoupledSOLOInsHead}


@pytest.fixture(scope="module", params=list(HEADS))
def model(request):
    torch.manual_seed(0)
    model = build_model(_cfg(request.param))
    assert type(model).__name__ == "SOLO" and type(model.ins_head) is HEADS[request.param]
    return model


def test_mask_layout(model):
    model.eval()
    image = torch.zeros(3, 96, 128)
    with torch.no_grad():
        features = model.backbone(model.preprocess_image([{"image": image}]).tensor)
        _, mask_preds = model.predict(features)
    shapes, strides = model.mask_layout(mask_preds)
    assert shapes == [(24, 32), (24, 32), (12, 16), (6, 8), (6, 8)] and strides == [4, 4, 8, 16, 16]


def test_cells_of_all_levels_come_at_level0_resolution(model):
    """cell_probs: global cell index -> its level's mask, resized to 1/4 of the input."""
    grids = [12, 10, 8, 6, 4]
    shapes = [(24, 32), (24, 32), (12, 16), (6, 8), (6, 8)]
    if isinstance(model.ins_head, SOLOInsHead):  # constant logits = the level index
        preds = [torch.full((1, g * g) + s, float(level)) for level, (g, s) in enumerate(zip(grids, shapes))]
        expected = [torch.sigmoid(torch.tensor(float(level))) for level in range(5)]
    else:
        preds = [(torch.full((1, g) + s, float(level)), torch.zeros((1, g) + s)) for level, (g, s)
                 in enumerate(zip(grids, shapes))]
        expected = [torch.sigmoid(torch.tensor(float(level))) * 0.5 for level in range(5)]
    starts = [0, 144, 244, 308, 344]
    cells = torch.tensor([starts[4] + 3, starts[0] + 5, starts[2], starts[1] + 99, starts[3] + 35])
    probs = model.cell_probs(preds, 0)(cells)
    assert probs.shape == (5, 24, 32)
    for prob, level in zip(probs, [4, 0, 2, 1, 3]):
        assert torch.allclose(prob, expected[level].expand(24, 32), atol=1e-6), level


def test_training_step_and_inference(model):
    torch.manual_seed(0)
    image = torch.randint(0, 255, (3, 96, 128), dtype=torch.uint8)
    inst = _instances((96, 128), [[10, 10, 70, 80], [60, 20, 120, 60]], [1, 2])
    model.train()
    model.zero_grad()
    losses = model([{"image": image, "instances": inst}, {"image": image, "instances": inst[:0]}])
    assert set(losses) == {"loss_ins", "loss_cate"}
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_ins"] > 0
    sum(losses.values()).backward()
    # Both instances are on levels 0-1 (sqrt(area) 65 and 49): their mask predictors learn.
    for name, p in model.ins_head.named_parameters():
        if "_pred." in name and name.split("_pred.")[1].startswith(("0.", "1.")):
            assert p.grad is not None and p.grad.abs().sum() > 0, name

    # No instance at all: the mask loss is a zero that still reaches every mask output.
    model.zero_grad()
    losses = model([{"image": image, "instances": inst[:0]}])
    assert losses["loss_ins"].item() == 0.0 and torch.isfinite(losses["loss_cate"])
    sum(losses.values()).backward()
    assert all(p.grad is not None for n, p in model.ins_head.named_parameters() if "_pred." in n)

    model.eval()
    with torch.no_grad():
        (out,) = model([{"image": image, "height": 48, "width": 64}])
    out = out["instances"]
    assert out.image_size == (48, 64) and 0 < len(out) <= 100
    assert out.pred_masks.shape[1:] == (48, 64) and out.pred_masks.dtype == torch.bool
    assert out.has("pred_boxes") and out.has("scores") and out.has("pred_classes")


def _overlapping_pairs(instances, iou_threshold):
    from adet.layers import mask_iou_matrix

    iou = mask_iou_matrix(instances.pred_masks)
    same = instances.pred_classes[:, None] == instances.pred_classes[None, :]
    return int(((iou > iou_threshold) & same).triu(diagonal=1).sum())


@pytest.mark.parametrize("mask_type", list(HEADS))
def test_mask_nms_removes_the_overlaps_matrix_nms_only_decays(mask_type):
    image = torch.randint(0, 255, (3, 96, 128), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    outputs = {}
    for nms_type in ("matrix", "mask"):
        cfg = _cfg(mask_type, nms_type=nms_type)
        cfg.MODEL.SOLOV2.NUM_CLASSES = 1  # every pair of masks can suppress each other
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        with torch.no_grad():
            (out,) = model([{"image": image}])
        outputs[nms_type] = out["instances"]
    mask_nms_out = outputs["mask"]
    assert 0 < len(mask_nms_out) < len(outputs["matrix"])
    assert (mask_nms_out.scores[:-1] >= mask_nms_out.scores[1:]).all()
    # With UPDATE_THR 0, Matrix NMS keeps overlapping masks (decayed); greedy mask NMS at
    # IoU 0.5 (measured at 1/4 scale; upsampling moves IoUs a little) leaves none.
    assert _overlapping_pairs(outputs["matrix"], 0.6) > 0
    assert _overlapping_pairs(mask_nms_out, 0.6) == 0


def test_unknown_mask_type_raises():
    cfg = _cfg("vanilla")
    cfg.MODEL.SOLO.MASK_TYPE = "grid"
    with pytest.raises(ValueError, match="MASK_TYPE"):
        build_model(cfg)

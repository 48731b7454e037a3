"""SOLOv2 pieces: targets, memory-bounded inference against a materialise-everything
version, empty cases, a training step."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adet.config import get_cfg
from adet.layers import matrix_nms
from adet.modeling.solov2.inference import cell_strides, inference_single_image
from adet.modeling.solov2.targets import image_targets
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances, PolygonMasks

GRIDS = [40, 36, 24, 16, 12]
RANGES = [[1, 96], [48, 192], [96, 384], [192, 768], [384, 2048]]


def _instances(hw, boxes, classes):
    inst = Instances(hw)
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    inst.gt_classes = torch.tensor(classes)
    masks = torch.zeros(len(boxes), *hw, dtype=torch.bool)
    for m, (x0, y0, x1, y1) in zip(masks, boxes):
        m[int(y0):int(y1), int(x0):int(x1)] = True
    inst.gt_masks = BitMasks(masks)
    return inst


def test_targets_center_region():
    # A 64x64 box centred at (96, 96) in a 256x256 image: sqrt(area)=64 -> levels 0 and 1.
    inst = _instances((256, 256), [[64, 64, 128, 128]], [7])
    levels = image_targets(inst, [(64, 64)] * 5, [4] * 5, 80, RANGES, GRIDS, 0.2)
    assert [t.grid_order.numel() > 0 for t in levels] == [True, True, False, False, False]
    t = levels[0]
    # Mass center 95.5 -> cell 14 of 40 (cell size 6.4 px); half size 6.4 -> cells 13..15.
    assert sorted(t.grid_order.tolist()) == [i * 40 + j for i in (13, 14, 15) for j in (13, 14, 15)]
    assert (t.cate_labels == 7).sum() == 9 and (t.cate_labels == 80).sum() == 40 * 40 - 9
    assert t.positive.sum() == 9 and t.masks.shape == (9, 64, 64)
    assert t.masks[0, 16:32, 16:32].all() and t.masks[0].sum() == 16 * 16


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_polygon_masks_give_the_bitmask_targets_on_the_boxes_device(device):
    """INPUT.MASK_FORMAT "polygon": the masks are rasterised on the CPU; the targets must
    equal the bitmask ones and live on the boxes' device (a GPU's in training)."""
    boxes = [[64, 64, 128, 128], [10, 20, 50, 44]]
    bitmask = _instances((256, 256), boxes, [7, 3]).to(device)
    polygon = _instances((256, 256), boxes, [7, 3])
    polygon.gt_masks = PolygonMasks([[[x0, y0, x1, y0, x1, y1, x0, y1]] for x0, y0, x1, y1 in boxes])
    polygon = polygon.to(device)
    targets = [image_targets(i, [(64, 64)] * 5, [4] * 5, 80, RANGES, GRIDS, 0.2) for i in (bitmask, polygon)]
    for a, b in zip(*targets):
        for name in ("cate_labels", "grid_order", "positive", "masks"):
            x, y = getattr(a, name), getattr(b, name)
            assert y.device.type == device and torch.equal(x, y), name


def _greedy_mask_nms(masks, labels, thr):
    """Masks in descending score order; keep each unless a kept one of its class has IoU > thr."""
    keep = []
    for i in range(len(masks)):
        overlaps = [(masks[i] & masks[j]).sum() / (masks[i] | masks[j]).sum() for j in range(i) if keep[j]
                    and labels[j] == labels[i]]
        keep.append(all(o <= thr for o in overlaps))
    return keep


def _naive(cate, kernels, strides, feats, size, out_size, p):
    """The reference algorithm: one mask per (cell, class) candidate, materialised."""
    cand = cate > p["score_thr"]
    scores = cate[cand]
    cells, labels = cand.nonzero().unbind(1)
    probs = F.conv2d(feats, kernels[cells][:, :, None, None]).squeeze(0).sigmoid()
    masks = probs > p["mask_thr"]
    areas = masks.sum((1, 2)).float()
    keep = areas > strides[cells]
    probs, masks, areas, scores, labels = probs[keep], masks[keep], areas[keep], scores[keep], labels[keep]
    scores = scores * (probs * masks.float()).sum((1, 2)) / areas
    order = torch.argsort(scores, descending=True)[:p["nms_pre"]]
    probs, masks, areas, scores, labels = probs[order], masks[order], areas[order], scores[order], labels[order]
    if p.get("nms_type", "matrix") == "matrix":
        scores = matrix_nms(labels, masks, areas, scores, sigma=p["nms_sigma"], kernel=p["nms_kernel"])
        keep = scores >= p["update_thr"]
    else:
        keep = torch.tensor(_greedy_mask_nms(masks, labels, p["nms_iou"]), dtype=torch.bool)
    probs, scores, labels = probs[keep], scores[keep], labels[keep]
    order = torch.argsort(scores, descending=True)[:p["max_per_img"]]
    probs, scores, labels = probs[order], scores[order], labels[order]
    h, w = size
    r = math.ceil(h / feats.shape[-2])
    probs = F.interpolate(probs[None], size=(feats.shape[-2] * r, feats.shape[-1] * r), mode="bilinear")[:, :, :h, :w]
    masks = F.interpolate(probs, size=out_size, mode="bilinear")[0] > p["mask_thr"]
    return scores, labels, masks


@pytest.mark.parametrize("nms_pre,nms_type", [(500, "matrix"), (40, "matrix"), (500, "mask"), (40, "mask")])
def test_bounded_inference_equals_materialised(nms_pre, nms_type):
    torch.manual_seed(0)
    grids, strides = [6, 4], [8, 16]
    cells = sum(g * g for g in grids)
    cate = torch.rand(cells, 5) ** 2
    kernels = torch.randn(cells, 8)
    feats = torch.randn(1, 8, 16, 20)
    p = dict(score_thr=0.1, mask_thr=0.5, update_thr=0.05, nms_pre=nms_pre, max_per_img=30,
             nms_type=nms_type, nms_kernel="gaussian", nms_sigma=2.0, nms_iou=0.3)
    s = cell_strides(grids, strides, "cpu")

    def cell_probs(cells):
        return F.conv2d(feats, kernels[cells][:, :, None, None]).squeeze(0).sigmoid()

    ours = inference_single_image(cate, cell_probs, s, (16, 20), (62, 80), (31, 40), chunk=7, **p)
    scores, labels, masks = _naive(cate, kernels, s, feats, (62, 80), (31, 40), p)
    assert len(ours) == len(scores) > 0
    if nms_type == "mask":  # greedy NMS removed masks: fewer than the cap
        assert len(ours) < 30
    assert torch.allclose(ours.scores, scores, atol=1e-6)
    assert ours.pred_classes.tolist() == labels.tolist()
    assert torch.equal(ours.pred_masks, masks)


def test_no_candidates_gives_empty_instances():
    s = cell_strides([4], [8], "cpu")
    out = inference_single_image(torch.zeros(16, 3), lambda cells: torch.rand(len(cells), 8, 8), s, (8, 8), (32, 32),
                                 (20, 30), score_thr=0.1, mask_thr=0.5, update_thr=0.05, nms_pre=10, max_per_img=5,
                                 nms_kernel="gaussian", nms_sigma=2.0)
    assert len(out) == 0 and out.pred_masks.shape == (0, 20, 30) and out.pred_boxes.tensor.shape == (0, 4)


@pytest.fixture(scope="module")
def model():
    cfg = get_cfg()
    cfg.merge_from_file("configs/SOLOv2/R50_3x.yaml")
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    # Narrow heads and coarse grids keep the test fast; the structure is the same.
    cfg.MODEL.SOLOV2.INSTANCE_CHANNELS = 64
    cfg.MODEL.SOLOV2.MASK_CHANNELS = 32
    cfg.MODEL.SOLOV2.NUM_MASKS = cfg.MODEL.SOLOV2.NUM_KERNELS = 32
    cfg.MODEL.SOLOV2.NUM_GRIDS = [12, 10, 8, 6, 4]
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    torch.manual_seed(0)
    return build_model(cfg)


def test_training_step_and_inference(model):
    image = torch.randint(0, 255, (3, 96, 128), dtype=torch.uint8)
    inst = _instances((96, 128), [[10, 10, 70, 80], [60, 20, 120, 60]], [1, 2])
    model.train()
    losses = model([{"image": image, "instances": inst}, {"image": image, "instances": inst[:0]}])
    assert set(losses) == {"loss_ins", "loss_cate"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.ins_head.kernel_pred.weight.grad.abs().sum() > 0

    # No instance at all: the mask loss is a zero that still backpropagates.
    losses = model([{"image": image, "instances": inst[:0]}])
    assert losses["loss_ins"].item() == 0.0 and torch.isfinite(losses["loss_cate"])

    model.eval()
    with torch.no_grad():
        (out,) = model([{"image": image, "height": 48, "width": 64}])
    inst = out["instances"]
    assert inst.image_size == (48, 64)
    assert inst.pred_masks.shape[1:] == (48, 64) and inst.pred_masks.dtype == torch.bool
    assert len(inst) <= 100 and inst.has("pred_boxes") and inst.has("scores") and inst.has("pred_classes")


def test_polygon_ground_truth_equals_bitmask():
    from detectron2.structures import PolygonMasks

    bit = _instances((256, 256), [[64, 64, 128, 128]], [7])
    poly = _instances((256, 256), [[64, 64, 128, 128]], [7])
    poly.gt_masks = PolygonMasks([[[64, 64, 128, 64, 128, 128, 64, 128]]])
    for a, b in zip(image_targets(bit, [(64, 64)] * 5, [4] * 5, 80, RANGES, GRIDS, 0.2),
                    image_targets(poly, [(64, 64)] * 5, [4] * 5, 80, RANGES, GRIDS, 0.2)):
        assert a.grid_order.tolist() == b.grid_order.tolist()
        assert torch.equal(a.cate_labels, b.cate_labels)


def test_masks_to_boxes_matches_detectron2():
    from adet.layers import masks_to_boxes

    masks = torch.zeros(3, 10, 12, dtype=torch.bool)
    masks[0, 2:5, 3:9] = True
    masks[1, 9, 0] = True
    assert torch.equal(masks_to_boxes(masks).tensor, BitMasks(masks).get_bounding_boxes().tensor)


def _dcn_model(config, type_dcn):
    cfg = get_cfg()
    cfg.merge_from_file(config)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.SOLOV2.INSTANCE_IN_CHANNELS = cfg.MODEL.SOLOV2.INSTANCE_CHANNELS = 32
    cfg.MODEL.SOLOV2.MASK_IN_CHANNELS = cfg.MODEL.SOLOV2.MASK_CHANNELS = 32
    cfg.MODEL.SOLOV2.NUM_MASKS = cfg.MODEL.SOLOV2.NUM_KERNELS = 32
    cfg.MODEL.SOLOV2.NUM_INSTANCE_CONVS = 2
    cfg.MODEL.SOLOV2.NUM_GRIDS = [12, 10, 8, 6, 4]
    cfg.MODEL.SOLOV2.USE_DCN_IN_INSTANCE = True
    cfg.MODEL.SOLOV2.TYPE_DCN = type_dcn
    torch.manual_seed(0)
    return build_model(cfg)


@pytest.mark.parametrize("config", ["configs/SOLOv2/R50_3x.yaml", "configs/SOLO/R50_3x.yaml"])
@pytest.mark.parametrize("type_dcn", ["DCN", "DCNv2"])
def test_dcn_in_instance_towers_builds_trains_and_infers(config, type_dcn):
    from adet.layers import DeformConv, DFConv2d, ModulatedDeformConv

    model = _dcn_model(config, type_dcn)
    towers = [m for name, m in model.ins_head.named_children() if name.endswith("_tower")]
    assert len(towers) == 2  # category + kernel (SOLOv2) or mask (SOLO)
    for tower in towers:
        convs = [m for m in tower if isinstance(m, (nn.Conv2d, DFConv2d))]
        # The last conv of each tower is deformable, the others regular.
        assert [isinstance(c, DFConv2d) for c in convs] == [False, True]
        conv_type = ModulatedDeformConv if type_dcn == "DCNv2" else DeformConv
        assert type(convs[-1].conv) is conv_type

    image = torch.randint(0, 255, (3, 96, 128), dtype=torch.uint8)
    inst = _instances((96, 128), [[10, 10, 70, 80], [60, 20, 120, 60]], [1, 2])
    model.train()
    losses = model([{"image": image, "instances": inst}])
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    for tower in towers:
        dcn = [m for m in tower if isinstance(m, DFConv2d)][0]
        assert dcn.conv.weight.grad.abs().sum() > 0
        assert dcn.offset.weight.grad is not None and torch.isfinite(dcn.offset.weight.grad).all()

    model.eval()
    with torch.no_grad():
        (out,) = model([{"image": image}])
    assert out["instances"].pred_masks.shape[1:] == (96, 128)


def test_unknown_dcn_type_raises():
    with pytest.raises(ValueError, match="TYPE_DCN"):
        _dcn_model("configs/SOLOv2/R50_3x.yaml", "DCNv3")

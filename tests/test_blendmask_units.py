"""BlendMask pieces on hand-made cases: blending, the blender's loss and masks, the basis
module's shapes, and the basis_sem targets."""
import math

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from detectron2.data import transforms as T
from detectron2.layers import ShapeSpec
from detectron2.structures import BitMasks, Boxes, Instances

from adet.data.blendmask_targets import basis_sem_target, thing_semantic_map
from adet.modeling.blendmask import Blender, ProtoNet, blend


def make_blender(resolution=4, attn_size=2):
    return Blender(resolution=resolution, attn_size=attn_size, top_interp="bilinear", pooler_scales=[1.0],
                   sampling_ratio=1, pooler_type="ROIAlignV2")


def test_blend_constant_attentions_weight_the_bases():
    # base 0 = 2, base 1 = -2; attention logits log(3) and 0 -> weights 3/4, 1/4 -> 1.0
    rois = torch.stack([torch.full((3, 3), 2.0), torch.full((3, 3), -2.0)])[None]
    attns = torch.tensor([math.log(3.0)] * 4 + [0.0] * 4)[None]  # K=2, A=2
    out = blend(rois, attns, attn_size=2)
    assert out.shape == (1, 9)
    torch.testing.assert_close(out, torch.ones(1, 9))


def test_blend_selects_base_per_region():
    # Attentions strongly favour base 0 on the left column, base 1 on the right: at
    # 2x2 the upsampling is the identity, so the mask is base 0 left, base 1 right.
    rois = torch.stack([torch.full((2, 2), 5.0), torch.full((2, 2), -5.0)])[None]
    left = torch.tensor([[50.0, -50.0], [50.0, -50.0]])
    attns = torch.stack([left, -left]).reshape(1, -1)
    out = blend(rois, attns, attn_size=2).view(2, 2)
    torch.testing.assert_close(out, torch.tensor([[5.0, -5.0], [5.0, -5.0]]))


def test_blender_predict_gives_probabilities_per_box():
    blender = make_blender()
    bases = [torch.stack([torch.full((8, 8), 2.0), torch.full((8, 8), -2.0)])[None]]
    det = Instances((8, 8))
    det.pred_boxes = Boxes(torch.tensor([[0.0, 0.0, 4.0, 4.0], [2.0, 2.0, 8.0, 8.0]]))
    det.top_feat = torch.tensor([[math.log(3.0)] * 4 + [0.0] * 4, [0.0] * 8])
    (out,) = blender.predict(bases, [det])
    assert out.pred_masks.shape == (2, 1, 4, 4)
    torch.testing.assert_close(out.pred_masks[0], torch.full((1, 4, 4), torch.sigmoid(torch.tensor(1.0)).item()))
    torch.testing.assert_close(out.pred_masks[1], torch.full((1, 4, 4), 0.5))


def test_blender_predict_without_detections():
    blender = make_blender()
    det = Instances((8, 8))
    det.pred_boxes = Boxes(torch.zeros(0, 4))
    det.top_feat = torch.zeros(0, 8)
    (out,) = blender.predict([torch.zeros(1, 2, 8, 8)], [det])
    assert out.pred_masks.shape == (0, 1, 4, 4)


def test_blender_loss_is_centerness_weighted_mean_bce():
    blender = make_blender()
    c = 1.5
    bases = [torch.full((1, 2, 8, 8), c)]  # both bases = c -> logits c everywhere
    gt = Instances((8, 8))
    gt.gt_boxes = Boxes(torch.tensor([[0.0, 0.0, 8.0, 8.0], [0.0, 0.0, 4.0, 8.0]]))
    full = torch.ones(8, 8, dtype=torch.bool)
    empty = torch.zeros(8, 8, dtype=torch.bool)
    gt.gt_masks = BitMasks(torch.stack([full, empty]))
    pos = Instances((0, 0))
    pos.top_feats = torch.zeros(3, 8)
    pos.gt_inds = torch.tensor([0, 1, 1])
    pos.gt_ctrs = torch.tensor([1.0, 0.5, 0.5])
    loss = blender.loss(bases, pos, [gt])["loss_mask"]
    bce_one = math.log1p(math.exp(-c))  # target 1
    bce_zero = math.log1p(math.exp(c))  # target 0
    expected = (1.0 * bce_one + 0.5 * bce_zero + 0.5 * bce_zero) / 2.0
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_blender_loss_without_positives_is_zero_with_gradient():
    blender = make_blender()
    bases = [torch.ones(1, 2, 8, 8, requires_grad=True)]
    pos = Instances((0, 0))
    pos.top_feats = torch.zeros(0, 8, requires_grad=True)
    loss = blender.loss(bases, pos, [])["loss_mask"]
    assert loss.item() == 0 and loss.requires_grad


@pytest.mark.parametrize("loss_on", [False, True])
def test_protonet_shapes_and_loss(loss_on):
    shapes = {f"p{i}": ShapeSpec(channels=16, stride=2 ** i) for i in (3, 4, 5)}
    net = ProtoNet(in_features=["p3", "p4", "p5"], in_channels={k: 16 for k in shapes}, num_bases=4,
                   convs_dim=8, num_convs=2, norm="BN", loss_on=loss_on, num_classes=3, common_stride=8)
    assert hasattr(net, "seg_head") == loss_on
    feats = {"p3": torch.randn(2, 16, 8, 12), "p4": torch.randn(2, 16, 4, 6), "p5": torch.randn(2, 16, 2, 3)}
    sem = torch.randint(0, 4, (2, 64, 96))
    out, losses = net(feats, sem if loss_on else None)
    assert out["bases"][0].shape == (2, 4, 16, 24)  # stride 4
    assert sorted(losses) == (["loss_basis_sem"] if loss_on else [])
    net.eval()
    assert net(feats)[1] == {}


def test_thing_semantic_map_order_crowd_and_formats():
    square = [[1.0, 1.0, 5.0, 1.0, 5.0, 5.0, 1.0, 5.0]]  # covers pixels 1..4
    crowd = np.zeros((8, 10), dtype=np.uint8, order="F")
    crowd[3:7, 3:9] = 1
    annotations = [
        {"category_id": 0, "segmentation": square, "iscrowd": 0},
        {"category_id": 4, "segmentation": mask_util.encode(crowd), "iscrowd": 1},  # later: on top
        {"category_id": 7, "bbox": [0, 0, 1, 1]},  # no segmentation: skipped
    ]
    sem = thing_semantic_map(annotations, 8, 10)
    expected = np.zeros((8, 10), dtype=np.uint8)
    expected[1:5, 1:5] = 1
    expected[3:7, 3:9] = 5
    np.testing.assert_array_equal(sem, expected)
    # uncompressed RLE, as in COCO crowd annotations
    raw = {"size": [8, 10], "counts": [30, 4, 46]}  # column-major: pixels 30..33 = column 3, rows 6,7 / column 4, rows 0,1
    m = thing_semantic_map([{"category_id": 1, "segmentation": raw}], 8, 10)
    assert (m == 2).sum() == 4


def test_basis_sem_target_follows_transforms_with_nearest():
    annotations = [{"category_id": 2, "segmentation": [[0.0, 0.0, 2.0, 0.0, 2.0, 2.0, 0.0, 2.0]]}]
    tfms = T.TransformList([T.ResizeTransform(4, 4, 8, 8), T.HFlipTransform(8)])
    target = basis_sem_target(annotations, 4, 4, tfms)
    assert target.dtype == torch.int64 and target.shape == (8, 8)
    expected = torch.zeros(8, 8, dtype=torch.int64)
    expected[0:4, 4:8] = 3  # top-left 2x2 -> 4x4 after resize, then mirrored
    assert torch.equal(target, expected)

"""Matrix NMS on hand-made masks."""
import math

import pytest
import torch

from adet.layers import matrix_nms


def _square(x0, y0, size=4, hw=16):
    m = torch.zeros(hw, hw, dtype=torch.bool)
    m[y0:y0 + size, x0:x0 + size] = True
    return m


def _run(masks, labels, scores, **kw):
    masks = torch.stack(masks)
    return matrix_nms(torch.tensor(labels), masks, masks.sum((1, 2)).float(), torch.tensor(scores), **kw)


def test_identical_masks_decay_the_lower_score_gaussian():
    out = _run([_square(0, 0), _square(0, 0)], [3, 3], [0.9, 0.8], sigma=2.0, kernel="gaussian")
    assert out[0].item() == pytest.approx(0.9)
    assert out[1].item() == pytest.approx(0.8 * math.exp(-2.0))


def test_identical_masks_linear_kernel_removes_the_lower():
    out = _run([_square(0, 0), _square(0, 0)], [3, 3], [0.9, 0.8], kernel="linear")
    assert out.tolist() == pytest.approx([0.9, 0.0])


def test_partial_overlap_follows_the_formula():
    # 4x4 squares shifted by 2 px: intersection 8, union 24 -> IoU 1/3.
    iou = 1 / 3
    out = _run([_square(0, 0), _square(2, 0)], [1, 1], [0.9, 0.5], sigma=0.5)
    assert out[1].item() == pytest.approx(0.5 * math.exp(-0.5 * iou ** 2))
    out = _run([_square(0, 0), _square(2, 0)], [1, 1], [0.9, 0.5], kernel="linear")
    assert out[1].item() == pytest.approx(0.5 * (1 - iou))


def test_disjoint_masks_keep_scores():
    out = _run([_square(0, 0), _square(8, 8)], [0, 0], [0.9, 0.8])
    assert out.tolist() == pytest.approx([0.9, 0.8])


def test_class_aware():
    out = _run([_square(0, 0), _square(0, 0)], [0, 1], [0.9, 0.8])
    assert out.tolist() == pytest.approx([0.9, 0.8])


def test_compensation_by_the_suppressor_own_decay():
    # C duplicates B, which duplicates A: C's decay is min(f(1)/f(0) via A, f(1)/f(1) via B).
    out = _run([_square(0, 0)] * 3, [2, 2, 2], [0.9, 0.8, 0.7], sigma=2.0)
    assert out.tolist() == pytest.approx([0.9, 0.8 * math.exp(-2.0), 0.7 * math.exp(-2.0)])


def test_empty_input():
    out = matrix_nms(torch.zeros(0, dtype=torch.int64), torch.zeros(0, 4, 4, dtype=torch.bool),
                     torch.zeros(0), torch.zeros(0))
    assert out.shape == (0,)


def test_unknown_kernel_raises():
    with pytest.raises(ValueError, match="kernel"):
        _run([_square(0, 0)], [0], [0.5], kernel="box")

"""Greedy mask NMS (adet.layers.mask_nms) on hand-made masks and against a direct,
sequential implementation of its definition."""
import pytest
import torch

from adet.layers import mask_iou_matrix, mask_nms


def _square(x0, y0, size=4, hw=16):
    m = torch.zeros(hw, hw, dtype=torch.bool)
    m[y0:y0 + size, x0:x0 + size] = True
    return m


def _nms(masks, scores, labels, thr=0.5):
    return mask_nms(torch.stack(masks), torch.tensor(scores), torch.tensor(labels), thr).tolist()


def _sequential(masks, scores, labels, thr):
    """The textbook loop: visit by decreasing score, keep a mask unless a kept one of its
    class overlaps it with IoU > thr."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    kept = []
    for i in order:
        a = masks[i]
        if all(labels[j] != labels[i] or (a & masks[j]).sum() / max((a | masks[j]).sum(), 1) <= thr
               for j in kept):
            kept.append(i)
    return kept


def test_iou_matrix_hand_made():
    # 4x4 squares shifted by 2 px: intersection 8, union 24; an empty mask has IoU 0.
    iou = mask_iou_matrix(torch.stack([_square(0, 0), _square(2, 0), torch.zeros(16, 16, dtype=torch.bool)]))
    assert iou[0, 1].item() == pytest.approx(1 / 3) and iou[1, 0].item() == pytest.approx(1 / 3)
    assert iou[0, 0].item() == 1.0 and iou[2].tolist() == [0.0, 0.0, 0.0]


def test_duplicate_removed_lower_score_only():
    # Input order is not score order: the 0.9 mask (index 1) wins.
    assert _nms([_square(0, 0), _square(0, 0), _square(8, 8)], [0.8, 0.9, 0.7], [1, 1, 1]) == [1, 2]


def test_threshold_is_strict():
    # IoU 1/3: kept at threshold 1/3 (needs IoU > thr to suppress), removed just below.
    masks, scores, labels = [_square(0, 0), _square(2, 0)], [0.9, 0.5], [0, 0]
    assert _nms(masks, scores, labels, thr=1 / 3 + 1e-6) == [0, 1]
    assert _nms(masks, scores, labels, thr=0.3) == [0]


def test_class_aware():
    assert _nms([_square(0, 0), _square(0, 0)], [0.9, 0.8], [0, 1]) == [0, 1]


def test_suppressed_mask_does_not_suppress():
    # B overlaps A (IoU 1/3 > 0.3) and is removed; C overlaps only B, so C survives.
    # (A one-shot "any higher-scored mask overlaps" rule would wrongly drop C.)
    masks = [_square(0, 0), _square(2, 0), _square(4, 0)]
    assert _nms(masks, [0.9, 0.8, 0.7], [0, 0, 0], thr=0.3) == [0, 2]


def test_matches_sequential_definition_on_random_masks():
    torch.manual_seed(0)
    for trial in range(20):
        n = 40
        x0, y0 = torch.randint(0, 12, (2, n))
        sizes = torch.randint(2, 8, (n,))
        masks = [_square(int(x), int(y), int(s), hw=20) for x, y, s in zip(x0, y0, sizes)]
        scores = torch.rand(n).tolist()
        labels = torch.randint(0, 3, (n,)).tolist()
        ours = mask_nms(torch.stack(masks), torch.tensor(scores), torch.tensor(labels), 0.3).tolist()
        assert ours == _sequential(masks, scores, labels, 0.3), trial


def test_empty_input():
    keep = mask_nms(torch.zeros(0, 4, 4, dtype=torch.bool), torch.zeros(0), torch.zeros(0, dtype=torch.int64))
    assert keep.dtype == torch.int64 and keep.shape == (0,)

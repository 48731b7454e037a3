"""Small operations on binary masks shared by several methods."""
import torch
from detectron2.structures import Boxes


def mass_centers(masks: torch.Tensor):
    """Centre of mass (x, y), in pixels, of each (H, W) mask of an (N, H, W) tensor
    (FCOS center sampling on masks, SOLO centre regions)."""
    h, w = masks.shape[-2:]
    xs = torch.arange(0, w, dtype=torch.float32, device=masks.device)
    ys = torch.arange(0, h, dtype=torch.float32, device=masks.device)
    m00 = masks.sum(dim=-1).sum(dim=-1).clamp(min=1e-6)
    m10 = (masks * xs).sum(dim=-1).sum(dim=-1)
    m01 = (masks * ys[:, None]).sum(dim=-1).sum(dim=-1)
    return m10 / m00, m01 / m00


def masks_to_boxes(masks: torch.Tensor) -> Boxes:
    """XYXY boxes enclosing (N, H, W) bool masks (x1, y1 exclusive, as Detectron2's
    BitMasks.get_bounding_boxes, which loops over the masks with a device sync each);
    empty masks get zero boxes. Mask-only methods (SOLO, SparseInst) box their masks with it."""
    n, h, w = masks.shape
    boxes = torch.zeros(n, 4, dtype=torch.float32, device=masks.device)
    if n == 0:
        return Boxes(boxes)
    x_any, y_any = masks.any(dim=1), masks.any(dim=2)
    xs = torch.arange(w, device=masks.device)
    ys = torch.arange(h, device=masks.device)
    nonempty = x_any.any(dim=1)
    boxes[:, 0] = torch.where(x_any, xs, w).min(dim=1).values.float()
    boxes[:, 1] = torch.where(y_any, ys, h).min(dim=1).values.float()
    boxes[:, 2] = torch.where(x_any, xs, -1).max(dim=1).values.float() + 1
    boxes[:, 3] = torch.where(y_any, ys, -1).max(dim=1).values.float() + 1
    boxes[~nonempty] = 0
    return Boxes(boxes)

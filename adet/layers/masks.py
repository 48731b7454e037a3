"""Small operations on binary masks shared by several methods."""
import torch


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

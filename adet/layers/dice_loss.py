"""Dice loss between soft masks and binary targets (V-Net's form, squared denominators)."""
import torch


def dice_loss(inputs: torch.Tensor, targets: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-instance ``1 - 2 |x t| / (|x|^2 + |t|^2 + eps)``.

    ``inputs`` (probabilities) and ``targets`` have the same shape, the first dimension
    indexing instances; every other dimension is summed over. Returns a (N,) tensor.
    """
    n = inputs.shape[0]
    inputs = inputs.reshape(n, -1)
    targets = targets.reshape(n, -1)
    intersection = (inputs * targets).sum(dim=1)
    union = (inputs ** 2.0).sum(dim=1) + (targets ** 2.0).sum(dim=1) + eps
    return 1.0 - 2 * intersection / union

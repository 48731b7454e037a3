"""SOLO (v1) and Decoupled SOLO instance heads (Wang et al., "SOLO: Segmenting Objects by
Locations", ECCV 2020): the shared category branch plus a mask branch that predicts the masks
themselves, at twice the resolution of each (rescaled) level.

- :class:`SOLOInsHead`: one mask channel per grid cell, S^2 channels per level; cell
  (i, j) (row i, column j) owns channel i * S + j.
- :class:`DecoupledSOLOInsHead`: S "X" channels and S "Y" channels per level; the mask of
  cell (i, j) is sigmoid(x_j) * sigmoid(y_i), so 2S channels replace S^2.

Both give mask probabilities of chosen cells with :meth:`level_mask_probs` (training and
inference share it).
"""
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec

from .heads import SOLOInstanceHead, check_in_channels, coord_features, instance_head_config


def _upsample2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class _DirectMaskHead(SOLOInstanceHead):
    """What both SOLO v1 heads share: config, forward over levels (category on the grid,
    mask part at full resolution), and the stride of their masks (half the level's)."""

    @classmethod
    def from_config(cls, cfg, input_shapes: List[ShapeSpec]):
        check_in_channels(cfg, input_shapes)
        return instance_head_config(cfg)

    def forward(self, features: List[torch.Tensor]):
        cate_preds, mask_preds = [], []
        for level, (feature, grid) in enumerate(zip(features, self.num_grids)):
            cate_preds.append(self.category_logits(self.to_grid(feature, grid)))
            mask_preds.append(self.level_masks(feature, level))
        return cate_preds, mask_preds

    @staticmethod
    def mask_strides(instance_strides: Sequence[int]) -> List[int]:
        """The mask branch upsamples each level 2x."""
        return [s // 2 for s in instance_strides]


class SOLOInsHead(_DirectMaskHead):
    """SOLO: category branch + mask branch (CoordConv, tower, 2x upsample, 1x1 conv to S^2
    channels per level). Output per level: category logits (N, C, S, S) and mask logits
    (N, S^2, 2h, 2w)."""

    @configurable
    def __init__(self, *, in_channels: int, channels: int, num_classes: int, num_grids: List[int],
                 num_convs: int = 7, norm: str = "GN", use_coord_conv: bool = True, prior_prob: float = 0.01,
                 dcn_type=None):
        super().__init__(in_channels=in_channels, channels=channels, num_classes=num_classes, num_grids=num_grids,
                         num_convs=num_convs, norm=norm, use_coord_conv=use_coord_conv, prior_prob=prior_prob,
                         dcn_type=dcn_type, mask_towers={"mask": 2 if use_coord_conv else 0})
        self.mask_pred = nn.ModuleList(nn.Conv2d(channels, s * s, 1) for s in self.num_grids)
        self.init_weights()

    def level_masks(self, feature: torch.Tensor, level: int) -> torch.Tensor:
        if self.use_coord_conv:
            feature = torch.cat([feature, coord_features(feature)], 1)
        return self.mask_pred[level](_upsample2(self.mask_tower(feature)))

    def level_mask_probs(self, mask_preds, image: int, level: int, cells: torch.Tensor) -> torch.Tensor:
        """(n, H, W) mask probabilities of the flat ``cells`` of one image on one level."""
        return mask_preds[level][image, cells].sigmoid()

    @staticmethod
    def mask_shapes(mask_preds) -> List[Tuple[int, int]]:
        return [tuple(p.shape[-2:]) for p in mask_preds]


class DecoupledSOLOInsHead(_DirectMaskHead):
    """Decoupled SOLO: category branch + X and Y mask branches, each with its own tower fed
    one CoordConv channel (x for X, y for Y), 2x upsample, 3x3 conv to S channels. Output
    per level: category logits (N, C, S, S) and a pair (X, Y) of (N, S, 2h, 2w) logits."""

    @configurable
    def __init__(self, *, in_channels: int, channels: int, num_classes: int, num_grids: List[int],
                 num_convs: int = 7, norm: str = "GN", use_coord_conv: bool = True, prior_prob: float = 0.01,
                 dcn_type=None):
        extra = 1 if use_coord_conv else 0
        super().__init__(in_channels=in_channels, channels=channels, num_classes=num_classes, num_grids=num_grids,
                         num_convs=num_convs, norm=norm, use_coord_conv=use_coord_conv, prior_prob=prior_prob,
                         dcn_type=dcn_type, mask_towers={"mask_x": extra, "mask_y": extra})
        self.mask_x_pred = nn.ModuleList(nn.Conv2d(channels, s, 3, 1, 1) for s in self.num_grids)
        self.mask_y_pred = nn.ModuleList(nn.Conv2d(channels, s, 3, 1, 1) for s in self.num_grids)
        self.init_weights()

    def level_masks(self, feature: torch.Tensor, level: int) -> Tuple[torch.Tensor, torch.Tensor]:
        x_feature = y_feature = feature
        if self.use_coord_conv:
            coords = coord_features(feature)
            x_feature = torch.cat([feature, coords[:, :1]], 1)
            y_feature = torch.cat([feature, coords[:, 1:]], 1)
        x = self.mask_x_pred[level](_upsample2(self.mask_x_tower(x_feature)))
        y = self.mask_y_pred[level](_upsample2(self.mask_y_tower(y_feature)))
        return x, y

    def level_mask_probs(self, mask_preds, image: int, level: int, cells: torch.Tensor) -> torch.Tensor:
        """(n, H, W) probabilities of the flat ``cells`` (row * S + column): the product of
        the column's X and the row's Y probabilities."""
        grid = self.num_grids[level]
        x, y = mask_preds[level]
        return x[image, cells % grid].sigmoid() * y[image, cells // grid].sigmoid()

    @staticmethod
    def mask_shapes(mask_preds) -> List[Tuple[int, int]]:
        return [tuple(x.shape[-2:]) for x, _ in mask_preds]

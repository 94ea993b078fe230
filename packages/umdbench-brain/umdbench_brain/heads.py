"""Heads on volume encoders: a UNet-style segmentation decoder with skips, and the reconstruction
decoder of masked volume modelling."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SegDecoder", "ReconDecoder"]


class SegDecoder(nn.Module):
    """From the deepest map up: upsample (trilinear, to the skip's size, so any stride pattern
    fits), concatenate the skip, one residual block. A residual stem on the raw input gives the
    full-resolution skip (UNETR's ``encoder1``, which lives in the decoder there too); a 1x1 conv
    gives one logit per region."""

    def __init__(self, in_channels: int, feature_channels: tuple[int, ...], num_out: int, norm: str = "instance"):
        super().__init__()
        from monai.networks.blocks.dynunet_block import UnetOutBlock, UnetResBlock

        stem = feature_channels[0]
        self.stem = UnetResBlock(3, in_channels, stem, kernel_size=3, stride=1, norm_name=norm)
        ups = []
        width = feature_channels[-1]
        for skip in reversed(feature_channels[:-1]):
            ups.append(UnetResBlock(3, width + skip, skip, kernel_size=3, stride=1, norm_name=norm))
            width = skip
        self.ups = nn.ModuleList(ups)
        self.final = UnetResBlock(3, width + stem, stem, kernel_size=3, stride=1, norm_name=norm)
        self.out = UnetOutBlock(3, stem, num_out)

    def forward(self, features: list[torch.Tensor], volume: torch.Tensor) -> torch.Tensor:
        x = features[-1]
        for block, skip in zip(self.ups, reversed(features[:-1])):
            x = F.interpolate(x, size=skip.shape[2:], mode="trilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        x = F.interpolate(x, size=volume.shape[2:], mode="trilinear", align_corners=False)
        return self.out(self.final(torch.cat([x, self.stem(volume)], dim=1)))


class ReconDecoder(nn.Module):
    """Reads the deepest map only (no skips, as BrainMVP's pre-training decoder): stride-2
    transposed convolutions halving the width (>= 8) back to full resolution, then a 1x1 conv to
    ``out_channels``."""

    def __init__(self, in_channels: int, stride: int, out_channels: int):
        super().__init__()
        steps = int(round(math.log2(stride)))
        layers, width = [], in_channels
        for _ in range(steps):
            nxt = max(8, width // 2)
            layers += [nn.ConvTranspose3d(width, nxt, kernel_size=2, stride=2), nn.InstanceNorm3d(nxt), nn.GELU()]
            width = nxt
        layers.append(nn.Conv3d(width, out_channels, kernel_size=1))
        self.net = nn.Sequential(*layers)

    def forward(self, deepest: torch.Tensor) -> torch.Tensor:
        return self.net(deepest)

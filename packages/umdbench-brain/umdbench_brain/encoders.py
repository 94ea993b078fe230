"""3-D encoders (registered kind ``encoder``), random init, built from MONAI blocks.

Contract of this package's volume encoders (beyond :class:`umdbench.api.Encoder`):

* config keys ``modalities`` (the input channel order; ``in_channels = len(modalities)``) and
  ``roi_size`` (training crop and sliding-window edge, in voxels);
* ``forward(volume [B,M,D,H,W]) -> list of feature maps``, shallow to deep;
* ``in_channels``, ``feature_channels`` (channels per returned map), ``feature_strides`` and
  ``hidden_size`` (= the deepest map's channels, what a pooled classification head reads).
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from umdbench.api import Encoder

__all__ = ["VolumeEncoder", "ResUNetEncoder", "SwinViTEncoder", "BRATS_MODALITIES"]

BRATS_MODALITIES = ["t1", "t1c", "t2", "flair"]


class VolumeEncoder(Encoder):
    """Common base: reads the channel layout and crop size from the config."""

    feature_channels: tuple[int, ...] = ()
    feature_strides: tuple[int, ...] = ()

    def __init__(self, cfg: dict):
        super().__init__()
        self.cfg = dict(cfg)
        self.modalities = list(cfg["modalities"])
        self.in_channels = len(self.modalities)
        self.roi_size = int(cfg["roi_size"])
        if self.roi_size % max(self.stride_multiple(cfg), 1):
            raise ValueError(f"encoder {self.name!r}: roi_size={self.roi_size} must be a multiple of "
                             f"{self.stride_multiple(cfg)} for this configuration.")

    @classmethod
    def stride_multiple(cls, cfg: dict) -> int:
        return 1


class ResUNetEncoder(VolumeEncoder):
    """A residual 3-D CNN encoder (the UNet variant of notes/brainmvp-spec.md 1.3 in shape: a
    full-resolution stage then stride-2 stages with ``blocks`` residual blocks each), built from
    MONAI's ``UnetResBlock`` (conv-norm-act x2 with a residual path, instance norm)."""

    name = "resunet3d"
    presets: ClassVar[dict[str, dict]] = {
        "tiny": {"modalities": BRATS_MODALITIES, "roi_size": 32, "channels": [8, 16, 32, 64], "blocks": [1, 1, 1, 1],
                 "norm": "instance"},
        # the released UNet variant's widths and depths at the released 96^3 crop
        "paper": {"modalities": BRATS_MODALITIES, "roi_size": 96, "channels": [32, 64, 128, 256],
                  "blocks": [1, 2, 2, 4], "norm": "instance"},
    }

    @classmethod
    def stride_multiple(cls, cfg: dict) -> int:
        return 2 ** (len(cfg["channels"]) - 1)

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        from monai.networks.blocks.dynunet_block import UnetResBlock

        channels, blocks = list(cfg["channels"]), list(cfg["blocks"])
        if len(channels) != len(blocks) or not channels:
            raise ValueError(f"resunet3d: channels {channels} and blocks {blocks} must be non-empty and equally long")
        norm = cfg.get("norm", "instance")
        stages = []
        prev = self.in_channels
        for i, (ch, n) in enumerate(zip(channels, blocks)):
            layers = [UnetResBlock(3, prev, ch, kernel_size=3, stride=1 if i == 0 else 2, norm_name=norm)]
            layers += [UnetResBlock(3, ch, ch, kernel_size=3, stride=1, norm_name=norm) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layers))
            prev = ch
        self.stages = nn.ModuleList(stages)
        self.feature_channels = tuple(channels)
        self.feature_strides = tuple(2 ** i for i in range(len(channels)))
        self.hidden_size = channels[-1]

    def forward(self, volume: torch.Tensor) -> list[torch.Tensor]:
        features, x = [], volume
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features

    def compile_targets(self) -> list[nn.Module]:
        return list(self.stages)


class SwinViTEncoder(VolumeEncoder):
    """MONAI's Swin transformer (the SwinUNETR encoder), returning its five hidden states
    (strides 2..32, channels feature_size x 1, 2, 4, 8, 16). The input edge must be a multiple of 32."""

    name = "swinvit3d"
    presets: ClassVar[dict[str, dict]] = {
        "tiny": {"modalities": BRATS_MODALITIES, "roi_size": 32, "feature_size": 12, "depths": [1, 1, 1, 1],
                 "num_heads": [1, 2, 4, 8], "window_size": 4},
        # SwinUNETR's BraTS configuration (feature size 48, depths 2, heads 3/6/12/24, window 7) at 96^3
        "paper": {"modalities": BRATS_MODALITIES, "roi_size": 96, "feature_size": 48, "depths": [2, 2, 2, 2],
                  "num_heads": [3, 6, 12, 24], "window_size": 7},
    }

    @classmethod
    def stride_multiple(cls, cfg: dict) -> int:
        return 32

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        from monai.networks.nets.swin_unetr import SwinTransformer

        fs = int(cfg["feature_size"])
        win = int(cfg["window_size"])
        self.swin = SwinTransformer(in_chans=self.in_channels, embed_dim=fs, window_size=(win,) * 3,
                                    patch_size=(2, 2, 2), depths=list(cfg["depths"]), num_heads=list(cfg["num_heads"]),
                                    spatial_dims=3)
        self.feature_channels = tuple(fs * 2 ** i for i in range(5))
        self.feature_strides = (2, 4, 8, 16, 32)
        self.hidden_size = self.feature_channels[-1]

    def forward(self, volume: torch.Tensor) -> list[torch.Tensor]:
        return list(self.swin(volume, normalize=True))

    def compile_targets(self) -> list[nn.Module]:
        return [self.swin]

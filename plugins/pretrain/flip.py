"""FLIP baseline: CLIP with a fraction of the image patches dropped before the ViT."""

from __future__ import annotations

import copy

from .clip import CLIPPretrain


class FLIPPretrain(CLIPPretrain):
    name = "flip"
    version = "1"
    presets = {k: {**copy.deepcopy(v), "image_mask_ratio": 0.5} for k, v in CLIPPretrain.presets.items()}

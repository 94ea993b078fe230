"""MAE baseline: masked image modelling of the vision tower only.

75 % of the patches are dropped before the ViT (only visible patches are encoded); a light
decoder reconstructs per-patch-normalised pixels of the dropped patches. The text tower and the
fusion module are not trained here (they keep their initialisation for the tuning stages).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from umdbench.api import Option, PretrainStrategy
from umdbench.kit.recipes import PRETRAIN_TRAIN_PAPER, PRETRAIN_TRAIN_SMALL, PRETRAIN_TRAIN_TINY
from umdbench.models.heads import MIMDecoder
from umdbench.models.objectives import mim_loss


class MAEPretrain(PretrainStrategy):
    name = "mae"
    version = "1"
    task_types = ("pretrain",)
    encoders = ("coattn",)  # the ViT tower of the co-attention encoder
    option_schema = {
        "image_mask_ratio": Option(float, 0.75, "share of image patches dropped before the ViT"),
        "norm_pix_loss": Option(bool, True, "MIM targets are per-patch normalised pixels"),
        "decoder": Option(dict, {"dim": 384, "depth": 4, "heads": 6}, "MIM decoder geometry"),
    }
    presets = {
        "tiny": {
            "image_mask_ratio": 0.75,
            "norm_pix_loss": True,
            "decoder": {"dim": 64, "depth": 1, "heads": 2},
            "train": copy.deepcopy(PRETRAIN_TRAIN_TINY),
        },
        "small": {
            "image_mask_ratio": 0.75,
            "norm_pix_loss": True,
            "decoder": {"dim": 128, "depth": 2, "heads": 4},
            "train": copy.deepcopy(PRETRAIN_TRAIN_SMALL),
        },
        "paper": {
            "image_mask_ratio": 0.75,
            "norm_pix_loss": True,
            "decoder": {"dim": 384, "depth": 4, "heads": 6},
            "train": copy.deepcopy(PRETRAIN_TRAIN_PAPER),
        },
    }

    def __init__(self, encoder, cfg: dict):
        super().__init__(encoder, cfg)
        d = cfg.get("decoder", {})
        self.mask_ratio = float(cfg.get("image_mask_ratio", 0.75))
        self.norm_pix_loss = bool(cfg.get("norm_pix_loss", True))
        self.mim_decoder = MIMDecoder(
            encoder.vision_width,
            int(d.get("dim", 384)),
            int(d.get("depth", 4)),
            int(d.get("heads", 6)),
            encoder.patch_size,
            tuple(encoder.vision.patch_embed.grid_size),
        )

    def compile_targets(self) -> list[nn.Module]:
        return super().compile_targets() + list(self.mim_decoder.blocks)

    def forward(self, batch: dict[str, torch.Tensor], mask_noise: torch.Tensor | None = None) -> dict:
        image = batch["image"]
        feats, mask, ids_restore = self.encoder.encode_image(image, self.mask_ratio, mask_noise)
        pred = self.mim_decoder(feats, ids_restore)
        loss = mim_loss(pred, self.encoder.patchify(image), mask, self.norm_pix_loss)
        return {"loss_mim": loss, "mim": loss.detach()}

"""CLIP baseline: symmetric InfoNCE between the uni-modal [CLS] features of the two towers.

No fusion pass (``fuse=False``); small linear projections map each tower's first token to a shared
embedding; the inverse temperature is learned in log space (init 1/0.07, clamped at 100).
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from umdbench.api import PretrainStrategy
from umdbench.models.heads import projection
from umdbench.models.objectives import clip_loss
from umdbench.kit.recipes import PRETRAIN_TRAIN_PAPER, PRETRAIN_TRAIN_TINY


class CLIPPretrain(PretrainStrategy):
    name = "clip"
    version = "1"
    presets = {
        "tiny": {"embed_dim": 64, "image_mask_ratio": 0.0, "init_temperature": 0.07, "max_logit_scale": 100.0,
                 "train": copy.deepcopy(PRETRAIN_TRAIN_TINY)},
        "paper": {"embed_dim": 512, "image_mask_ratio": 0.0, "init_temperature": 0.07, "max_logit_scale": 100.0,
                  "train": copy.deepcopy(PRETRAIN_TRAIN_PAPER)},
    }

    def __init__(self, encoder, cfg: dict):
        super().__init__(encoder, cfg)
        dim = int(cfg.get("embed_dim", 512))
        self.mask_ratio = float(cfg.get("image_mask_ratio", 0.0))
        self.image_proj = projection(encoder.vision_width, dim)
        self.text_proj = projection(encoder.text_width, dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / float(cfg.get("init_temperature", 0.07)))))
        self.max_log_scale = math.log(float(cfg.get("max_logit_scale", 100.0)))

    def embed(self, batch: dict[str, torch.Tensor], mask_noise: torch.Tensor | None = None):
        feats, _, _ = self.encoder.encode_image(batch["image"], self.mask_ratio, mask_noise)
        text = self.encoder.encode_text(batch["text_ids"], batch["text_mask"])
        return self.image_proj(feats[:, 0]), self.text_proj(text[:, 0])

    def forward(self, batch: dict[str, torch.Tensor], mask_noise: torch.Tensor | None = None) -> dict:
        img, txt = self.embed(batch, mask_noise)
        scale = self.logit_scale.clamp(0.0, self.max_log_scale)
        loss, acc = clip_loss(img, txt, scale)
        return {"loss_clip": loss, "clip": loss.detach(), "clip_acc": acc, "logit_scale": scale.detach().exp()}

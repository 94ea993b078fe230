"""CLIP baseline: symmetric InfoNCE between the uni-modal [CLS] features of the two towers.

No fusion pass (``fuse=False``); small linear projections map each tower's first token to a shared
embedding; the inverse temperature is learned in log space (init 1/0.07). As in OpenCLIP, the learned
log scale is clamped to [0, ln max_logit_scale] after each optimiser step, not in the forward pass
(a value clamped there gets no gradient and could never come back below the bound).

Under data-parallel training (torchrun) the embeddings of every rank are gathered, with gradients,
before the loss (``global_negatives``): each loss sees the whole global batch as negatives, so the
loss and its gradients are those of one process on the global batch, whatever the process count.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from umdbench.api import Option, PretrainStrategy
from umdbench.kit import draws
from umdbench.kit.recipes import PRETRAIN_TRAIN_PAPER, PRETRAIN_TRAIN_SMALL, PRETRAIN_TRAIN_TINY
from umdbench.models.heads import projection
from umdbench.models.objectives import clip_loss


class CLIPPretrain(PretrainStrategy):
    name = "clip"
    version = "1"
    task_types = ("pretrain",)
    encoders = ("coattn",)  # the two towers of the co-attention encoder
    option_schema = {
        "embed_dim": Option(int, 512, "width of the shared embedding"),
        "image_mask_ratio": Option(float, 0.0, "share of image patches dropped (FLIP: 0.5)"),
        "init_temperature": Option(float, 0.07, "initial softmax temperature"),
        "max_logit_scale": Option(float, 100.0, "bound of the learned inverse temperature"),
        "global_negatives": Option(bool, True, "in-batch negatives over the global batch under torchrun"),
    }
    presets = {
        "tiny": {
            "embed_dim": 64,
            "image_mask_ratio": 0.0,
            "init_temperature": 0.07,
            "max_logit_scale": 100.0,
            "global_negatives": True,
            "train": copy.deepcopy(PRETRAIN_TRAIN_TINY),
        },
        "small": {
            "embed_dim": 256,
            "image_mask_ratio": 0.0,
            "init_temperature": 0.07,
            "max_logit_scale": 100.0,
            "global_negatives": True,
            "train": copy.deepcopy(PRETRAIN_TRAIN_SMALL),
        },
        "paper": {
            "embed_dim": 512,
            "image_mask_ratio": 0.0,
            "init_temperature": 0.07,
            "max_logit_scale": 100.0,
            "global_negatives": True,
            "train": copy.deepcopy(PRETRAIN_TRAIN_PAPER),
        },
    }

    @classmethod
    def deviations(cls, cfg: dict) -> list[str]:
        out = []
        if not cfg.get("global_negatives", True):
            out.append(
                "global_negatives=false: under torchrun each rank's InfoNCE sees only its own slice of the "
                "batch as negatives (batch / N), so the loss depends on the process count"
            )
        return out

    @classmethod
    def batch_coupled_terms(cls, cfg: dict) -> list[str]:
        return ["InfoNCE over the batch's negatives"]

    def __init__(self, encoder, cfg: dict):
        super().__init__(encoder, cfg)
        dim = int(cfg.get("embed_dim", 512))
        self.mask_ratio = float(cfg.get("image_mask_ratio", 0.0))
        self.global_negatives = bool(cfg.get("global_negatives", True))
        self.image_proj = projection(encoder.vision_width, dim)
        self.text_proj = projection(encoder.text_width, dim)
        self.max_log_scale = math.log(float(cfg.get("max_logit_scale", 100.0)))
        init = min(max(math.log(1.0 / float(cfg.get("init_temperature", 0.07))), 0.0), self.max_log_scale)
        self.logit_scale = nn.Parameter(torch.tensor(init))

    def embed(self, batch: dict[str, torch.Tensor], mask_noise: torch.Tensor | None = None):
        feats, _, _ = self.encoder.encode_image(batch["image"], self.mask_ratio, mask_noise)
        text = self.encoder.encode_text(batch["text_ids"], batch["text_mask"])
        return self.image_proj(feats[:, 0]), self.text_proj(text[:, 0])

    def forward(self, batch: dict[str, torch.Tensor], mask_noise: torch.Tensor | None = None) -> dict:
        img, txt = self.embed(batch, mask_noise)
        if self.global_negatives and self.training:
            # every rank sees the global batch: same loss on each rank, and DDP's gradient average
            # of (sum-reduced) feature gradients equals the one-process gradient
            img, txt = draws.gather(img), draws.gather(txt)
        loss, acc = clip_loss(img, txt, self.logit_scale)
        return {
            "loss_clip": loss,
            "clip": loss.detach(),
            "clip_acc": acc,
            "logit_scale": self.logit_scale.detach().exp(),
        }

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        # OpenCLIP: clamp the learned log scale after the step, so the forward never cuts its gradient
        self.logit_scale.clamp_(0.0, self.max_log_scale)

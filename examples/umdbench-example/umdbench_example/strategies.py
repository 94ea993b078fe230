"""A pre-training strategy and a tuning strategy, built on umdbench's public kit."""

import copy

import torch.nn.functional as F
from torch import nn

from umdbench.api import PretrainStrategy
from umdbench.kit import FINETUNE_TRAIN_TINY, PRETRAIN_TRAIN_TINY, SupervisedTune, init_head_weights, mask_tokens


class MLMOnly(PretrainStrategy):
    """Masked language modelling with the image in view: 15 % of the text tokens are masked and the
    fused text features predict them."""

    name = "mlm-only"
    version = "1"
    presets = {"tiny": {"mask_ratio": 0.15, "train": copy.deepcopy(PRETRAIN_TRAIN_TINY)}}

    @classmethod
    def check_config(cls, cfg):
        if not 0.0 < float(cfg["mask_ratio"]) < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {cfg['mask_ratio']}")

    def __init__(self, encoder, cfg):
        super().__init__(encoder, cfg)
        self.head = nn.Linear(encoder.hidden_size, cfg["special_ids"]["vocab_size"])
        init_head_weights(self.head)

    def forward(self, batch):
        ids, labels = mask_tokens(
            batch["text_ids"], batch["text_mask"], self.cfg["special_ids"], float(self.cfg["mask_ratio"])
        )
        out = self.encoder(image=batch["image"], text_ids=ids, text_mask=batch["text_mask"])
        logits = self.head(out.text_feats)
        return {"loss_mlm": F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)}


class BiasOnly(SupervisedTune):
    """The shared task head plus every bias of the encoder; all other encoder weights frozen
    (BitFit). The head, loss and predictions are the task type's, so results compare with `direct`."""

    name = "bias-only"
    version = "1"
    presets = {"tiny": {"loss": "ce", "pooling": "pooler", "train": dict(FINETUNE_TRAIN_TINY, lr=2e-3)}}

    def __init__(self, encoder, cfg, task):
        super().__init__(encoder, cfg, task)
        for name, param in self.encoder.named_parameters():
            param.requires_grad_(name.endswith(".bias"))

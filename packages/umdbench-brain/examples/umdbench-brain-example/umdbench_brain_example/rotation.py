"""rotation3d: pre-train a volume encoder by predicting which quarter turn a crop was given."""

import copy

import torch
import torch.nn.functional as F
from torch import nn

from umdbench.api import Option, PretrainStrategy
from umdbench_brain.kit import PRETRAIN_PAPER, PRETRAIN_TINY, VOLUME_ENCODERS, draws


class RotationPretrain(PretrainStrategy):
    """Each crop of the batch is turned by k quarter turns in its last two axes (k drawn per study
    from ``turns`` choices, keyed by the study's position in the global batch, so the draw is the
    same at any world size); a linear head on the pooled deepest map of the volume encoder
    predicts k (cross-entropy). Gidaris et al. 2018, in 3-D."""

    name = "rotation3d"
    version = "1"
    task_types = ("volumes",)  # unlabelled crops: the brainsynth-corpus / BraTS pre-training data
    encoders = VOLUME_ENCODERS  # every volume encoder (resunet3d, swinvit3d, uniformer3d, monai3d)
    option_schema = {"turns": Option(int, 4, "quarter-turn classes to tell apart: 2 (0/180 deg) or 4")}
    presets = {
        "tiny": {"turns": 4, "train": copy.deepcopy(PRETRAIN_TINY)},
        "paper": {"turns": 4, "train": copy.deepcopy(PRETRAIN_PAPER)},
    }

    @classmethod
    def check_config(cls, cfg):
        if cfg.get("turns") not in (2, 4):
            raise ValueError(f"turns must be 2 or 4, got {cfg.get('turns')!r}")

    @classmethod
    def deviations(cls, cfg):
        return ["rotation prediction is this example's pre-training, not a method of the paper"]

    def __init__(self, encoder, cfg):
        super().__init__(encoder, cfg)
        self.turns = int(cfg["turns"])
        self.head = nn.Linear(int(encoder.hidden_size), self.turns)

    def forward(self, batch):
        volume = batch["volume"]  # [B, M, D, H, W], cubic crops (the volume batch contract)
        step = 4 // self.turns  # 2 classes: 0 and 2 quarter turns
        k = draws.randint(0, self.turns, volume.shape[0], stream="rotation", device=volume.device)
        turned = torch.stack([torch.rot90(v, int(t) * step, dims=(2, 3)) for v, t in zip(volume, k.tolist())])
        logits = self.head(self.encoder(turned)[-1].mean(dim=(2, 3, 4)))
        return {
            "loss_rotation": F.cross_entropy(logits, k),
            "rotation_acc": (logits.argmax(dim=1) == k).float().mean().detach(),
        }

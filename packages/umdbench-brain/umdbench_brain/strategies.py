"""Strategies on volume encoders: tuning ``seg`` and ``cls`` (the task type's head on the shared
encoder, as every umdbench supervised strategy) and pre-training ``mae3d`` (masked volume
modelling, our baseline choice per the brain README (baselines))."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from umdbench import draws
from umdbench.api import Option, PretrainStrategy, TaskInfo, TuneStrategy, train_config
from umdbench.errors import ConfigError

__all__ = ["VolumeTune", "SegTune", "ClsTune", "MAE3D", "budget_deviations"]

# The released fine-tuning recipe (notes 1.6): Adam 3e-4, weight decay 1e-4, cosine, batch 2.
# 12,000 iterations ~ 300 epochs of ~80 training studies at batch 2 (BraTS2023-PED's size).
FINETUNE_PAPER = train_config(
    max_iters=12000,
    batch_size=2,
    lr=3e-4,
    weight_decay=1e-4,
    betas=[0.9, 0.999],
    warmup_ratio=0.0,
    schedule="cosine",
    checkpoint_interval=1000,
    log_interval=50,
)
# A CPU budget that segments brainsynth clearly above chance in about a minute on 2 cores.
FINETUNE_TINY = train_config(
    max_iters=120,
    batch_size=4,
    lr=3e-3,
    weight_decay=1e-4,
    betas=[0.9, 0.999],
    warmup_ratio=0.05,
    schedule="cosine",
    checkpoint_interval=60,
    log_interval=10,
)

# The CPU-sized budget the brain suites' committed boards use (preset ``small``, on uniformer3d at
# 32^3): the released batch of 2 crops, fewer steps at a higher rate (the released 3e-4 barely moves
# a random-init UniFormer in a few hundred steps), a short warm-up for the attention stages. Sized
# so that every brain suite at 3 seeds fits about 2.5 core-hours (the brain README, "The small preset").
FINETUNE_SMALL = train_config(
    max_iters=160,
    batch_size=2,
    lr=1e-3,
    weight_decay=1e-4,
    betas=[0.9, 0.999],
    warmup_ratio=0.05,
    schedule="cosine",
    checkpoint_interval=80,
    log_interval=10,
)
# Classification trains on whole volumes (48^3 on brainsynth, 3.4x a 32^3 crop), 4 per step: the
# pooled features come after uniformer3d's final BatchNorm, which at 2 studies per step makes the two
# studies' pooled features exact negatives of each other (nothing absolute to classify); 80 steps
# see as many studies as seg's 160 steps see crops
CLS_FINETUNE_SMALL = train_config(**{**FINETUNE_SMALL, "max_iters": 80, "batch_size": 4, "checkpoint_interval": 40})

# BrainMVP's pre-training optimisation at the CPU budget (every pre-training shares it, as at
# tiny and paper; brainmvp.py re-exports it beside PRETRAIN_TINY / PRETRAIN_PAPER): 4 studies per step
PRETRAIN_SMALL = train_config(
    max_iters=150,
    batch_size=4,
    lr=1e-3,
    weight_decay=1e-5,
    betas=[0.9, 0.999],
    warmup_ratio=0.0,
    schedule="cosine",
    checkpoint_interval=75,
    log_interval=10,
)

# the train keys a budget line compares with the released recipe
BUDGET_KEYS = ("max_iters", "batch_size", "lr", "weight_decay", "warmup_ratio", "schedule")


def budget_deviations(train: dict | None, released: dict, what: str) -> list[str]:
    """One line naming each train key of ``train`` that departs from the ``released`` recipe
    (``what``: whose recipe, e.g. "fine-tuning"); none when they agree (the ``paper`` presets)."""
    train = train or {}
    diffs = [f"{k} {train[k]} (released {released[k]})" for k in BUDGET_KEYS if k in train and train[k] != released[k]]
    return [f"{what} budget: " + ", ".join(diffs)] if diffs else []


# Encoder.family of this package's volume encoders: what every strategy here runs on
VOLUME_ENCODERS = ("volume-3d",)

# a loss averaged over the voxels of the modalities each study has: the count varies per study
PRESENT_VOXEL_MEAN = "{what} MSE averaged over the batch's voxels of present modalities (a count that varies per study)"

RELEASED_SEG_GAPS = [
    "optimiser AdamW (decoupled weight decay) instead of the released Adam with L2 weight decay "
    "(the core builds AdamW); cosine stepped per iteration rather than per epoch",
    "no deep supervision: one full-resolution output (released: three outputs, losses summed)",
    "the last iterate is evaluated (released: the best validation checkpoint, validated every 5 epochs)",
    "UNet-style residual decoder with trilinear upsampling (released: UNETR up-blocks)",
]


class VolumeTune(TuneStrategy):
    """The task type's head on a volume encoder; loss and predictions from the task type."""

    supervised: ClassVar[bool] = True
    needs: ClassVar[str] = ""  # the task type this strategy tunes
    encoders = VOLUME_ENCODERS
    option_schema: ClassVar[dict] = {"augment": Option(bool, True, "random flips and intensity jitter in training")}

    def __init__(self, encoder: nn.Module, cfg: dict, task: TaskInfo):
        if task.spec is None or task.spec.name != self.needs:
            raise ConfigError(
                f"tuning strategy {self.name!r} tunes {self.needs!r} datasets, but this dataset's task "
                f"is {task.task!r}; choose the strategy that matches it (seg: segmentation, "
                f"cls: scan-classification)."
            )
        super().__init__(encoder, cfg, dataclasses.replace(task))
        self.head = task.spec.build_head(task, self.head_width(encoder))

    def head_width(self, encoder: nn.Module):
        return int(encoder.hidden_size)

    def options(self) -> dict:
        return {k: v for k, v in self.cfg.items() if k != "train"}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        spec = self.task.spec
        fwd = spec.encode(self.encoder, batch, self.task, self.options(), training=True)
        logits = spec.logits(self.head, fwd, self.task)
        return {"loss_task": spec.loss(self.task, logits, spec.target(fwd), self.options())}

    def predict(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        spec = self.task.spec
        fwd = spec.encode(self.encoder, batch, self.task, self.options(), training=False)
        return spec.predict(self.task, spec.logits(self.head, fwd, self.task))


class SegTune(VolumeTune):
    """Fine-tune encoder + segmentation decoder on random crops; predict whole volumes by
    sliding-window inference. Options: ``dice_weight`` (0.7), ``bce_weight`` (0.3), ``sw_overlap``
    (0.5), ``sw_batch_size``, ``augment`` (flips + intensity jitter)."""

    name = "seg"
    needs = "segmentation"
    task_types = ("segmentation",)
    option_schema: ClassVar[dict] = {
        **VolumeTune.option_schema,
        "dice_weight": Option(float, 0.7, "weight of the soft Dice term"),
        "bce_weight": Option(float, 0.3, "weight of the BCE term"),
        "sw_overlap": Option(float, 0.5, "sliding-window overlap at evaluation"),
        "sw_batch_size": Option(int, 4, "windows per forward at evaluation"),
    }
    presets: ClassVar[dict] = {
        "tiny": {
            "dice_weight": 0.7,
            "bce_weight": 0.3,
            "sw_overlap": 0.5,
            "sw_batch_size": 8,
            "augment": True,
            "train": FINETUNE_TINY,
        },
        "small": {
            "dice_weight": 0.7,
            "bce_weight": 0.3,
            "sw_overlap": 0.5,
            "sw_batch_size": 8,
            "augment": True,
            "train": FINETUNE_SMALL,
        },
        "paper": {
            "dice_weight": 0.7,
            "bce_weight": 0.3,
            "sw_overlap": 0.5,
            "sw_batch_size": 4,
            "augment": True,
            "train": FINETUNE_PAPER,
        },
    }

    @classmethod
    def deviations(cls, cfg: dict) -> list[str]:
        found = list(RELEASED_SEG_GAPS) + budget_deviations(cfg.get("train"), FINETUNE_PAPER, "fine-tuning")
        if (cfg.get("dice_weight"), cfg.get("bce_weight")) != (0.7, 0.3):
            found.append(f"loss {cfg.get('dice_weight')} x Dice + {cfg.get('bce_weight')} x BCE (released: 0.7 + 0.3)")
        if cfg.get("sw_overlap") != 0.5:
            found.append(f"sliding-window overlap {cfg.get('sw_overlap')} (released: 0.5)")
        if not cfg.get("augment", True):
            found.append("no flips or intensity jitter (released: both)")
        return found

    def head_width(self, encoder: nn.Module):
        return (int(encoder.in_channels), *map(int, encoder.feature_channels))

    def predict(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        spec = self.task.spec
        logits = spec.sliding_logits(
            self.encoder, self.head, batch, self.task, self.options(), int(self.encoder.roi_size)
        )
        return spec.predict(self.task, logits)


class ClsTune(VolumeTune):
    """Fine-tune encoder + MLP head on whole volumes (cross-entropy). Option ``augment``."""

    name = "cls"
    needs = "scan-classification"
    task_types = ("scan-classification",)
    presets: ClassVar[dict] = {
        "tiny": {"augment": True, "train": train_config(**{**FINETUNE_TINY, "max_iters": 100, "lr": 1e-3})},
        "small": {"augment": True, "train": CLS_FINETUNE_SMALL},
        "paper": {"augment": True, "train": FINETUNE_PAPER},
    }

    @classmethod
    def deviations(cls, cfg: dict) -> list[str]:
        return [
            "classification head and recipe are not released (BrainMVP issue #9: 'an MLP with softmax'): "
            "global average pooling of the deepest map + a 2-layer MLP, with the segmentation recipe"
        ] + budget_deviations(cfg.get("train"), FINETUNE_PAPER, "fine-tuning (the segmentation recipe's)")


class MAE3D(PretrainStrategy):
    """Masked volume modelling on a volume encoder: split the crop into ``block_size``-cubed blocks,
    zero ``mask_ratio`` of them in every channel, reconstruct the volume from the deepest feature
    map (:class:`~umdbench_brain.heads.ReconDecoder`), MSE on the masked voxels of the modalities
    the study has (``loss_on: all`` = every voxel)."""

    name = "mae3d"
    task_types = ("volumes",)
    encoders = VOLUME_ENCODERS
    option_schema: ClassVar[dict] = {
        "mask_ratio": Option(float, 0.75, "share of blocks zeroed, within (0, 1)"),
        "block_size": Option(int, 8, "edge of a masked block in voxels; divides the encoder's roi_size"),
        "loss_on": Option(str, "masked", "masked | all voxels"),
    }
    presets: ClassVar[dict] = {
        "tiny": {
            "mask_ratio": 0.75,
            "block_size": 4,
            "loss_on": "masked",
            "train": train_config(
                max_iters=150,
                batch_size=4,
                lr=2e-3,
                weight_decay=0.05,
                betas=[0.9, 0.95],
                warmup_ratio=0.05,
                schedule="cosine",
                checkpoint_interval=75,
                log_interval=10,
            ),
        },
        "small": {"mask_ratio": 0.75, "block_size": 4, "loss_on": "masked", "train": PRETRAIN_SMALL},
        # BrainMVP's pre-training optimisation (notes 1.5), so the baselines share one recipe:
        # AdamW 3e-4 / wd 1e-5, cosine without warm-up, 24 studies per step, 1500 epochs x 500 studies
        "paper": {
            "mask_ratio": 0.75,
            "block_size": 8,
            "loss_on": "masked",
            "train": train_config(
                max_iters=31250,
                batch_size=24,
                lr=3e-4,
                weight_decay=1e-5,
                betas=[0.9, 0.999],
                warmup_ratio=0.0,
                schedule="cosine",
                checkpoint_interval=2000,
                log_interval=50,
            ),
        },
    }

    @classmethod
    def deviations(cls, cfg: dict) -> list[str]:
        found = [
            "MAE-3D is our baseline choice (see the brain README: baselines), not verified against the paper's table",
            "masked blocks are zero-filled in place (SimMIM-style, what a CNN encoder can take) rather than "
            "dropped as MAE tokens",
            "every present modality is a channel of one input (BrainMVP pre-trains on one modality at a time)",
        ] + budget_deviations(cfg.get("train"), cls.presets["paper"]["train"], "pre-training (BrainMVP's recipe)")
        if cfg.get("loss_on", "masked") == "all":
            found.append("reconstruction loss on every voxel (MAE: masked voxels only)")
        return found

    @classmethod
    def batch_coupled_terms(cls, cfg: dict) -> list[str]:
        return [PRESENT_VOXEL_MEAN.format(what="reconstruction")]

    def __init__(self, encoder: nn.Module, cfg: dict):
        super().__init__(encoder, cfg)
        self.mask_ratio = float(cfg["mask_ratio"])
        self.block = int(cfg["block_size"])
        self.loss_on = cfg.get("loss_on", "masked")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mae3d: mask_ratio={self.mask_ratio} must be within (0, 1)")
        if self.loss_on not in ("masked", "all"):
            raise ValueError(f"mae3d: loss_on must be 'masked' or 'all', got {self.loss_on!r}")
        if int(encoder.roi_size) % self.block:
            raise ValueError(
                f"mae3d: block_size={self.block} must divide the encoder's roi_size={encoder.roi_size}; "
                f"set pretrain.block_size or model.roi_size."
            )
        from umdbench_brain.heads import ReconDecoder

        self.decoder = ReconDecoder(
            int(encoder.hidden_size), int(encoder.feature_strides[-1]), int(encoder.in_channels)
        )

    def block_mask(self, batch: int, shape: tuple[int, int, int], device) -> torch.Tensor:
        """[B,1,D,H,W] float, 1 = masked; exactly round(ratio x blocks) blocks per sample, drawn
        from the sample's keyed stream (:mod:`umdbench.draws`)."""
        grid = [s // self.block for s in shape]
        n = grid[0] * grid[1] * grid[2]
        keep = n - int(round(self.mask_ratio * n))
        order = draws.rand(batch, n, stream="mask", device=device).argsort(dim=1)
        mask = torch.ones(batch, n, device=device)
        mask.scatter_(1, order[:, :keep], 0.0)
        mask = mask.view(batch, 1, *grid)
        return F.interpolate(mask, size=tuple(shape), mode="nearest")

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        volume = batch["volume"]
        present = batch["present"].to(volume.dtype)[:, :, None, None, None]
        mask = self.block_mask(volume.shape[0], tuple(volume.shape[2:]), volume.device)
        recon = self.decoder(self.encoder(volume * (1.0 - mask))[-1])
        if recon.shape[2:] != volume.shape[2:]:
            recon = F.interpolate(recon, size=volume.shape[2:], mode="trilinear", align_corners=False)
        weight = present * (mask if self.loss_on == "masked" else torch.ones_like(mask))
        # the count of present modalities varies per study: divided by the global batch's count
        loss = draws.global_mean(((recon - volume) ** 2 * weight).sum(), weight.sum())
        return {"loss_rec": loss}

"""Training recipes shared by strategies: the papers' step budgets and optimiser settings.

One public home for the numbers several strategies build their presets from, so a plugin reuses
them instead of importing another plugin's private constants.

* :data:`TRAIN_SIZES` / :func:`iters_for` -- epoch budgets as optimiser steps.
* :data:`PRETRAIN_TRAIN_PAPER` / :data:`PRETRAIN_TRAIN_TINY` -- pre-training stages.
* :data:`FINETUNE_TRAIN_PAPER` / :data:`FINETUNE_TRAIN_TINY` / :func:`m3ae_per_dataset` -- the
  M3AE downstream fine-tuning recipe (upstream run scripts) and its per-dataset entries.
* :data:`PRETRAIN_TRAIN_SMALL` / :data:`FINETUNE_TRAIN_SMALL` / :func:`small_per_dataset` -- the
  ``small`` preset's CPU recipes.
"""

from __future__ import annotations

import math

from umdbench.api import train_config

__all__ = [
    "FINETUNE_TRAIN_PAPER",
    "FINETUNE_TRAIN_SMALL",
    "FINETUNE_TRAIN_TINY",
    "PRETRAIN_TRAIN_PAPER",
    "PRETRAIN_TRAIN_SMALL",
    "PRETRAIN_TRAIN_TINY",
    "SMALL_FINETUNE_EPOCHS",
    "SMALL_FINETUNE_OVERRIDES",
    "TRAIN_SIZES",
    "iters_for",
    "m3ae_per_dataset",
    "small_per_dataset",
]

# Training-split sizes used to express the papers' epoch budgets as optimiser steps.
# VQA-RAD, SLAKE (English), VQA-Med-2019 (C1-C3) from upstream step counts; MELINDA inferred from the
# TD-Calib step count (272 steps/epoch at batch 16); ROCO radiology train from the ROCO release.
TRAIN_SIZES = {
    "vqa-rad": 3064,
    "slake": 4919,
    "vqa-med-2019": 9600,
    "melinda": 4352,
    "roco": 65450,
}


def iters_for(dataset: str, batch_size: int, epochs: int) -> int:
    """Optimiser steps of ``epochs`` passes over ``dataset``'s training split at ``batch_size``."""
    return math.ceil(TRAIN_SIZES[dataset] / batch_size) * epochs


# Training hyper-parameters of pre-training stages (the `train` dict of a strategy preset).
# paper and small presets train in bf16 autocast where it is native (amp "auto", resolved at plan time
# into the stage key, so a bf16 result is never reused where fp32 ran); tiny ones in fp32.
# paper: AdamW, lr 1e-5 for the uni-modal encoders, x5 for fusion and heads, 10 % warm-up then
# linear decay, 100k steps at batch 256 (betas/eps/weight decay as in the released code).
PRETRAIN_TRAIN_PAPER: dict = train_config(
    max_iters=100_000,
    batch_size=256,
    lr=1e-5,
    lr_mult={"encoder": 1.0, "fusion": 5.0, "head": 5.0},
    checkpoint_interval=5_000,
    log_interval=100,
    amp="auto",
)
# tiny: a short CPU run from random init, so a much larger lr.
PRETRAIN_TRAIN_TINY: dict = train_config(
    max_iters=200,
    batch_size=16,
    lr=5e-4,
    checkpoint_interval=100,
    log_interval=10,
    grad_clip=1.0,
)

# small: a CPU run that learns. lr 2e-4 is a fine-tuning lr for the pretrained MiniLM-L6 text tower;
# the random vision tower and fusion learn under the warm-up. amp "auto" because bf16 cuts a step by
# 26-39 % on the 2-core box at the same scores (results/small/NOTES.md, "Time on 2 cores"). What this
# recipe, and a probe at lr 5e-5, do to VQA-RAD fine-tuning: docs/pretraining.md, "Common training
# hyper-parameters".
PRETRAIN_TRAIN_SMALL: dict = train_config(
    max_iters=300,
    batch_size=32,
    lr=2e-4,
    checkpoint_interval=100,
    log_interval=20,
    grad_clip=1.0,
    amp="auto",
)

# Fine-tuning (the M3AE downstream recipe): AdamW (betas 0.9/0.98, eps 1e-8, wd 0.01), lr 5e-6,
# fusion x5, head x50 (VQA); 10 % warm-up then linear decay.
FINETUNE_TRAIN_PAPER = train_config(
    max_iters=iters_for("vqa-rad", 64, 50),
    batch_size=64,
    lr=5e-6,
    lr_mult={"encoder": 1.0, "fusion": 5.0, "head": 50.0},
    checkpoint_interval=500,
    log_interval=50,
    amp="auto",
)

FINETUNE_TRAIN_TINY = train_config(
    max_iters=200,  # keeps the README pipeline under 10 min on 2 CPU cores
    batch_size=32,
    lr=5e-4,
    lr_mult={"encoder": 1.0, "fusion": 1.0, "head": 2.0},
    checkpoint_interval=100,
    log_interval=10,
)


# small: the fine-tuning recipe of every dataset without an entry in SMALL_FINETUNE_OVERRIDES
# (docs/tuning.md, "Presets").
FINETUNE_TRAIN_SMALL = train_config(
    max_iters=iters_for("vqa-rad", 32, 3),
    batch_size=32,
    lr=1e-4,
    lr_mult={"encoder": 1.0, "fusion": 2.0, "head": 10.0},
    checkpoint_interval=100,
    log_interval=20,
    grad_clip=1.0,
    amp="auto",
)


#: epochs per dataset of the small fine-tuning stages (about 300 steps each; VQA-RAD 960 at batch 16)
SMALL_FINETUNE_EPOCHS = {"vqa-rad": 5, "slake": 2, "vqa-med-2019": 1, "melinda": 2, "roco": 1}
#: per-dataset changes to :data:`FINETUNE_TRAIN_SMALL`: VQA-RAD (small, long-tailed open answers)
#: trains at batch 16 with a lower lr and larger fusion/head multipliers, the best of the seed-0
#: trials in docs/tuning.md ("The small VQA-RAD recipe")
SMALL_FINETUNE_OVERRIDES = {
    "vqa-rad": {"batch_size": 16, "lr": 5e-5, "lr_mult": {"encoder": 1.0, "fusion": 4.0, "head": 20.0}},
}


def small_per_dataset(epochs: dict[str, int], batch_size: int = 32) -> dict:
    """Per-dataset entries of the ``small`` fine-tuning recipes: step budgets (epochs at the
    dataset's batch size, ``batch_size`` unless :data:`SMALL_FINETUNE_OVERRIDES` sets one) and
    the overrides themselves."""
    out = {}
    for ds, ep in epochs.items():
        train = dict(SMALL_FINETUNE_OVERRIDES.get(ds, {}))
        train["max_iters"] = iters_for(ds, int(train.get("batch_size", batch_size)), ep)
        out[ds] = {"train": train}
    return out


def m3ae_per_dataset(epochs: dict[str, int]) -> dict:
    """Per-dataset batch size, head multiplier and step budget of the M3AE-style recipes."""
    batch = {"vqa-rad": 64, "slake": 32, "vqa-med-2019": 32, "melinda": 16, "roco": 256}
    head = {"vqa-rad": 50.0, "slake": 50.0, "vqa-med-2019": 50.0, "melinda": 10.0, "roco": 5.0}
    return {
        ds: {
            "train": {"batch_size": batch[ds], "max_iters": iters_for(ds, batch[ds], ep), "lr_mult": {"head": head[ds]}}
        }
        for ds, ep in epochs.items()
    }

"""``direct``: supervised fine-tuning of the whole model with the task head (UMD paper Fig. 2a).

The baseline fine-tuning of M3AE: encoder + task head trained end-to-end with the task loss
(:mod:`umdbench.kit.tasks`). The paper preset is the M3AE downstream recipe (upstream run scripts):
AdamW (betas 0.9/0.98, eps 1e-8, wd 0.01), lr 5e-6, fusion x5, head x50 (VQA) / x10 (MELINDA) /
x5 (ROCO), 10 % warm-up then linear decay, epochs 50/15/10/20/10 (VQA-RAD / SLAKE / VQA-Med-2019 /
MELINDA / ROCO) at batch 64/32/32/16/256, expressed as ``max_iters``.
"""
from __future__ import annotations

from umdbench.api import train_config
from umdbench.kit.supervised import SupervisedTune
from umdbench.kit.tasks import iters_for

_PAPER_TRAIN = train_config(
    max_iters=iters_for("vqa-rad", 64, 50), batch_size=64, lr=5e-6,
    lr_mult={"encoder": 1.0, "fusion": 5.0, "head": 50.0}, checkpoint_interval=500, log_interval=50,
)

_TINY_TRAIN = train_config(
    max_iters=200,  # keeps the README pipeline under 10 min on 2 CPU cores
    batch_size=32, lr=5e-4, lr_mult={"encoder": 1.0, "fusion": 1.0, "head": 2.0},
    checkpoint_interval=100, log_interval=10,
)


def _m3ae_per_dataset(epochs: dict[str, int]) -> dict:
    """Per-dataset batch size, head multiplier and step budget of the M3AE-style recipes."""
    batch = {"vqa-rad": 64, "slake": 32, "vqa-med-2019": 32, "melinda": 16, "roco": 256}
    head = {"vqa-rad": 50.0, "slake": 50.0, "vqa-med-2019": 50.0, "melinda": 10.0, "roco": 5.0}
    return {
        ds: {"train": {"batch_size": batch[ds], "max_iters": iters_for(ds, batch[ds], ep), "lr_mult": {"head": head[ds]}}}
        for ds, ep in epochs.items()
    }


class DirectTune(SupervisedTune):
    """Fine-tune encoder + task head with the task loss (``loss``: "ce" default | "bce")."""

    name = "direct"
    version = "1"
    presets = {
        "tiny": {
            "loss": "ce",
            "pooling": "pooler",
            "train": dict(_TINY_TRAIN),
            "per_dataset": {"roco": {"train": {"batch_size": 16}}},
        },
        "paper": {
            "loss": "ce",
            "pooling": "pooler",
            "train": dict(_PAPER_TRAIN),
            "per_dataset": _m3ae_per_dataset(
                {"vqa-rad": 50, "slake": 15, "vqa-med-2019": 10, "melinda": 20, "roco": 10}
            ),
        },
    }

"""What a stage's ``train`` dict says, read with :data:`umdbench.api.TRAIN_DEFAULTS` for the keys it
leaves out: a planned stage has them all (:func:`umdbench.api.train_config`), a ``train`` dict built
by hand (a test, a benchmark case) may not, and the defaults then are the same ones."""

from __future__ import annotations

from typing import Any

from umdbench.api import TRAIN_DEFAULTS
from umdbench.util import resolve_amp

__all__ = ["accumulation", "train_setting", "use_amp"]


def train_setting(train: dict, key: str) -> Any:
    """``train[key]``, or its :data:`~umdbench.api.TRAIN_DEFAULTS` value when absent (a key without
    a default raises KeyError: read it from ``train`` directly)."""
    return train[key] if key in train else TRAIN_DEFAULTS[key]


def use_amp(train: dict) -> bool:
    """bf16 autocast for the stage: ``train.amp`` as planned (:func:`umdbench.util.resolve_amp`;
    "auto" = bf16 where native: CUDA, or a CPU with AVX-512 BF16 / AMX). False = fp32."""
    return resolve_amp(train_setting(train, "amp")) == "bf16"


def accumulation(train: dict) -> int:
    """Micro-batches per optimiser step (``train.accumulative_counts``; checked when the run is
    planned, :func:`umdbench.plan.config.check_accumulation`)."""
    return int(train_setting(train, "accumulative_counts") or 1)

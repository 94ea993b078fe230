"""A stage's data: the task type it is built with, the checked records of a split (a tuning stage's
label subset), the torch dataset and the mmengine data-loader config."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from umdbench.api import DataContext, TaskType
from umdbench.errors import ConfigError
from umdbench.plan.config import ResolvedRun
from umdbench.plan.stage_plan import Stage
from umdbench.run.context import RunContext
from umdbench.run.train_settings import train_setting

__all__ = [
    "auto_num_workers",
    "build_dataset",
    "dataloader_cfg",
    "image_cache_dir",
    "label_subset",
    "stage_records",
    "stage_task_type",
]


def stage_task_type(ctx: RunContext, dataset, stage_kind: str) -> TaskType:
    """The task type a stage builds its data with: the dataset's own, or, for a pre-training stage
    on a labelled dataset, the unsupervised task type that dataset's task names."""
    spec = ctx.registries.task.get(dataset.task)()
    if stage_kind == "pretrain" and spec.supervised:
        if not spec.pretrain_task:
            raise ConfigError(
                f"dataset {dataset.name!r} (task {dataset.task!r}) cannot serve as a pre-training "
                f"corpus: its task type names no pretrain_task."
            )
        spec = ctx.registries.task.get(spec.pretrain_task)()
    return spec


def image_cache_dir(run: ResolvedRun, ctx: RunContext) -> Path | None:
    return ctx.ws.image_cache_dir if run.config["data"].get("image_cache", True) else None


def stage_records(stage: Stage, run: ResolvedRun, ctx: RunContext, split: str) -> list:
    """The records a stage's split is built from: checked (non-empty, unique ids, images decode)
    once per process, run_cell did it up front; with ``on_error: skip`` unusable ones are left out,
    so a batch's ``index`` is a position in this list, not in ``records(split)``."""
    size = run.config["model"].get("image_size")
    return ctx.catalog.checked_records(
        stage.data, split, size if isinstance(size, int) else None, image_cache_dir(run, ctx)
    )


def label_subset(records: list, fraction: float, seed: int) -> list:
    """``round(fraction x n)`` records (at least one), in their split order: a prefix of one
    permutation drawn from the seed, so at one seed a smaller fraction is a subset of a larger one."""
    fraction = float(fraction)
    if fraction >= 1.0:
        return records
    keep = max(1, int(round(fraction * len(records))))
    order = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), 0x1ABE1]))).permutation(len(records))
    return [records[i] for i in sorted(order[:keep].tolist())]


def build_dataset(stage: Stage, run: ResolvedRun, ctx: RunContext, split: str, *, training: bool):
    """``(torch dataset, task type)`` of one split, built by the task type of the stage's data."""
    model_cfg = run.config["model"]
    dataset = ctx.catalog.get(stage.data)
    records = stage_records(stage, run, ctx, split)
    if training and stage.kind == "tune":
        records = label_subset(records, train_setting(stage.cfg["train"], "label_fraction"), run.config["seed"])
    spec = stage_task_type(ctx, dataset, stage.kind)
    data_ctx = DataContext(
        model_cfg=model_cfg,
        stage_cfg=stage.cfg,
        tokenizer=ctx.tokenizer(model_cfg),
        label_names=list(dataset.label_names() or []),
        seed=run.config["seed"],
        cache_dir=image_cache_dir(run, ctx),
    )
    return spec.build_dataset(records, data_ctx, training=training), spec


def auto_num_workers(requested) -> int:
    """Data-loader workers sized to the machine: leave one core to the model."""
    if requested != "auto":
        return int(requested)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(4, cores - 1))


def dataloader_cfg(
    dataset,
    spec: TaskType,
    batch_size: int,
    run: ResolvedRun,
    *,
    train: bool,
    global_batch: int | None = None,
    micro_batches: int = 1,
) -> dict:
    """The loader of one split. Training reads through the keyed loader
    (:class:`~umdbench.run.data_parallel.GlobalBatchSampler`): ``batch_size`` is this process's
    micro-batch, ``global_batch`` the step's batch over every rank and micro-batch."""
    from umdbench.run.data_parallel import GlobalBatchSampler, KeyedCollate, KeyedItems

    workers = auto_num_workers(run.config["data"].get("num_workers", "auto"))
    seed = run.config["seed"]
    if train:
        dataset, collate = KeyedItems(dataset, seed), KeyedCollate(spec.collate)
        sampler = {
            "type": GlobalBatchSampler,
            "global_batch": int(global_batch or batch_size),
            "micro_batches": int(micro_batches),
            "seed": seed,
        }
    else:
        sampler, collate = {"type": "DefaultSampler", "shuffle": False}, spec.collate
    return {
        "dataset": dataset,
        "sampler": sampler,
        "batch_size": int(batch_size),
        "num_workers": workers,
        "persistent_workers": workers > 0,
        "pin_memory": torch.cuda.is_available(),
        "collate_fn": collate,  # the task type's (mmengine accepts a callable)
    }

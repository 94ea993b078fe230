"""Resolved config -> a chain of stages, each keyed by a hash of everything upstream of it.

A stage's key covers its own config, the encoder config, the seed, the fingerprint of the data it
reads, the code it runs (:mod:`umdbench.plan.codekey`: the modules its run path and its strategy,
dataset, encoder, task type and metric import, and the versions of the libraries that compute)
and its parent's key; settings that cannot change numbers (loader workers, log/checkpoint
intervals) are left out. Two cells that share a pre-training (same strategy, config, corpus and
seed) therefore share that stage's cached artifact, and no code change a stage runs returns a
result computed before it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

from umdbench.data.catalog import DataCatalog
from umdbench.plan.codekey import code_key
from umdbench.plan.config import ResolvedRun, default_metric
from umdbench.util import config_hash

# Settings that cannot change a stage's numbers, left out of its key so that changing them reuses
# the cache: loader workers (each record's pixels and the sampler order do not depend on them),
# the image cache (it stores exactly what decoding returns), log and checkpoint intervals and how
# many checkpoints are kept (bookkeeping of the runner only), whether the optimiser steps inside
# backward (the same updates bit for bit, tests/run/test_step_in_backward.py) and whether the encoder
# blocks recompute their activations in backward (the same updates, tests/models/test_activation_checkpointing.py).
# fused/foreach stay in: the AdamW kernels round differently. The evaluation batch size enters the
# evaluation's key only.
NON_NUMERIC_DATA = ("num_workers", "image_cache", "eval_batch_size")
NON_NUMERIC_TRAIN = (
    "log_interval",
    "checkpoint_interval",
    "keep_checkpoints",
    "step_in_backward",
    "activation_checkpointing",
)


def _numeric(section: dict, drop: tuple[str, ...]) -> dict:
    return {k: v for k, v in section.items() if k not in drop}


def _keyed_stage_cfg(stage_cfg: dict) -> dict:
    """A stage config without the settings that cannot change its numbers."""
    out = dict(stage_cfg)
    if isinstance(out.get("train"), dict):
        out["train"] = _numeric(out["train"], NON_NUMERIC_TRAIN)
    return out


@dataclass
class Stage:
    kind: str  # "pretrain" | "tune" | "eval"
    name: str  # strategy name ("eval" for the evaluation stage)
    index: int  # position in the tune chain (0 for pretrain/eval)
    cfg: dict  # the stage's own config (train hyper-parameters + options)
    data: dict  # {"type", "root", "options", "split", "fingerprint"}
    key: str
    parent: "Stage | None" = None
    key_inputs: dict = field(default_factory=dict)

    @property
    def dirname(self) -> str:
        return f"{self.kind}-{self.name}-{self.key[:16]}"

    @property
    def title(self) -> str:
        return "evaluate" if self.kind == "eval" else f"{self.kind} {self.name}"


def _stage_key(inputs: dict) -> str:
    return config_hash(inputs)


def _task_classes(registries, dataset_cls, pretrain: bool) -> list:
    """The task type(s) a stage on ``dataset_cls`` builds its tensors with."""
    if dataset_cls.task not in registries.task:
        return []  # resolve() reports an unknown task type; nothing to hash here
    spec = registries.task.get(dataset_cls.task)
    if pretrain and spec.supervised and spec.pretrain_task and spec.pretrain_task in registries.task:
        return [spec, registries.task.get(spec.pretrain_task)]
    return [spec]


def metric_name(registries, dataset_cls, eval_cfg: dict | None = None) -> str | None:
    """The metric an evaluation scores with: the run's ``eval.metric`` when it names one, else the
    dataset's own, else its task type's default (None when none names one; the default rule is
    :func:`umdbench.plan.config.default_metric`). ``eval_cfg`` is the config's ``eval`` section (a
    row stored before ``eval.metric`` existed has none: its dataset's default)."""
    chosen = (eval_cfg or {}).get("metric")
    return chosen or default_metric(registries, dataset_cls)


def _metric_targets(registries, dataset_cls, eval_cfg: dict | None = None) -> tuple[str, ...]:
    """Where the metric the evaluation scores with lives."""
    name = metric_name(registries, dataset_cls, eval_cfg)
    return (registries.metric.target(name),) if name and name in registries.metric else ()


def _training_view(dataset_data: dict, dataset_cls) -> dict:
    """The dataset config tuning stages train on: without the options that change only the
    evaluated split (``DatasetPlugin.test_only_options``), so those stages are shared across them."""
    dropped = set(dataset_cls.test_only_options) & set(dataset_data["options"])
    if not dropped:
        return dataset_data
    return {**dataset_data, "options": {k: v for k, v in dataset_data["options"].items() if k not in dropped}}


def build_plan(run: ResolvedRun, registries, catalog: DataCatalog) -> list[Stage]:
    cfg = run.config
    stages: list[Stage] = []
    parent: Stage | None = None
    encoder_cls = registries.encoder.get(cfg["model"]["type"])
    common = {"model": cfg["model"], "seed": cfg["seed"], "data_pipeline": _numeric(cfg["data"], NON_NUMERIC_DATA)}
    dataset_data = {k: cfg["dataset"][k] for k in ("type", "root", "options", "on_error")}
    dataset_cls = registries.dataset.get(dataset_data["type"])
    dataset_fp = catalog.fingerprint(dataset_data)

    if cfg["pretrain"] is not None:
        stage_cfg = copy.deepcopy(cfg["pretrain"])
        corpus = stage_cfg.pop("corpus")
        data = {**corpus, "split": "train", "fingerprint": catalog.fingerprint(corpus)}
        cls = registries.pretrain.get(stage_cfg["type"])
        corpus_cls = registries.dataset.get(corpus["type"])
        code = code_key(cls, corpus_cls, encoder_cls, *_task_classes(registries, corpus_cls, pretrain=True))
        inputs = {
            "kind": "pretrain",
            "cfg": _keyed_stage_cfg(stage_cfg),
            "data": {k: v for k, v in data.items() if k != "root"},
            "code": code,
            **common,
        }
        parent = Stage("pretrain", stage_cfg["type"], 0, stage_cfg, data, _stage_key(inputs), None, inputs)
        stages.append(parent)

    tune_tasks = _task_classes(registries, dataset_cls, pretrain=False)
    train_data = _training_view(dataset_data, dataset_cls)
    train_fp = dataset_fp if train_data is dataset_data else catalog.fingerprint(train_data)
    for i, stage_cfg in enumerate(cfg["tune"]):
        cls = registries.tune.get(stage_cfg["type"])
        data = {**train_data, "split": "train", "fingerprint": train_fp}
        inputs = {
            "kind": "tune",
            "cfg": _keyed_stage_cfg(stage_cfg),
            "data": {k: v for k, v in data.items() if k != "root"},
            "code": code_key(cls, dataset_cls, encoder_cls, *tune_tasks),
            "parent": parent.key if parent else None,
            **common,
        }
        stage = Stage("tune", stage_cfg["type"], i, copy.deepcopy(stage_cfg), data, _stage_key(inputs), parent, inputs)
        stages.append(stage)
        parent = stage

    data = {**dataset_data, "split": cfg["eval"]["split"], "fingerprint": dataset_fp}
    # the evaluation's own code too (metric, task type, umdbench's evaluation loop): its key is the
    # cell key, so a change there must not return the row stored before it. The metric (eval.metric,
    # in cfg["eval"]) enters this key only: cells that differ in it share every training stage
    code = code_key(
        dataset_cls, encoder_cls, *tune_tasks, targets=_metric_targets(registries, dataset_cls, cfg["eval"])
    )
    inputs = {
        "kind": "eval",
        "cfg": cfg["eval"],
        "data": {k: v for k, v in data.items() if k != "root"},
        "parent": parent.key,
        "batch": cfg["data"]["eval_batch_size"],
        "code": code,
    }
    stages.append(Stage("eval", "eval", 0, copy.deepcopy(cfg["eval"]), data, _stage_key(inputs), parent, inputs))
    return stages


def describe_plan(stages: list[Stage], is_cached: Callable[[Stage], bool] | None = None) -> str:
    """One line per stage; ``is_cached`` (e.g. ``Workspace.is_trained``) marks cached stages."""
    lines = []
    for n, stage in enumerate(stages, 1):
        extra = f" metric {stage.cfg['metric']}" if stage.kind == "eval" and stage.cfg.get("metric") else ""
        if stage.kind != "eval":
            train = stage.cfg.get("train", {})
            iters, batch, lr = (train.get(k, "?") for k in ("max_iters", "batch_size", "lr"))
            extra = f" {iters} iters x batch {batch}, lr {lr}"
        cached = "  [cached]" if is_cached is not None and stage.kind != "eval" and is_cached(stage) else ""
        parent = f" <- {stage.parent.key[:12]}" if stage.parent else ""
        lines.append(
            f"  {n}. {stage.title:<18} key {stage.key[:12]}{parent}"
            f"  data {stage.data['type']}:{stage.data['split']}{extra}{cached}"
        )
    return "\n".join(lines)

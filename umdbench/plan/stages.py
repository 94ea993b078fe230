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
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from umdbench.plan.codekey import code_key, modules_digest
from umdbench.plan.config import ResolvedRun, default_metric
from umdbench.util import atomic_write_json, config_hash

log = logging.getLogger("umdbench.data")


# Settings that cannot change a stage's numbers, left out of its key so that changing them reuses
# the cache: loader workers (each record's pixels and the sampler order do not depend on them),
# the image cache (it stores exactly what decoding returns), log and checkpoint intervals and how
# many checkpoints are kept (bookkeeping of the runner only), whether the optimiser steps inside
# backward (the same updates bit for bit, tests/test_step_in_backward.py) and whether the encoder
# blocks recompute their activations in backward (the same updates, tests/test_activation_checkpointing.py).
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

# the planner's on-disk cache in the work dir (DataCatalog(cache_dir=...)), and its entry limit
PLANNING_CACHE = "planning-cache.json"
PLANNING_CACHE_MAX = 512


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


class DataCatalog:
    """Dataset plugin instances, built once per (type, root, options), and the records of each
    split after the checks a run needs (:meth:`checked_records`)."""

    def __init__(self, registries, cache_dir: str | Path | None = None):
        self.registries = registries
        # planning results kept across processes (``--dry-run`` and sweeps with a warm work dir):
        # which images of a split are missing, keyed by the data's fingerprint (annotation bytes +
        # image listing) and the plugin's code, so any change to either recomputes it
        self.cache_path = Path(cache_dir) / PLANNING_CACHE if cache_dir is not None else None
        self._disk: dict | None = None
        self._cache: dict[str, object] = {}
        self._missing: dict[str, tuple[list[str], int]] = {}
        self._checked: dict[str, list] = {}
        self._image_problems: dict[tuple[str, int | None], str | None] = {}

    @staticmethod
    def _key(data_cfg: dict) -> str:
        return config_hash({k: data_cfg.get(k) for k in ("type", "root", "options")}) + data_cfg.get(
            "on_error", "raise"
        )

    def get(self, data_cfg: dict):
        key = self._key(data_cfg)
        if key not in self._cache:
            cls = self.registries.dataset.get(data_cfg["type"])
            with self.registries.dataset.guard(data_cfg["type"], f"reading its options {data_cfg.get('options', {})}"):
                self._cache[key] = cls(
                    root=data_cfg.get("root"), on_error=data_cfg.get("on_error", "raise"), **data_cfg.get("options", {})
                )
        return self._cache[key]

    def fingerprint(self, data_cfg: dict) -> str:
        return self.get(data_cfg).fingerprint()

    def missing_images(self, data_cfg: dict, split: str) -> tuple[list[str], int]:
        """``(missing image files, records)`` of one split: files its records name that do not
        exist. Empty for ``on_error: skip`` (those records are dropped, not fatal)."""
        if data_cfg.get("on_error", "raise") == "skip":
            return [], 0
        key = config_hash({k: data_cfg.get(k) for k in ("type", "root", "options")}) + split
        if key not in self._missing:
            disk_key = self._disk_key(data_cfg, split) if self.cache_path is not None else None
            hit = self._disk_cache().get(disk_key) if disk_key else None
            if hit is not None:
                self._missing[key] = ([], int(hit))
                return self._missing[key]
            records = self.get(data_cfg).records(split)
            paths = {str(r.image) for r in records if isinstance(r.image, (str, Path))}
            self._missing[key] = (sorted(p for p in paths if not Path(p).is_file()), len(records))
            if disk_key and not self._missing[key][0]:
                # only "nothing missing" is remembered: should it go stale (a plugin whose
                # fingerprint skips its images), run_cell's data check still stops the run before
                # training; a split with missing images is looked at afresh every time
                self._remember(disk_key, len(records))
        return self._missing[key]

    # -- the on-disk planning cache ----------------------------------------------------------
    def _disk_key(self, data_cfg: dict, split: str) -> str:
        cls = self.registries.dataset.get(data_cfg["type"])
        return config_hash(
            {
                "what": "missing_images",
                "split": split,
                "fingerprint": self.fingerprint(data_cfg),
                "data": {k: data_cfg.get(k) for k in ("type", "root", "options")},
                "code": modules_digest(cls.__module__),
            }
        )

    def _disk_cache(self) -> dict:
        if self._disk is None:
            self._disk = {}
            if self.cache_path is not None and self.cache_path.is_file():
                try:
                    loaded = json.loads(self.cache_path.read_text())
                    self._disk = loaded if isinstance(loaded, dict) else {}
                except (OSError, ValueError):
                    self._disk = {}  # unreadable: recompute (it is only a cache)
        return self._disk

    def _remember(self, key: str, value) -> None:
        cache = self._disk_cache()
        cache[key] = value
        # only into an existing work dir: a dry run on a new one writes nothing
        if self.cache_path is None or not self.cache_path.parent.is_dir():
            return
        if len(cache) > PLANNING_CACHE_MAX:  # oldest first (dicts keep insertion order)
            for old in list(cache)[: len(cache) - PLANNING_CACHE_MAX]:
                del cache[old]
        try:
            atomic_write_json(self.cache_path, cache)
        except OSError:
            pass  # a read-only work dir plans without the cache

    def checked_records(
        self, data_cfg: dict, split: str, image_size: int | None = None, cache_dir: Path | None = None
    ) -> list:
        """The records of a split once it is known to be usable: not empty, unique record ids,
        every image inside the dataset's folder and decodable (through the image cache at
        ``image_size``, which training then reads; without a size, a full decode). With
        ``on_error: skip`` records whose image is missing or corrupt are dropped and added to the
        plugin's ``skipped``; otherwise the first problem raises :class:`DataError` naming the
        file, the record and the fix. Checked once per process and split."""
        from umdbench.api import DataError

        key = self._key(data_cfg) + split
        if key in self._checked:
            return list(self._checked[key])
        name, dataset = data_cfg["type"], self.get(data_cfg)
        skip = data_cfg.get("on_error", "raise") == "skip"
        records = dataset.records(split)
        look = f"`umdbench data check {name}` shows what it found"
        if not records:
            raise DataError(
                f"dataset {name!r} has no records in split {split!r} (under {data_cfg.get('root') or 'generated data'}); "
                f"fix: restore its annotation file or choose another split; {look}."
            )
        seen: dict[str, object] = {}
        for r in records:
            if r.uid in seen:
                raise DataError(
                    f"dataset {name!r} split {split!r}: record id {r.uid!r} occurs twice "
                    f"({_where(seen[r.uid])} and {_where(r)}); fix: remove the duplicate from the "
                    f"annotation file (record ids must be unique) or re-download the release; {look}."
                )
            seen[r.uid] = r
        root = os.path.abspath(data_cfg["root"]) if data_cfg.get("root") else None
        loader = None
        if image_size:
            from umdbench.data.images import ImageLoader

            loader = ImageLoader(int(image_size), cache_dir)
        kept, dropped = [], 0
        for r in records:
            problem = self._image_problem(r.image, root, loader) if isinstance(r.image, (str, Path)) else None
            if problem is None:
                kept.append(r)
                continue
            message = f"{_where(r)} of dataset {name!r} split {split!r}: image {r.image} {problem}"
            if not skip:
                raise DataError(
                    f"{message}; fix: restore or re-download that file (`umdbench data check {name}` "
                    f"lists every bad image), or leave such records out with --cfg-options "
                    f"dataset.on_error=skip. Nothing was trained."
                )
            dataset.skipped.append(message)
            dropped += 1
        if dropped:
            log.warning(
                "dataset %s split %s: %d record(s) skipped for a missing or corrupt image, %d kept",
                name,
                split,
                dropped,
                len(kept),
            )
        if not kept:
            raise DataError(
                f"dataset {name!r} split {split!r}: every record was skipped (on_error=skip), the "
                f"first for: {dataset.skipped[-dropped]}; fix: restore the images; {look}."
            )
        self._checked[key] = kept
        return list(kept)

    def _image_problem(self, image, root: str | None, loader) -> str | None:
        path = os.path.abspath(str(image))
        # normpath, not resolve: a symlinked dataset folder is fine, a '../' out of it is not
        if root is not None and not os.path.normpath(path).startswith(os.path.normpath(root) + os.sep):
            return f"lies outside the dataset folder {root}"
        memo = (path, loader.image_size if loader else None)
        if memo not in self._image_problems:
            if loader is not None:
                self._image_problems[memo] = loader.check(path)
            else:
                from umdbench.data.check import verify_image

                reason = verify_image(path, deep=True)
                self._image_problems[memo] = (
                    None if reason is None else ("does not exist" if reason == "missing" else f"is {reason}")
                )
        return self._image_problems[memo]

    def skipped(self, data_cfg: dict) -> int:
        """Records the plugin has skipped so far (malformed fields, missing or corrupt images)."""
        return len(getattr(self.get(data_cfg), "skipped", []) or [])


def _where(record) -> str:
    file = record.extra.get("file") if isinstance(getattr(record, "extra", None), dict) else None
    return f"record {record.uid}" + (f" ({file})" if file else "")


def check_cell_data(stages: list, catalog: DataCatalog, run_config: dict, cache_dir: Path | None = None) -> None:
    """Check every split a planned cell reads (pre-training corpus, training split, evaluation
    split) before its first stage trains: a corrupt test image must stop the run in seconds, not
    after hours of training. Raises :class:`DataError` (see :meth:`DataCatalog.checked_records`)."""
    size = (run_config.get("model") or {}).get("image_size")
    cache = cache_dir if (run_config.get("data") or {}).get("image_cache", True) else None
    done = set()
    for stage in stages:
        key = (DataCatalog._key(stage.data), stage.data["split"])
        if key not in done:
            done.add(key)
            catalog.checked_records(stage.data, stage.data["split"], size if isinstance(size, int) else None, cache)


def skipped_counts(stages: list, catalog: DataCatalog) -> dict[str, int]:
    """``{dataset type: records skipped}`` over the data a cell read (only types that skipped any)."""
    out: dict[str, int] = {}
    for stage in stages:
        n = catalog.skipped(stage.data)
        if n:
            out[stage.data["type"]] = n
    return out


def missing_data(stages: list, catalog: DataCatalog) -> str | None:
    """Why a planned cell cannot run to the end for want of image files, or None: checked before
    any training so that a cell whose test images are absent is not trained for hours first."""
    for stage in stages:
        data = stage.data
        missing, total = catalog.missing_images(data, data["split"])
        if missing:
            return (
                f"{len(missing)} image file(s) of {data['type']}:{data['split']} ({total} records) do not exist, "
                f"e.g. {missing[0]}; fix: restore them (`umdbench data check {data['type']}` lists each one) "
                f"or leave {data['type']} out with --datasets"
            )
    return None


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
            extra = f" {train.get('max_iters', '?')} iters x batch {train.get('batch_size', '?')}, lr {train.get('lr', '?')}"
        cached = "  [cached]" if is_cached is not None and stage.kind != "eval" and is_cached(stage) else ""
        parent = f" <- {stage.parent.key[:12]}" if stage.parent else ""
        lines.append(
            f"  {n}. {stage.title:<18} key {stage.key[:12]}{parent}  data {stage.data['type']}:{stage.data['split']}{extra}{cached}"
        )
    return "\n".join(lines)

"""Resolved config -> a chain of stages, each keyed by a hash of everything upstream of it.

A stage's key covers its own config, the encoder config, the seed, the fingerprint of the data it
reads, the code version of its plugin, and its parent's key. Two cells that share a pre-training
(same strategy, config, corpus and seed) therefore share that stage's cached artifact.
"""
from __future__ import annotations

import copy
import hashlib
import inspect
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

from umdbench.plan.config import ResolvedRun
from umdbench.util import config_hash


@lru_cache(maxsize=None)
def _source_hash(module_name: str) -> str:
    module = sys.modules[module_name]
    try:
        source = inspect.getsource(module)
    except (OSError, TypeError):
        return "nosource"
    return hashlib.sha256(source.encode()).hexdigest()[:10]


@lru_cache(maxsize=1)
def encoder_code_version() -> str:
    """Hash of the shared model code: a change there invalidates every cached stage."""
    folder = Path(__file__).resolve().parents[1] / "models"
    digest = hashlib.sha256()
    for file in sorted(folder.glob("*.py")):
        digest.update(file.name.encode() + file.read_bytes())
    kit = Path(__file__).resolve().parents[1] / "kit"
    for name in ("imagetext.py", "tasktypes.py"):  # the built-in task types' records -> tensors
        digest.update((kit / name).read_bytes())
    return digest.hexdigest()[:10]


def code_version(cls) -> str:
    return f"{getattr(cls, 'version', '0')}-{_source_hash(cls.__module__)}"


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
    """Dataset plugin instances, built once per (type, root, options)."""

    def __init__(self, registries):
        self.registries = registries
        self._cache: dict[str, object] = {}
        self._missing: dict[str, tuple[list[str], int]] = {}

    def get(self, data_cfg: dict):
        on_error = data_cfg.get("on_error", "raise")
        key = config_hash({k: data_cfg.get(k) for k in ("type", "root", "options")}) + on_error
        if key not in self._cache:
            cls = self.registries.dataset.get(data_cfg["type"])
            with self.registries.dataset.guard(data_cfg["type"], f"reading its options {data_cfg.get('options', {})}"):
                self._cache[key] = cls(root=data_cfg.get("root"), on_error=on_error, **data_cfg.get("options", {}))
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
            records = self.get(data_cfg).records(split)
            paths = {str(r.image) for r in records if isinstance(r.image, (str, Path))}
            self._missing[key] = (sorted(p for p in paths if not Path(p).is_file()), len(records))
        return self._missing[key]


def missing_data(stages: list, catalog: DataCatalog) -> str | None:
    """Why a planned cell cannot run to the end for want of image files, or None: checked before
    any training so that a cell whose test images are absent is not trained for hours first."""
    for stage in stages:
        data = stage.data
        missing, total = catalog.missing_images(data, data["split"])
        if missing:
            return (f"{len(missing)} image file(s) of {data['type']}:{data['split']} ({total} records) do not exist, "
                    f"e.g. {missing[0]}; fix: restore them (`umdbench data check {data['type']}` lists each one) "
                    f"or leave {data['type']} out with --datasets")
    return None


def _stage_key(inputs: dict) -> str:
    return config_hash(inputs)


def build_plan(run: ResolvedRun, registries, catalog: DataCatalog) -> list[Stage]:
    cfg = run.config
    stages: list[Stage] = []
    parent: Stage | None = None
    common = {"model": cfg["model"], "seed": cfg["seed"], "data_pipeline": cfg["data"], "encoder_code": encoder_code_version()}
    dataset_data = {k: cfg["dataset"][k] for k in ("type", "root", "options", "on_error")}
    dataset_fp = catalog.fingerprint(dataset_data)

    if cfg["pretrain"] is not None:
        stage_cfg = copy.deepcopy(cfg["pretrain"])
        corpus = stage_cfg.pop("corpus")
        data = {**corpus, "split": "train", "fingerprint": catalog.fingerprint(corpus)}
        cls = registries.pretrain.get(stage_cfg["type"])
        inputs = {"kind": "pretrain", "cfg": stage_cfg, "data": {k: v for k, v in data.items() if k != "root"},
                  "code": code_version(cls), **common}
        parent = Stage("pretrain", stage_cfg["type"], 0, stage_cfg, data, _stage_key(inputs), None, inputs)
        stages.append(parent)

    for i, stage_cfg in enumerate(cfg["tune"]):
        cls = registries.tune.get(stage_cfg["type"])
        data = {**dataset_data, "split": "train", "fingerprint": dataset_fp}
        inputs = {"kind": "tune", "cfg": stage_cfg, "data": {k: v for k, v in data.items() if k != "root"},
                  "code": code_version(cls), "parent": parent.key if parent else None, **common}
        stage = Stage("tune", stage_cfg["type"], i, copy.deepcopy(stage_cfg), data, _stage_key(inputs), parent, inputs)
        stages.append(stage)
        parent = stage

    data = {**dataset_data, "split": cfg["eval"]["split"], "fingerprint": dataset_fp}
    inputs = {"kind": "eval", "cfg": cfg["eval"], "data": {k: v for k, v in data.items() if k != "root"},
              "parent": parent.key, "batch": cfg["data"]["eval_batch_size"]}
    stages.append(Stage("eval", "eval", 0, copy.deepcopy(cfg["eval"]), data, _stage_key(inputs), parent, inputs))
    return stages


def describe_plan(stages: list[Stage], is_cached: Callable[[Stage], bool] | None = None) -> str:
    """One line per stage; ``is_cached`` (e.g. ``Workspace.is_trained``) marks cached stages."""
    lines = []
    for n, stage in enumerate(stages, 1):
        extra = ""
        if stage.kind != "eval":
            train = stage.cfg.get("train", {})
            extra = f" {train.get('max_iters', '?')} iters x batch {train.get('batch_size', '?')}, lr {train.get('lr', '?')}"
        cached = "  [cached]" if is_cached is not None and stage.kind != "eval" and is_cached(stage) else ""
        parent = f" <- {stage.parent.key[:12]}" if stage.parent else ""
        lines.append(
            f"  {n}. {stage.title:<18} key {stage.key[:12]}{parent}  data {stage.data['type']}:{stage.data['split']}{extra}{cached}"
        )
    return "\n".join(lines)

"""Everything a stage is built from: encoder, strategy, task type, torch dataset, optimiser,
schedule, data loader and the mmengine Runner (with its hooks and visualiser backends).

:class:`RunContext` bundles what every builder needs: the :class:`~umdbench.run.workspace.Workspace`,
the plugin registries and the dataset catalog (plugin instances, built once per process).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from umdbench.api import DataContext, Encoder, TaskInfo, TaskType
from umdbench.data.catalog import DataCatalog
from umdbench.errors import ConfigError, UmdbenchError
from umdbench.plan.codekey import modules_digest
from umdbench.plan.config import TRACKING_BACKENDS, ResolvedRun
from umdbench.plan.stages import Stage
from umdbench.results.provenance import device_description
from umdbench.run.workspace import Workspace
from umdbench.util import config_hash, resolve_amp

__all__ = [
    "RunContext",
    "build_dataset",
    "build_optim_wrapper",
    "build_strategy",
    "compile_strategy",
    "dataloader_cfg",
    "lr_schedule",
    "make_runner",
    "stage_task_type",
    "use_amp",
]


def echo(message: str) -> None:
    print(message, flush=True)


@dataclass
class RunContext:
    """The work dir, the registries and the dataset catalog of one process."""

    ws: Workspace
    registries: object
    catalog: DataCatalog = None
    _tokenizers: dict = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.ws, Workspace):
            self.ws = Workspace(self.ws)
        self.catalog = self.catalog or DataCatalog(
            self.registries, cache_file=self.ws.planning_cache_path, code_digest=modules_digest
        )
        PluginLogs.route(self.registries)  # before any plugin code runs in this context

    def encoder_class(self, model_cfg: dict) -> type[Encoder]:
        return self.registries.encoder.get(model_cfg["type"])

    def tokenizer(self, model_cfg: dict):
        """The encoder's tokenizer (None for an encoder without text), built once per config."""
        key = config_hash(model_cfg)
        if key not in self._tokenizers:
            self._tokenizers[key] = self.encoder_class(model_cfg).build_tokenizer(model_cfg)
        return self._tokenizers[key]


# ---------------------------------------------------------------------------------------------
# task types and strategies
# ---------------------------------------------------------------------------------------------
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


def task_info(dataset, spec: TaskType) -> TaskInfo:
    names = dataset.label_names() or []
    return TaskInfo(task=dataset.task, num_classes=len(names), label_names=list(names), spec=spec)


def special_ids(tokenizer) -> dict | None:
    if tokenizer is None:
        return None
    from umdbench.models.text import special_ids_from_tokenizer

    return special_ids_from_tokenizer(tokenizer)


def build_strategy(stage: Stage, run: ResolvedRun, ctx: RunContext, load_parent: bool = True):
    """The stage's strategy on a fresh encoder, started from the parent stage's artifact: the
    encoder strictly, the heads the strategy declares (:meth:`Strategy.head_state_prefixes`)
    where names and shapes match."""
    from mmengine.runner import set_random_seed

    set_random_seed(run.config["seed"])  # encoder and head initialisation depend on the seed only
    model_cfg = run.config["model"]
    with ctx.registries.encoder.guard(model_cfg["type"], "building the encoder"):
        encoder = ctx.encoder_class(model_cfg).from_config(model_cfg)
    parent_state = None
    if load_parent and stage.parent is not None:
        parent_state = ctx.ws.load_stage(stage.parent)
        encoder_state = {k[len("encoder.") :]: v for k, v in parent_state.items() if k.startswith("encoder.")}
        encoder.load_state_dict(encoder_state, strict=True)
    cfg = dict(stage.cfg)
    ids = special_ids(ctx.tokenizer(model_cfg))
    if ids is not None:
        cfg["special_ids"] = ids
    if stage.kind == "pretrain":
        with ctx.registries.pretrain.guard(stage.name, "building the strategy"):
            return ctx.registries.pretrain.get(stage.name)(encoder, cfg)
    dataset = ctx.catalog.get(stage.data)
    info = task_info(dataset, stage_task_type(ctx, dataset, "tune"))
    with ctx.registries.tune.guard(stage.name, "building the strategy"):
        strategy = ctx.registries.tune.get(stage.name)(encoder, cfg, info)
    if parent_state is not None:
        carry_over_heads(strategy, parent_state)
    return strategy


def carry_over_heads(strategy, parent_state: dict) -> list[str]:
    """Start the heads a strategy shares with its parent from the parent's weights, as the released
    code does (MR-Pretrain -> TD-Calib). Returns the keys loaded; heads the parent lacks, or whose
    shapes differ, keep their fresh initialisation."""
    prefixes = tuple(strategy.head_state_prefixes())
    if not prefixes:
        return []
    own = strategy.state_dict()
    carried = {k: v for k, v in parent_state.items() if k.startswith(prefixes) and k in own and own[k].shape == v.shape}
    strategy.load_state_dict(carried, strict=False)
    return sorted(carried)


def artifact_state(strategy) -> dict:
    """What a finished stage stores: the strategy's state minus its declared transient state."""
    transient = tuple(strategy.transient_state_prefixes())
    return {k: v for k, v in strategy.state_dict().items() if not (transient and k.startswith(transient))}


def load_for_evaluation(strategy, stage: Stage, ctx: RunContext) -> None:
    """Load a tuned stage's artifact into a fresh copy of its strategy; every non-transient key
    must fit, so an artifact from another strategy or geometry is refused."""
    state = ctx.ws.load_stage(stage)
    missing, unexpected = strategy.load_state_dict(state, strict=False)
    transient = tuple(strategy.transient_state_prefixes())
    missing = [k for k in missing if not (transient and k.startswith(transient))]
    if missing or unexpected:
        raise UmdbenchError(
            f"artifact {ctx.ws.weights_path(stage)} does not fit strategy {stage.name!r}: missing "
            f"{missing[:5]}, unexpected {unexpected[:5]}. Delete the folder "
            f"{ctx.ws.stage_dir(stage)} to retrain it."
        )


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
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
    cache_dir = image_cache_dir(run, ctx)
    records = stage_records(stage, run, ctx, split)
    if training and stage.kind == "tune":
        records = label_subset(records, stage.cfg["train"].get("label_fraction", 1.0), run.config["seed"])
    spec = stage_task_type(ctx, dataset, stage.kind)
    data_ctx = DataContext(
        model_cfg=model_cfg,
        stage_cfg=stage.cfg,
        tokenizer=ctx.tokenizer(model_cfg),
        label_names=list(dataset.label_names() or []),
        seed=run.config["seed"],
        cache_dir=cache_dir,
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


# ---------------------------------------------------------------------------------------------
# optimisation
# ---------------------------------------------------------------------------------------------
def use_amp(train: dict) -> bool:
    """bf16 autocast for the stage: ``train.amp`` as planned (:func:`umdbench.util.resolve_amp`;
    "auto" = bf16 where native: CUDA, or a CPU with AVX-512 BF16 / AMX). False = fp32."""
    return resolve_amp(train.get("amp", False)) == "bf16"


@lru_cache(maxsize=None)
def bf16_optim_wrapper_class():
    """An mmengine ``OptimWrapper`` whose forward runs under bf16 autocast on the model's device
    (CPU or CUDA). No loss scaler: bf16 has fp32's exponent range. (mmengine's AmpOptimWrapper
    refuses CPUs and adds a GradScaler, which bf16 does not need.)"""
    import contextlib

    from mmengine.optim import OptimWrapper

    class Bf16OptimWrapper(OptimWrapper):
        cast_dtype = torch.bfloat16

        @contextlib.contextmanager
        def optim_context(self, model):
            param = next(model.parameters(), None)
            device = param.device.type if param is not None else "cpu"
            with super().optim_context(model), torch.autocast(device_type=device, dtype=torch.bfloat16):
                yield

    return Bf16OptimWrapper


def build_optim_wrapper(strategy, train: dict):
    """AdamW over the strategy's parameter groups, wrapped for mmengine.

    Performance options (read with defaults, so they need not be in the preset):
    ``fused`` ("auto": the fused AdamW kernel, CUDA or CPU), ``foreach`` ("auto": multi-tensor AdamW
    when ``fused`` is False; False = the per-tensor loop) and ``amp`` (see :func:`use_amp`: bf16
    autocast of the forward; weights, gradients and optimiser state stay fp32), ``step_in_backward``
    (see :mod:`umdbench.run.step_in_backward`: parameters stepped and their gradients freed in
    buckets during backward; "auto" = under bf16 autocast where nothing needs all gradients at once). Parameters under the
    strategy's :meth:`transient_state_prefixes` are never optimised.
    """
    from mmengine.optim import OptimWrapper

    transient = tuple(strategy.transient_state_prefixes())
    groups: dict[str, list] = {}
    no_decay: dict[str, list] = {}
    for name, param in strategy.named_parameters():
        if not param.requires_grad or (transient and name.startswith(transient)):
            continue
        group = strategy.param_group_of(name)
        # upstream convention: no weight decay on biases and normalisation weights
        target = no_decay if (param.ndim <= 1 or name.endswith(".bias")) else groups
        target.setdefault(group, []).append(param)
    lr = float(train["lr"])
    mult = train.get("lr_mult", {})
    param_groups = []
    for store, wd in ((groups, float(train.get("weight_decay", 0.01))), (no_decay, 0.0)):
        for group, params in store.items():
            param_groups.append({"params": params, "lr": lr * float(mult.get(group, 1.0)), "weight_decay": wd})
    if not param_groups:
        raise UmdbenchError("the strategy has no trainable parameters")
    kwargs = {"betas": tuple(train.get("betas", (0.9, 0.98))), "eps": float(train.get("eps", 1e-8))}
    if train.get("fused", "auto") in ("auto", True):
        # one fused kernel per parameter on CUDA and on CPU (torch >= 2.4): on this project's
        # 2-core CPU it steps 88 M parameters 3.4x faster than the per-tensor loop and 6x faster
        # than foreach, whose CPU path is a slow per-tensor fallback (BENCHMARKS.md)
        kwargs["fused"] = True
    else:
        kwargs["foreach"] = train.get("foreach", "auto") is not False
    optimizer = torch.optim.AdamW(param_groups, **kwargs)
    clip = train.get("grad_clip")
    clip_grad = {"max_norm": float(clip)} if clip else None
    amp = use_amp(train)
    wrapper = bf16_optim_wrapper_class() if amp else OptimWrapper
    from umdbench.run.step_in_backward import step_in_backward_class, wants_step_in_backward

    if wants_step_in_backward(strategy, train, amp):
        wrapper = step_in_backward_class(wrapper)
    return wrapper(optimizer, clip_grad=clip_grad, accumulative_counts=accumulation(train))


def accumulation(train: dict) -> int:
    """Micro-batches per optimiser step (``train.accumulative_counts``; checked when the run is
    planned, :func:`umdbench.plan.config.check_accumulation`)."""
    return int(train.get("accumulative_counts", 1) or 1)


def compile_strategy(strategy, train: dict) -> bool:
    """``train.compile`` (default False): ``torch.compile`` the strategy's
    :meth:`~umdbench.api.Strategy.compile_targets` in place. Parameter names, state dicts and
    checkpoints are unchanged (``nn.Module.compile``). Returns whether anything was compiled."""
    if not train.get("compile", False):
        return False
    mode = train.get("compile_mode") or None
    targets = strategy.compile_targets()
    for module in targets:
        module.compile(mode=mode, dynamic=None)
    return bool(targets)


def lr_schedule(train: dict) -> list[dict]:
    """Warm-up then decay, in loop iterations: with gradient accumulation a loop iteration is one
    micro-batch, so the bounds are optimiser steps x ``accumulative_counts``."""
    accum = accumulation(train)
    total = int(train["max_iters"]) * accum
    warm = int(round(float(train.get("warmup_ratio", 0.1)) * int(train["max_iters"]))) * accum
    schedule = []
    if warm > 0:
        schedule.append(
            {"type": "LinearLR", "start_factor": 1e-3, "end_factor": 1.0, "by_epoch": False, "begin": 0, "end": warm}
        )
    if train.get("schedule", "linear") == "cosine":
        schedule.append(
            {
                "type": "CosineAnnealingLR",
                "T_max": total - warm,
                "eta_min": 0.0,
                "by_epoch": False,
                "begin": warm,
                "end": total,
            }
        )
    else:
        schedule.append(
            {"type": "LinearLR", "start_factor": 1.0, "end_factor": 0.0, "by_epoch": False, "begin": warm, "end": total}
        )
    return schedule


# ---------------------------------------------------------------------------------------------
# the mmengine Runner
# ---------------------------------------------------------------------------------------------
# mmengine notices about its own deprecations, irrelevant to a umdbench user (kept in the file log)
_MMENGINE_NOTICES = ("will be deprecated", "is the alias of", "has no metainfo", "prefix is not set")


def _drop_mmengine_notices(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not any(notice in message for notice in _MMENGINE_NOTICES)


def vis_backends(run: ResolvedRun, work_dir: Path, experiment: str) -> list[dict]:
    """mmengine visualiser backends of a stage: always the local one, plus TensorBoard / MLflow when
    the run's ``tracking.backends`` lists them (checked when the run was resolved)."""
    tracking = run.config.get("tracking") or {}
    backends = [{"type": "LocalVisBackend"}]
    for name in tracking.get("backends") or []:
        entry = {"type": TRACKING_BACKENDS[name][0]}
        if name == "mlflow":
            entry.update(
                {
                    "exp_name": "umdbench",
                    "run_name": experiment,
                    "tracking_uri": tracking.get("mlflow_uri") or (work_dir / "mlruns").resolve().as_uri(),
                }
            )
        backends.append(entry)
    return backends


def make_runner(stage: Stage, run: ResolvedRun, ctx: RunContext, model, work_dir: Path, **kwargs):
    from mmengine.hooks import Hook
    from mmengine.runner import Runner

    from umdbench.run.hooks import ProgressHook

    class StageRunner(Runner):
        """A Runner whose console stays quiet (the full log still goes to the work dir)."""

        def build_logger(self, log_level="INFO", log_file=None, **kw):
            logger = super().build_logger(log_level=log_level, log_file=log_file, **kw)
            for handler in logger.handlers:
                if type(handler) is logging.StreamHandler:
                    handler.setLevel(logging.WARNING)
                    handler.addFilter(_drop_mmengine_notices)
            return logger

        def _log_env(self, env_cfg):  # mmengine's collects compiler/CUDA details: slow and noisy
            precision = "bf16 autocast" if use_amp(train) else "fp32"
            self.logger.info(
                f"umdbench stage {stage.dirname}; device {device_description()}; {precision}; seed {self._seed}"
            )

    plugin_logs = PluginLogs.route(ctx.registries)
    train = stage.cfg.get("train", {})

    class PluginLogHook(Hook):
        priority = "VERY_HIGH"

        def before_run(self, runner) -> None:
            plugin_logs.to_log_of(runner)

        def after_run(self, runner) -> None:
            plugin_logs.hold()

    return StageRunner(
        model=model,
        work_dir=str(work_dir),
        experiment_name=f"{stage.dirname}",
        randomness={"seed": run.config["seed"]},
        default_hooks={
            "logger": {
                "type": "LoggerHook",
                "interval": int(train.get("log_interval", 10)) * accumulation(train),
                "log_metric_by_epoch": False,
            },
            "checkpoint": None,
            "timer": {"type": "IterTimerHook"},
        },
        custom_hooks=[ProgressHook(stage.title), PluginLogHook()],
        log_processor={"by_epoch": False},
        env_cfg={"cudnn_benchmark": False},
        visualizer={
            "type": "Visualizer",
            "vis_backends": vis_backends(run, Path(work_dir), stage.dirname),
            "name": f"vis-{stage.dirname}-{time.time_ns()}",
        },
        **kwargs,
    )


class PluginLogs:
    """Records of plugin packages' loggers (``logging.getLogger(__name__)`` in a plugin) go to the
    console and to the mmengine log of the stage being run. Records emitted while no Runner runs
    (a strategy being built) are held and written into the next stage's log when it starts.
    One instance per process: handlers are added to each package logger once."""

    _instance: "PluginLogs | None" = None

    def __init__(self):
        import logging.handlers

        self.console = logging.StreamHandler(sys.stdout)
        self.console.setFormatter(logging.Formatter("    [%(name)s] %(levelname)s: %(message)s"))
        self.held = logging.handlers.MemoryHandler(capacity=10_000, flushLevel=logging.DEBUG, target=None)
        self.routed: set[str] = set()

    @classmethod
    def route(cls, registries) -> "PluginLogs":
        if cls._instance is None:
            cls._instance = cls()
        self = cls._instance
        for name in sorted(plugin_packages(registries) - self.routed):
            logger = logging.getLogger(name)
            if logger.level == logging.NOTSET:
                logger.setLevel(logging.INFO)
            logger.addHandler(self.console)
            logger.addHandler(self.held)
            self.routed.add(name)
        return self

    def to_log_of(self, runner) -> None:
        files = [h for h in runner.logger.handlers if isinstance(h, logging.FileHandler)]
        self.held.setTarget(files[0] if files else None)
        self.held.flush()

    def hold(self) -> None:
        self.held.setTarget(None)


def plugin_packages(registries) -> set[str]:
    """Top-level packages of every registered plugin class (``umdbench_plugins``, a third-party
    package, a ``--plugin-path`` module), whose loggers :class:`PluginLogs` routes."""
    names = set()
    for kind, reg in registries.kinds().items():
        if kind == "suite":
            continue
        for name in reg.names():
            module = reg.target(name).split(":", 1)[0]
            if not module.startswith("umdbench.") and module != "umdbench":
                names.add(module.split(".", 1)[0])
    return names


def distributed_runner_kwargs(launcher: str) -> dict:
    """Runner arguments for a multi-process stage (``launcher='pytorch'``, started by torchrun).

    The process group is created here, before the Runner (which then skips its own: mmengine's
    calls ``torch.cuda.set_device`` unconditionally), so that everything built before the Runner
    (the optimiser wrapper's step-in-backward choice) already sees the group. The model wrapper is
    :class:`~umdbench.run.data_parallel.StageDistributedDataParallel` on CPU and CUDA alike: the
    strategy hooks run as in one process.
    """
    if launcher == "none":
        return {}
    from umdbench.run.data_parallel import init_process_group, wrapper_cfg

    init_process_group()
    return {"launcher": launcher, "cfg": {"model_wrapper_cfg": wrapper_cfg(torch.cuda.is_available())}}

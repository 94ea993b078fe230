"""The mmengine Runner that trains or evaluates a stage: a quiet console (the full log goes to the
work dir), the stage's hooks (progress, plugin log routing), its visualiser backends, and the
arguments of a multi-process (torchrun) stage."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from umdbench.plan.config import TRACKING_BACKENDS, ResolvedRun
from umdbench.plan.stage_plan import Stage
from umdbench.results.provenance import device_description
from umdbench.run.console import PluginLogs
from umdbench.run.context import RunContext
from umdbench.run.train_settings import accumulation, use_amp

__all__ = ["distributed_runner_kwargs", "make_runner", "vis_backends"]

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
    """The Runner of one stage; ``kwargs`` (loaders, optimiser wrapper, schedule, loops, launcher)
    go to mmengine's ``Runner`` as they are."""
    from mmengine.hooks import Hook
    from mmengine.runner import Runner

    from umdbench.run.hooks import ProgressHook
    from umdbench.run.visualizer import ScalarVisualizer

    plugin_logs = PluginLogs.route(ctx.registries)
    train = stage.cfg.get("train", {})

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

    class PluginLogHook(Hook):
        priority = "VERY_HIGH"

        def before_run(self, runner) -> None:
            plugin_logs.to_log_of(runner)

        def after_run(self, runner) -> None:
            plugin_logs.hold()

    return StageRunner(
        model=model,
        work_dir=str(work_dir),
        # mmengine names the runner's logger, message hub, scope and visualiser after this (plus a
        # timestamp to the second) and hands an existing instance back for a name it has seen: the same
        # stage started again within that second in this process (another work dir) must not log into
        # the first
        experiment_name=f"{stage.dirname}-{time.time_ns()}",
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
            "type": ScalarVisualizer,  # mmengine's, without a matplotlib canvas until one is drawn on
            "vis_backends": vis_backends(run, Path(work_dir), stage.dirname),
        },
        **kwargs,
    )


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

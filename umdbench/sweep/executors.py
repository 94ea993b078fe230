"""Executors run a :class:`~umdbench.sweep.planning.SweepPlan`.

* :class:`LocalExecutor` (default): one process, stages in topological order, cell by cell, each
  cell evaluated as soon as its last stage is trained. With ``nproc_per_node > 1`` every training
  stage runs as a torchrun job (DDP, :mod:`umdbench.run.distributed`).
* :class:`RayExecutor`: every unique stage is a Ray task that waits for its parent's task;
  independent stages run in parallel over the cluster. Workers train and evaluate; the driver
  writes the results rows. Needs the optional extra ``pip install 'umdbench[ray]'`` and a work
  dir (and data root) that every node sees at the same path.

A failed stage does not stop the sweep: cells that need it are reported failed, the rest run on.
"""
from __future__ import annotations

import time
from pathlib import Path

from umdbench.errors import ConfigError, UmdbenchError
from umdbench.run.builders import RunContext, echo
from umdbench.run.cell import run_cell, store_result
from umdbench.run.stages import evaluate_stage, train_stage
from umdbench.sweep.planning import PlannedCell, SweepPlan, SweepReport, format_failure, mark


class StageFailed(UmdbenchError):
    """A cell needs a stage that already failed in this sweep (not retried within the sweep)."""


class LocalExecutor:
    name = "local"

    def __init__(self, nproc_per_node: int = 1, plugin_paths: tuple[str, ...] = ()):
        self.nproc_per_node = int(nproc_per_node)
        self.plugin_paths = tuple(plugin_paths)

    def run(self, plan: SweepPlan, ctx: RunContext, user_overrides=()) -> SweepReport:
        from umdbench.run.distributed import torchrun_trainer

        base = torchrun_trainer(self.nproc_per_node, self.plugin_paths) if self.nproc_per_node > 1 else train_stage
        report = SweepReport(skipped=plan.by_status("done"))
        failed_stages: dict[str, str] = {}
        needed = plan.needed_stages()
        order = {s.key: n for n, s in enumerate(needed, 1)}

        def train(stage, run, ctx, step):
            # sweep-wide numbering, and a stage that failed once fails its other cells at once
            if stage.key in failed_stages:
                raise StageFailed(f"needs stage {stage.title} {stage.key[:12]}, which failed: {failed_stages[stage.key]}")
            was_trained = ctx.ws.is_trained(stage)
            try:
                base(stage, run, ctx, f"[stage {order.get(stage.key, '?')}/{len(needed)}]")
            except Exception as exc:  # noqa: BLE001 - reported per cell, the sweep goes on
                failed_stages[stage.key] = f"{type(exc).__name__}: {exc}"
                raise StageFailed(f"stage {stage.title} {stage.key[:12]} failed:\n{format_failure(exc)}") from exc
            if not was_trained:
                report.stages_trained += 1

        for cell in list(plan.pending):
            if ctx.ws.store.get(cell.key) is not None:  # finished by another sweep meanwhile
                report.skipped.append(cell)
                mark(plan, ctx.ws, cell, "done", user_overrides=user_overrides)
                continue
            try:
                run_cell(cell.run, cell.stages, ctx, train=train)
            except StageFailed as exc:
                error = str(exc)
            except Exception as exc:  # noqa: BLE001 - one failed cell must not stop the sweep
                error = f"evaluation failed:\n{format_failure(exc)}"
            else:
                report.finished.append(cell)
                mark(plan, ctx.ws, cell, "done", user_overrides=user_overrides)
                continue
            echo(f"cell {cell.describe()} FAILED: {error}")
            report.failed.append((cell, error))
            mark(plan, ctx.ws, cell, "failed", error.splitlines()[0], user_overrides)
        return report


# ---------------------------------------------------------------------------------------------
# Ray
# ---------------------------------------------------------------------------------------------
def _worker_context(work_dir: str, plugin_paths: tuple[str, ...]) -> RunContext:
    from umdbench.plugin import get_registries

    return RunContext(Path(work_dir), get_registries(tuple(plugin_paths)))


def _ray_train(stage, run, work_dir, plugin_paths, *parents):
    """Ray task: train one stage (parents are the parent's task results, awaited by Ray)."""
    train_stage(stage, run, _worker_context(work_dir, plugin_paths), "[ray]")
    return stage.key


def _ray_eval(stage, run, work_dir, plugin_paths, *parents):
    """Ray task: evaluate one cell; the driver stores the row (one writer for the store)."""
    from umdbench.results.provenance import device_description

    started = time.time()
    metrics = evaluate_stage(stage, run, _worker_context(work_dir, plugin_paths), "[ray]")
    return {"metrics": metrics, "device": device_description(), "eval_s": time.time() - started}


class RayExecutor:
    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None, cpus_per_task: float = 1.0,
                 plugin_paths: tuple[str, ...] = ()):
        self.address = address
        self.num_cpus = num_cpus
        self.cpus_per_task = cpus_per_task
        self.plugin_paths = tuple(str(Path(p).resolve()) for p in plugin_paths)

    def _init(self):
        try:
            import ray
        except ImportError as exc:
            raise UmdbenchError("--executor ray needs Ray: pip install 'umdbench[ray]' (or 'ray[default]').") from exc
        from umdbench.run.host_memory import allocator_env

        started_here = False
        if not ray.is_initialized():
            kwargs = {"include_dashboard": False, "log_to_driver": True}
            env = allocator_env()  # workers train; they start on mimalloc where installed
            if env:
                kwargs["runtime_env"] = {"env_vars": env}
            if self.address:
                ray.init(address=self.address, **kwargs)
            else:
                ray.init(num_cpus=self.num_cpus, **kwargs)
            started_here = True
        return ray, started_here

    def run(self, plan: SweepPlan, ctx: RunContext, user_overrides=()) -> SweepReport:
        ray, started_here = self._init()
        try:
            return self._run(ray, plan, ctx, user_overrides)
        finally:
            if started_here:
                ray.shutdown()

    def _run(self, ray, plan: SweepPlan, ctx: RunContext, user_overrides) -> SweepReport:
        ws = ctx.ws
        report = SweepReport(skipped=plan.by_status("done"))
        work_dir = str(Path(ws.work_dir).resolve())
        train_task = ray.remote(num_cpus=self.cpus_per_task, max_retries=0)(_ray_train)
        eval_task = ray.remote(num_cpus=self.cpus_per_task, max_retries=0)(_ray_eval)
        refs: dict[str, object] = {}
        for stage in plan.needed_stages():
            if ws.is_trained(stage):
                continue
            parents = [refs[stage.parent.key]] if stage.parent is not None and stage.parent.key in refs else []
            refs[stage.key] = train_task.remote(stage, plan.runs[stage.key], work_dir, self.plugin_paths, *parents)
        report.stages_trained = len(refs)
        evals: dict[object, PlannedCell] = {}
        for cell in plan.pending:
            last = cell.training[-1].key
            parents = [refs[last]] if last in refs else []
            ref = eval_task.remote(cell.eval_stage, cell.run, work_dir, self.plugin_paths, *parents)
            evals[ref] = cell
        echo(f"ray: {len(refs)} training tasks and {len(evals)} evaluations submitted "
             f"({ray.cluster_resources().get('CPU', 0):.0f} CPUs in the cluster)")
        counted: set[str] = set()  # stages trained here whose time is already in a row
        pending = list(evals)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            cell = evals[ready[0]]
            try:
                out = ray.get(ready[0])
            except Exception as exc:  # noqa: BLE001 - RayTaskError of this cell or of a parent stage
                error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
                echo(f"cell {cell.describe()} FAILED: {error}")
                report.failed.append((cell, error))
                mark(plan, ws, cell, "failed", error, user_overrides)
                continue
            # compute of this cell, as the local executor counts it: its evaluation plus the stages
            # trained by this sweep that no earlier-finished cell has counted (not the queueing time)
            fresh = [s for s in cell.training if s.key in refs and s.key not in counted]
            counted.update(s.key for s in fresh)
            wall = out["eval_s"] + sum(ws.stage_wall_time(s) for s in fresh)
            store_result(cell.run, cell.stages, out["metrics"], wall, ctx, device=out["device"])
            report.finished.append(cell)
            mark(plan, ws, cell, "done", user_overrides=user_overrides)
            metrics = "  ".join(f"{k}={v:.2f}" for k, v in sorted(out["metrics"].items()))
            echo(f"ray: finished {cell.describe()}: {metrics}")
        return report


def make_executor(name: str, *, ray_address: str | None = None, num_cpus: int | None = None,
                  nproc_per_node: int = 1, plugin_paths=()):
    if name == "local":
        return LocalExecutor(nproc_per_node=nproc_per_node, plugin_paths=tuple(plugin_paths))
    if name == "ray":
        if nproc_per_node > 1:
            raise ConfigError("--nproc-per-node > 1 (torchrun) works with the local executor only; "
                              "with Ray each stage is one task.")
        return RayExecutor(address=ray_address, num_cpus=num_cpus, plugin_paths=tuple(plugin_paths))
    raise ConfigError(f"unknown executor {name!r}; choose local or ray.")

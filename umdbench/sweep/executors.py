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

from umdbench.run.execute import (Workspace, echo, evaluate, result_row, run_cell, stage_wall_time, train_stage,
                      write_run_config)
from umdbench.sweep.planning import PlannedCell, SweepPlan, SweepReport, format_failure, mark


class LocalExecutor:
    name = "local"

    def __init__(self, nproc_per_node: int = 1, plugin_paths: tuple[str, ...] = ()):
        self.nproc_per_node = int(nproc_per_node)
        self.plugin_paths = tuple(plugin_paths)

    def _train(self, stage, run, ws: Workspace, step: str) -> None:
        if self.nproc_per_node > 1 and not (ws.cache_root / stage.dirname / "artifact.json").is_file():
            from umdbench.run.distributed import launch_stage

            echo(f"{step} {stage.title}: torchrun with {self.nproc_per_node} processes (key {stage.key[:12]})")
            launch_stage(stage, run, ws, self.nproc_per_node, self.plugin_paths)
        else:
            train_stage(stage, run, ws, step)

    def run(self, plan: SweepPlan, ws: Workspace, user_overrides=()) -> SweepReport:
        report = SweepReport(skipped=plan.by_status("done"))
        failed_stages: dict[str, str] = {}
        done_stages: set[str] = set()
        needed = plan.needed_stages()
        order = {s.key: n for n, s in enumerate(needed, 1)}
        for cell in list(plan.pending):
            if ws.store.get(cell.key) is not None:  # finished by another sweep meanwhile
                report.skipped.append(cell)
                mark(plan, ws, cell, "done", user_overrides=user_overrides)
                continue
            error = None
            for stage in cell.training:
                if stage.key in failed_stages:
                    error = f"needs stage {stage.title} {stage.key[:12]}, which failed: {failed_stages[stage.key]}"
                    break
                if stage.key in done_stages:
                    continue
                try:
                    self._train(stage, plan.runs[stage.key], ws, f"[stage {order[stage.key]}/{len(needed)}]")
                except Exception as exc:  # noqa: BLE001 - one failed stage must not stop the sweep
                    failed_stages[stage.key] = f"{type(exc).__name__}: {exc}"
                    error = f"stage {stage.title} {stage.key[:12]} failed:\n{format_failure(exc)}"
                    break
                done_stages.add(stage.key)
                report.stages_trained += 1
            if error is None:
                try:
                    run_cell(cell.run, ws)
                except Exception as exc:  # noqa: BLE001
                    error = f"evaluation failed:\n{format_failure(exc)}"
            if error is not None:
                echo(f"cell {cell.describe()} FAILED: {error}")
                report.failed.append((cell, error))
                mark(plan, ws, cell, "failed", error.splitlines()[0], user_overrides)
            else:
                report.finished.append(cell)
                mark(plan, ws, cell, "done", user_overrides=user_overrides)
        return report


# ---------------------------------------------------------------------------------------------
# Ray
# ---------------------------------------------------------------------------------------------
def _worker_workspace(work_dir: str, plugin_paths: tuple[str, ...]) -> Workspace:
    from umdbench.plugin import get_registries

    return Workspace(Path(work_dir), get_registries(tuple(plugin_paths)))


def _ray_train(stage, run, work_dir, plugin_paths, *parents):
    """Ray task: train one stage (parents are the parent's task results, awaited by Ray)."""
    ws = _worker_workspace(work_dir, plugin_paths)
    train_stage(stage, run, ws, "[ray]")
    return stage.key


def _ray_eval(stage, run, work_dir, plugin_paths, *parents):
    """Ray task: evaluate one cell; the driver writes the row."""
    from umdbench.results.provenance import device_description

    ws = _worker_workspace(work_dir, plugin_paths)
    started = time.time()
    metrics = evaluate(stage, run, ws, "[ray]")
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
            from umdbench.errors import UmdbenchError

            raise UmdbenchError("--executor ray needs Ray: pip install 'umdbench[ray]' (or 'ray[default]').") from exc
        started_here = False
        if not ray.is_initialized():
            kwargs = {"include_dashboard": False, "log_to_driver": True}
            if self.address:
                ray.init(address=self.address, **kwargs)
            else:
                ray.init(num_cpus=self.num_cpus, **kwargs)
            started_here = True
        return ray, started_here

    def run(self, plan: SweepPlan, ws: Workspace, user_overrides=()) -> SweepReport:
        ray, started_here = self._init()
        try:
            return self._run(ray, plan, ws, user_overrides)
        finally:
            if started_here:
                ray.shutdown()

    def _run(self, ray, plan: SweepPlan, ws: Workspace, user_overrides) -> SweepReport:
        report = SweepReport(skipped=plan.by_status("done"))
        work_dir = str(Path(ws.work_dir).resolve())
        train_task = ray.remote(num_cpus=self.cpus_per_task, max_retries=0)(_ray_train)
        eval_task = ray.remote(num_cpus=self.cpus_per_task, max_retries=0)(_ray_eval)
        refs: dict[str, object] = {}
        for stage in plan.needed_stages():
            if (ws.cache_root / stage.dirname / "artifact.json").is_file():
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
        store = ws.store
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
            wall = out["eval_s"] + sum(stage_wall_time(s, ws) for s in fresh)
            row = result_row(cell.run, cell.stages, out["metrics"], wall, device=out["device"])
            write_run_config(cell.run, cell.stages, ws)
            store.add(row)  # the driver writes every row; INSERT OR IGNORE keeps one per cell key
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
            from umdbench.errors import ConfigError

            raise ConfigError("--nproc-per-node > 1 (torchrun) works with the local executor only; "
                              "with Ray each stage is one task.")
        return RayExecutor(address=ray_address, num_cpus=num_cpus, plugin_paths=tuple(plugin_paths))
    from umdbench.errors import ConfigError

    raise ConfigError(f"unknown executor {name!r}; choose local or ray.")

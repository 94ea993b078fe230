"""Executors run a :class:`~umdbench.sweep.planning.SweepPlan`.

* :class:`LocalExecutor` (default): one process, stages in topological order, cell by cell, each
  cell evaluated as soon as its last stage is trained. With a :class:`~umdbench.run.distributed.Launch`
  of more than one process every training stage runs as a torchrun job (DDP,
  :mod:`umdbench.run.distributed`), on this node or, led by node 0, on several
  (:mod:`umdbench.run.nodes`).
* :class:`RayExecutor`: every unique stage is a Ray task; independent stages run in parallel over
  the cluster, submitted by the driver one free CPU at a time, earliest cell first
  (:class:`CellFirstQueue`), so a sweep cut short leaves finished cells. Workers train and
  evaluate; the driver writes the results rows. Needs the optional extra ``pip install
  'umdbench[ray]'`` and a work dir (and data root) that every node sees at the same path, which
  is checked on every node before anything trains when the executor joins a cluster.

A failed stage does not stop the sweep: cells that need it are reported failed, the rest run on.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

from umdbench.errors import ConfigError, UmdbenchError
from umdbench.run.cell import run_cell, store_result
from umdbench.run.console import echo
from umdbench.run.context import RunContext
from umdbench.run.train_and_evaluate import evaluate_stage, train_stage
from umdbench.sweep.planning import PlannedCell, SweepPlan, SweepReport, format_failure, mark

RAY_WITH_TORCHRUN = (
    "--nproc-per-node > 1 and --nnodes > 1 (torchrun) work with the local executor only; with Ray "
    "each stage is one task, spread over the cluster's nodes."
)


class StageFailed(UmdbenchError):
    """A cell needs a stage that already failed in this sweep (not retried within the sweep)."""


def _report_failed_cell(
    plan: SweepPlan, ws, report: SweepReport, cell: PlannedCell, error: str, user_overrides=()
) -> None:
    """Say that ``cell`` failed, list it in ``report`` and mark it failed in the store (first line)."""
    echo(f"cell {cell.describe()} FAILED: {error}")
    report.failed.append((cell, error))
    mark(plan, ws, cell, "failed", error.splitlines()[0], user_overrides)


class LocalExecutor:
    name = "local"

    def __init__(self, nproc_per_node: int = 1, plugin_paths: tuple[str, ...] = (), *, launch=None, group=None):
        """``launch``: a :class:`~umdbench.run.distributed.Launch` (default: ``nproc_per_node`` processes
        here); ``group``: node 0's :class:`~umdbench.run.nodes.NodeGroup` of a multi-node run."""
        from umdbench.run.distributed import Launch

        self.launch = launch or Launch(nproc_per_node=int(nproc_per_node))
        self.nproc_per_node = self.launch.nproc_per_node
        self.plugin_paths = tuple(plugin_paths)
        self.group = group

    def run(self, plan: SweepPlan, ctx: RunContext, user_overrides=()) -> SweepReport:
        from umdbench.run.distributed import stage_trainer

        base = stage_trainer(self.launch, self.plugin_paths, self.group)
        report = SweepReport(skipped=plan.by_status("done"))
        failed_stages: dict[str, str] = {}
        needed = plan.needed_stages()
        order = {s.key: n for n, s in enumerate(needed, 1)}

        def train(stage, run, ctx, step):
            # sweep-wide numbering, and a stage that failed once fails its other cells at once
            if stage.key in failed_stages:
                raise StageFailed(
                    f"needs stage {stage.title} {stage.key[:12]}, which failed: {failed_stages[stage.key]}"
                )
            was_trained = ctx.ws.is_trained(stage)
            try:
                base(stage, run, ctx, f"[stage {order.get(stage.key, '?')}/{len(needed)}]")
            except Exception as exc:  # noqa: BLE001 - reported per cell, the sweep goes on
                failed_stages[stage.key] = f"{type(exc).__name__}: {exc}"
                # a UmdbenchError already says what was wrong in one paragraph: no traceback lines
                detail = str(exc) if isinstance(exc, UmdbenchError) else format_failure(exc)
                raise StageFailed(f"stage {stage.title} {stage.key[:12]} failed:\n{detail}") from exc
            if not was_trained:
                report.stages_trained += 1

        for cell in list(plan.pending):
            if ctx.ws.store.get(cell.key) is not None:  # finished by another sweep meanwhile
                report.skipped.append(cell)
                mark(plan, ctx.ws, cell, "done", user_overrides=user_overrides)
                continue
            try:
                run_cell(cell.run, cell.stages, ctx, train=train)
            except (StageFailed, UmdbenchError) as exc:  # said in one paragraph already
                error = str(exc)
            except Exception as exc:  # noqa: BLE001 - one failed cell must not stop the sweep
                error = f"evaluation failed:\n{format_failure(exc)}"
            else:
                report.finished.append(cell)
                mark(plan, ctx.ws, cell, "done", user_overrides=user_overrides)
                continue
            _report_failed_cell(plan, ctx.ws, report, cell, error, user_overrides)
        return report


# ---------------------------------------------------------------------------------------------
# Ray
# ---------------------------------------------------------------------------------------------
def _worker_context(work_dir: str, plugin_paths: tuple[str, ...]) -> RunContext:
    from umdbench.plugin import get_registries

    return RunContext(Path(work_dir), get_registries(tuple(plugin_paths)))


def _ray_error(exc: Exception) -> str:
    """The last line of a RayTaskError (the remote exception), with its type."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[-1] if text else ''}"


def _ray_train(stage, run, work_dir, plugin_paths):
    """Ray task: train one stage (the driver submits it once its parent is trained). Returns where
    it ran, which the driver logs."""
    import ray

    train_stage(stage, run, _worker_context(work_dir, plugin_paths), "[ray]")
    return {"key": stage.key, "node": ray.get_runtime_context().get_node_id(), "host": socket.gethostname()}


def _ray_eval(stage, run, work_dir, plugin_paths):
    """Ray task: evaluate one cell; the driver stores the row (one writer for the store)."""
    from umdbench.results.provenance import device_description

    started = time.time()
    metrics = evaluate_stage(stage, run, _worker_context(work_dir, plugin_paths), "[ray]")
    return {"metrics": metrics, "device": device_description(), "eval_s": time.time() - started}


class CellFirstQueue:
    """The training stages a Ray sweep still has to run, handed out earliest cell first.

    Ray runs ready tasks roughly in submission order, so submitting every stage up front trains all
    the pre-trainings (which have no parents) before any fine-tuning: a sweep stopped half-way then
    has many trained parents and few finished cells, and the parents are lost with the work dir.
    Here the driver asks for one stage per free CPU: among the stages whose parent is trained, the
    one needed by the earliest unfinished cell (ties: the plan's topological order).
    """

    def __init__(self, plan: SweepPlan, is_trained):
        needed = plan.needed_stages()
        first_cell: dict[str, int] = {}
        for n, cell in enumerate(plan.pending):
            for stage in cell.training:
                first_cell.setdefault(stage.key, n)
        self._rank = {s.key: (first_cell[s.key], n) for n, s in enumerate(needed)}
        self._todo = {s.key: s for s in needed if not is_trained(s)}
        self.running: set[str] = set()
        self.trained: set[str] = set()  # by this sweep
        self.failed: dict[str, str] = {}  # stage key -> error; a failed stage's descendants included

    def __len__(self) -> int:
        """Stages not yet handed out."""
        return len(self._todo)

    def is_done(self, stage) -> bool:
        """Trained, by this sweep or before it."""
        key = stage.key
        return key in self.trained or (key not in self._todo and key not in self.running and key not in self.failed)

    def pop(self):
        """The next stage to train, or None while every remaining one waits for its parent."""
        ready = [s for s in self._todo.values() if s.parent is None or self.is_done(s.parent)]
        if not ready:
            return None
        stage = min(ready, key=lambda s: self._rank[s.key])
        del self._todo[stage.key]
        self.running.add(stage.key)
        return stage

    def finish(self, stage) -> None:
        self.running.discard(stage.key)
        self.trained.add(stage.key)

    def fail(self, stage, error: str) -> None:
        """Mark ``stage`` failed and drop every remaining stage below it."""
        self.running.discard(stage.key)
        self.failed[stage.key] = error
        dropped = True
        while dropped:
            dropped = False
            for key, s in list(self._todo.items()):
                if s.parent is not None and s.parent.key in self.failed:
                    self.failed[key] = f"its parent {s.parent.title} {s.parent.key[:12]} failed: {error}"
                    del self._todo[key]
                    dropped = True

    def cell_state(self, cell) -> str | None:
        """``"ready"`` when every training stage of ``cell`` is trained, the error of its first failed
        stage, or None while it waits."""
        for stage in cell.training:
            if stage.key in self.failed:
                return f"stage {stage.title} {stage.key[:12]} failed: {self.failed[stage.key]}"
        return "ready" if all(self.is_done(s) for s in cell.training) else None


class RayExecutor:
    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        num_cpus: int | None = None,
        cpus_per_task: float = 1.0,
        plugin_paths: tuple[str, ...] = (),
        data_root: str | Path | None = None,
    ):
        self.address = address
        self.num_cpus = num_cpus
        self.cpus_per_task = cpus_per_task
        self.plugin_paths = tuple(str(Path(p).resolve()) for p in plugin_paths)
        self.data_root = data_root
        self.placements: dict[str, str] = {}  # stage key -> Ray node id it was trained on

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

    def _check_nodes(self, ray, work_dir: str) -> None:
        """On a cluster, every node must see the work dir, data root and plugin files at the
        driver's paths (a local Ray runs on this machine only)."""
        from umdbench.run.nodes import check_ray_nodes

        if not self.address:
            return
        paths = [("work dir", work_dir), ("data root", self.data_root)]
        count = check_ray_nodes(ray, paths + [("plugin file", p) for p in self.plugin_paths])
        seen = "the work dir and data root" if self.data_root else "the work dir"
        echo(f"ray: all {count} nodes see {seen} at the driver's paths")

    def _run(self, ray, plan: SweepPlan, ctx: RunContext, user_overrides) -> SweepReport:
        ws = ctx.ws
        report = SweepReport(skipped=plan.by_status("done"))
        work_dir = str(Path(ws.work_dir).resolve())
        self._check_nodes(ray, work_dir)
        train_task = ray.remote(num_cpus=self.cpus_per_task, max_retries=0)(_ray_train)
        eval_task = ray.remote(num_cpus=self.cpus_per_task, max_retries=0)(_ray_eval)
        queue = CellFirstQueue(plan, ws.is_trained)
        slots = max(1, int(ray.cluster_resources().get("CPU", 1) // self.cpus_per_task))
        echo(
            f"ray: {len(queue)} training stages and {len(plan.pending)} evaluations to run, {slots} at a "
            f"time, earliest cell first"
        )
        waiting = list(plan.pending)  # cells not yet evaluated
        trains: dict[object, object] = {}  # ref -> stage
        evals: dict[object, PlannedCell] = {}  # ref -> cell
        counted: set[str] = set()  # stages trained here whose time is already in a row

        def fail_cell(cell, error):
            _report_failed_cell(plan, ws, report, cell, error, user_overrides)

        while True:
            for cell in list(waiting):  # evaluations first: they finish cells
                state = queue.cell_state(cell)
                if state is None:
                    continue
                waiting.remove(cell)
                if state != "ready":
                    fail_cell(cell, state)
                    continue
                evals[eval_task.remote(cell.eval_stage, cell.run, work_dir, self.plugin_paths)] = cell
            while len(trains) + len(evals) < slots and (stage := queue.pop()) is not None:
                trains[train_task.remote(stage, plan.runs[stage.key], work_dir, self.plugin_paths)] = stage
            if not trains and not evals:
                break
            (ref,), _ = ray.wait([*trains, *evals], num_returns=1)
            if ref in trains:
                stage = trains.pop(ref)
                try:
                    where = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - its cells are reported failed, the rest run on
                    queue.fail(stage, _ray_error(exc))
                else:
                    queue.finish(stage)
                    self.placements[stage.key] = where["node"]
                    echo(f"ray: trained {stage.title} {stage.key[:12]} on node {where['node'][:12]} ({where['host']})")
                continue
            cell = evals.pop(ref)
            try:
                out = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - RayTaskError of this cell's evaluation
                fail_cell(cell, _ray_error(exc))
                continue
            # compute of this cell, as the local executor counts it: its evaluation plus the stages
            # trained by this sweep that no earlier-finished cell has counted (not the queueing time)
            fresh = [s for s in cell.training if s.key in queue.trained and s.key not in counted]
            counted.update(s.key for s in fresh)
            wall = out["eval_s"] + sum(ws.stage_wall_time(s) for s in fresh)
            store_result(cell.run, cell.stages, out["metrics"], wall, ctx, device=out["device"])
            report.finished.append(cell)
            mark(plan, ws, cell, "done", user_overrides=user_overrides)
            metrics = "  ".join(f"{k}={v:.2f}" for k, v in sorted(out["metrics"].items()))
            echo(f"ray: finished {cell.describe()}: {metrics}")
        for cell in waiting:  # only if a stage's parent was never planned: a bug, reported, not hidden
            fail_cell(cell, "its stages could not be scheduled (a parent stage is missing from the plan)")
        report.stages_trained = len(queue.trained)
        return report


def make_executor(
    name: str,
    *,
    ray_address: str | None = None,
    num_cpus: int | None = None,
    nproc_per_node: int = 1,
    plugin_paths=(),
    launch=None,
    group=None,
    data_root=None,
):
    """``launch`` (a :class:`~umdbench.run.distributed.Launch`) and ``group`` (node 0's node group)
    serve the local executor; ``data_root`` is checked on every node of a Ray cluster."""
    from umdbench.run.distributed import Launch

    launch = launch or Launch(nproc_per_node=int(nproc_per_node))
    if name == "local":
        return LocalExecutor(plugin_paths=tuple(plugin_paths), launch=launch, group=group)
    if name == "ray":
        if launch.world_size > 1:
            raise ConfigError(RAY_WITH_TORCHRUN)
        return RayExecutor(
            address=ray_address, num_cpus=num_cpus, plugin_paths=tuple(plugin_paths), data_root=data_root
        )
    raise ConfigError(f"unknown executor {name!r}; choose local or ray.")

"""The one path from a planned cell to a stored row, used by ``umdbench run`` and every executor.

:func:`run_cell` takes the cell's already-planned stages, trains (or reuses) each, evaluates and
hands the metrics to :func:`store_result`, which writes the row, ``config.json`` and ``result.json``.
An executor that trains or evaluates elsewhere (Ray workers, torchrun) still ends in
:func:`store_result`, so every executor leaves the same files.
"""

from __future__ import annotations

import time
from typing import Callable

from umdbench.data.catalog import check_cell_data, skipped_counts
from umdbench.plan.config import ResolvedRun
from umdbench.plan.stage_plan import Stage, describe_plan, metric_name
from umdbench.results.provenance import device_description, git_commit, package_versions
from umdbench.run.console import echo
from umdbench.run.context import RunContext
from umdbench.run.train_and_evaluate import evaluate_stage, train_stage

__all__ = ["result_row", "run_cell", "store_result"]

TrainFn = Callable[[Stage, ResolvedRun, RunContext, str], object]


def run_cell(run: ResolvedRun, stages: list[Stage], ctx: RunContext, *, train: TrainFn = train_stage) -> dict:
    """Run (or reuse) every stage of a planned cell and store its row. Returns the row.

    ``train`` trains one stage (default: in this process; the local executor passes a torchrun
    launcher for multi-process stages). Each stage is trained under its lock and the cell is
    evaluated and stored under the cell's, so two processes running the same cell on one work
    dir train each stage once and store one row."""
    cell = stages[-1]
    total = len(stages)
    existing = ctx.ws.store.get(cell.key)
    if existing is not None:
        for n, stage in enumerate(stages[:-1], 1):
            echo(
                f"[{n}/{total}] {stage.title}: "
                + (
                    f"reusing cached artifact {stage.dirname}"
                    if ctx.ws.is_trained(stage)
                    else "not in the cache (not needed: the result is stored)"
                )
            )
        echo(f"[{total}/{total}] evaluate: result already in the store (cell {cell.key[:12]}); not re-running.")
        ctx.ws.ensure_result(existing)
        return existing
    # every split the cell reads, before its first stage trains (raises DataError, exit 2)
    check_cell_data(stages, ctx.catalog, run.config, ctx.ws.image_cache_dir)
    ctx.ws.write_run_config(run, stages)
    echo(
        f"umdbench run: {run.cell.label}, preset {run.cell.preset}, seed {run.cell.seed}\n"
        f"{describe_plan(stages, ctx.ws.is_trained)}"
    )
    trained_before = {s.key for s in stages[:-1] if ctx.ws.is_trained(s)}
    for n, stage in enumerate(stages[:-1], 1):
        train(stage, run, ctx, f"[{n}/{total}]")

    def waiting(path):
        echo(f"[{total}/{total}] evaluate: waiting for another process that is evaluating this cell (lock {path})")

    with ctx.ws.cell_lock(cell.key, on_wait=waiting):
        existing = ctx.ws.store.get(cell.key)
        if existing is not None:  # stored by the process we waited for
            echo(f"[{total}/{total}] evaluate: result already in the store (cell {cell.key[:12]}); not re-running.")
            ctx.ws.ensure_result(existing)
            return existing
        eval_started = time.time()
        metrics = evaluate_stage(cell, run, ctx, f"[{total}/{total}]")
        # compute of this cell: its evaluation plus the stages it trained (not time spent waiting)
        fresh = [s for s in stages[:-1] if s.key not in trained_before]
        wall = (time.time() - eval_started) + sum(ctx.ws.stage_wall_time(s) for s in fresh)
        return store_result(run, stages, metrics, wall, ctx)


def plugin_provenance(run: ResolvedRun, registries) -> dict[str, str]:
    """``{"kind:name": "package version"}`` of every plugin the cell ran: strategies, datasets,
    encoder, task type (and the metric: eval.metric, by default the one its dataset or task type names)."""
    cfg = run.config
    used = [("encoder", cfg["model"]["type"]), ("dataset", cfg["dataset"]["type"])]
    if cfg["pretrain"]:
        used += [("pretrain", cfg["pretrain"]["type"]), ("dataset", cfg["pretrain"]["corpus"]["type"])]
    used += [("tune", s["type"]) for s in cfg["tune"]]
    dataset_cls = registries.dataset.get(cfg["dataset"]["type"])
    used.append(("task", dataset_cls.task))
    metric = metric_name(registries, dataset_cls, cfg.get("eval"))
    if metric:
        used.append(("metric", metric))
    return {f"{kind}:{name}": getattr(registries, kind).provenance(name) for kind, name in used}


def result_row(
    run: ResolvedRun,
    stages: list[Stage],
    metrics: dict,
    wall_time_s: float,
    device: str | None = None,
    skipped: dict | None = None,
    plugins: dict | None = None,
    predictions: dict | None = None,
) -> dict:
    """The results-store row of a finished cell (``stages``: its plan, evaluation last).
    ``skipped``: records left out per dataset (``on_error: skip``, malformed fields); ``plugins``:
    the package behind each plugin the cell ran; ``predictions``: the reference to the cell's
    per-example predictions file (path, sha256, n), None when it has none."""
    cell = stages[-1]
    return {
        "cell_key": cell.key,
        "suite": run.cell.suite,
        "cell_name": run.cell.cell_name,
        "pretrain": run.cell.pretrain,
        "tune": "+".join(run.cell.tune),
        "dataset": run.cell.dataset,
        "preset": run.cell.preset,
        "seed": run.cell.seed,
        "metrics": metrics,
        "config": run.portable_config,
        "config_hash": run.hash,
        "stage_keys": [s.key for s in stages[:-1]],
        "git_commit": git_commit(),
        "packages": package_versions(),
        "data_fingerprint": cell.data["fingerprint"],
        "wall_time_s": wall_time_s,
        "device": device or device_description(),
        "skipped": skipped or {},
        "plugins": plugins or {},
        "predictions": predictions,
    }


def training_schedule(stages: list[Stage], ctx: RunContext) -> dict:
    """``{stage key: how it was trained}`` from each stage's marker: processes, micro-batches, and
    what of the step could not be made independent of them (recorded, never silent); for a stage
    adopted from a key of older code (``umdbench adopt``), ``adopted_from`` and the evidence."""
    out = {}
    for stage in stages[:-1]:
        meta = ctx.ws.marker(stage) if ctx.ws.is_trained(stage) else {}
        out[stage.key] = dict(meta.get("data_parallel") or {"world_size": int(meta.get("world_size", 1))})
        if meta.get("wall_time_s") is not None:
            out[stage.key]["wall_time_s"] = float(meta["wall_time_s"])
        if meta.get("train_flops") is not None:
            out[stage.key]["train_flops"] = int(meta["train_flops"])
        if meta.get("adopted_from"):
            out[stage.key].update(adopted_from=meta["adopted_from"], adoption=meta.get("adoption") or {})
    return out


def store_result(
    run: ResolvedRun, stages: list[Stage], metrics: dict, wall_time_s: float, ctx: RunContext, device: str | None = None
) -> dict:
    """Write a finished cell: ``config.json``, the store row and ``result.json``. A row stored
    before is kept, and returned; ``result.json`` then describes it, not the new metrics."""
    cell = stages[-1]
    with ctx.ws.cell_lock(cell.key):  # re-entered when run_cell holds it already
        ctx.ws.write_run_config(run, stages)
        skipped = skipped_counts(stages, ctx.catalog)
        if skipped:
            echo(
                "skipped records (on_error=skip or malformed fields), stored with the row: "
                + ", ".join(f"{name} {n}" for name, n in sorted(skipped.items()))
            )
        row = result_row(
            run,
            stages,
            metrics,
            wall_time_s,
            device,
            skipped,
            plugin_provenance(run, ctx.registries),
            ctx.ws.predictions_ref(cell.key),
        )
        row["schedule"] = training_schedule(stages, ctx)
        if not ctx.ws.store.add(row):  # INSERT OR IGNORE: one row per cell key
            row = ctx.ws.store.get(cell.key)
        ctx.ws.write_result(row)
    return row

"""Data-parallel (DDP) training of one stage through torchrun.

The parent process writes a request file (the cell's resolved config, the stage key, plugin paths)
into the stage's folder and launches::

    python -m torch.distributed.run --standalone --nproc_per_node N -m umdbench.run.distributed REQUEST.json

Every rank rebuilds the plan from the request, finds the stage by its key and calls
:func:`umdbench.run.stages.train_stage` with ``launcher='pytorch'``. On a machine without CUDA the
ranks talk over gloo (mmengine's own launcher insists on CUDA; see execute.distributed_runner_kwargs).
The stage's batch size is global: each rank gets ``batch_size // N``. Rank 0 writes the artifact,
so the cache looks the same as after a single-process run; an interrupted job resumes from the
stage's mmengine checkpoint like any other stage.

Use it from a sweep with ``umdbench sweep ... --nproc-per-node N`` (local executor).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

from umdbench.errors import UmdbenchError


def write_request(stage, run, ctx, plugin_paths=()) -> Path:
    from umdbench.util import atomic_write_json

    ws = ctx.ws
    path = ws.ddp_request_path(stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    cell = dataclasses.asdict(run.cell)
    atomic_write_json(path, {
        "stage_key": stage.key, "cell": cell, "config": run.config, "deviations": run.deviations,
        "work_dir": str(Path(ws.work_dir).resolve()), "plugin_paths": [str(Path(p).resolve()) for p in plugin_paths],
    })
    return path


def launch_stage(stage, run, ctx, nproc: int, plugin_paths=(), timeout: float | None = None) -> Path:
    """Train ``stage`` with ``nproc`` processes on this node; returns the stage folder."""
    request = write_request(stage, run, ctx, plugin_paths)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={int(nproc)}",
           "-m", "umdbench.run.distributed", str(request)]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run(cmd, env=env, timeout=timeout)
    if proc.returncode != 0 or not ctx.ws.is_trained(stage):
        raise UmdbenchError(f"torchrun of stage {stage.title} ({stage.key[:12]}) exited with {proc.returncode}; "
                            f"logs under {ctx.ws.train_dir(stage)}. Run the sweep again to resume it.")
    return ctx.ws.stage_dir(stage)


def torchrun_trainer(nproc: int, plugin_paths=()):
    """A ``train`` function for :func:`umdbench.run.cell.run_cell` that runs each stage not yet
    cached as a torchrun job of ``nproc`` processes."""
    from umdbench.run.builders import echo
    from umdbench.run.stages import train_stage, waiting_note

    def train(stage, run, ctx, step: str):
        if nproc <= 1 or ctx.ws.is_trained(stage):
            return train_stage(stage, run, ctx, step)
        with ctx.ws.stage_lock(stage, on_wait=waiting_note(stage, step)):  # held here: the ranks themselves do not lock
            if ctx.ws.is_trained(stage):
                return train_stage(stage, run, ctx, step)
            echo(f"{step} {stage.title}: torchrun with {nproc} processes (key {stage.key[:12]})")
            return launch_stage(stage, run, ctx, nproc, plugin_paths)

    return train


def run_request(request_path: str | Path) -> Path:
    """One rank: rebuild the stage from the request and train it under DDP."""
    from umdbench.plan.config import CellSpec, ResolvedRun
    from umdbench.plan.stages import build_plan
    from umdbench.plugin import get_registries
    from umdbench.run.builders import RunContext
    from umdbench.run.stages import train_stage

    req = json.loads(Path(request_path).read_text())
    cell = dict(req["cell"])
    cell["tune"] = tuple(cell["tune"])
    cell["overrides"] = tuple(tuple(o) for o in cell["overrides"])
    run = ResolvedRun(CellSpec(**cell), req["config"], req.get("deviations", []))
    registries = get_registries(tuple(req.get("plugin_paths", ())))
    ctx = RunContext(Path(req["work_dir"]), registries)
    stages = {s.key: s for s in build_plan(run, registries, ctx.catalog)}
    if req["stage_key"] not in stages:
        raise UmdbenchError(f"stage {req['stage_key'][:12]} is not in the plan rebuilt from {request_path}: the code "
                            f"or data changed since the request was written; run the sweep again.")
    rank = int(os.environ.get("RANK", "0"))
    return train_stage(stages[req["stage_key"]], run, ctx, f"[rank {rank}]", launcher="pytorch")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m umdbench.run.distributed",
                                     description="One rank of a torchrun (DDP) training stage; see module docstring.")
    parser.add_argument("request", help="ddp-request.json written by umdbench.run.distributed.write_request")
    args = parser.parse_args(argv)
    try:
        run_request(args.request)
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())

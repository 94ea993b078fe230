"""Data-parallel (DDP) training of one stage through torchrun, on one node or several.

The parent process writes a request file (the cell's resolved config, the stage key, plugin paths)
into the stage's folder and launches, on one node::

    python -m torch.distributed.run --standalone --nproc-per-node N -m umdbench.run.distributed REQUEST.json

and on each of several nodes (``--nnodes M --node-rank K --rdzv-endpoint HOST:PORT``) the same
without ``--standalone``: a c10d rendezvous on node 0's store with its own id per job, no restarts
(:mod:`umdbench.run.nodes` says who does what: node 0 leads, the others join its jobs).

Every rank rebuilds the plan from the request, finds the stage by its key and calls
:func:`umdbench.run.train_and_evaluate.train_stage` with ``launcher='pytorch'``. On a machine without CUDA the
ranks talk over gloo (mmengine's own launcher insists on CUDA; see build_runner.distributed_runner_kwargs).
The stage's batch size is global: each rank gets ``batch_size // world``. Rank 0, on node 0, writes
the artifact, so the cache looks the same as after a single-process run; an interrupted job resumes
from the stage's mmengine checkpoint like any other stage.

Use it with ``umdbench run`` or ``umdbench sweep`` (local executor) and ``--nproc-per-node N``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

from umdbench.errors import ConfigError, UmdbenchError
from umdbench.run.nodes import split_endpoint


def write_request(stage, run, ctx, plugin_paths=()) -> Path:
    from umdbench.util import atomic_write_json

    ws = ctx.ws
    path = ws.ddp_request_path(stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    cell = dataclasses.asdict(run.cell)
    atomic_write_json(
        path,
        {
            "stage_key": stage.key,
            "cell": cell,
            "config": run.config,
            "deviations": run.deviations,
            "work_dir": str(Path(ws.work_dir).resolve()),
            "plugin_paths": [str(Path(p).resolve()) for p in plugin_paths],
        },
    )
    return path


NODE_RANK_ENV = "UMDBENCH_NODE_RANK"  # set for the ranks of a multi-node job: see order_ranks_by_node


@dataclasses.dataclass(frozen=True)
class Launch:
    """How each training stage runs: ``nproc_per_node`` processes on each of ``nnodes`` nodes
    (``--nproc-per-node``, ``--nnodes``, ``--node-rank``, ``--rdzv-endpoint``)."""

    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str | None = None

    def __post_init__(self):
        if self.nproc_per_node < 1 or self.nnodes < 1:
            raise ConfigError("--nproc-per-node and --nnodes must be at least 1.")
        if self.nnodes == 1 and (self.node_rank or self.rdzv_endpoint):
            raise ConfigError(
                "--node-rank and --rdzv-endpoint are for a run over several nodes: add --nnodes N "
                "(the same on every node), or leave them out on one node."
            )
        if not 0 <= self.node_rank < self.nnodes:
            raise ConfigError(
                f"--node-rank {self.node_rank} is not one of 0..{self.nnodes - 1} (--nnodes "
                f"{self.nnodes}): give each node its own rank, 0 on the node --rdzv-endpoint names."
            )
        if self.nnodes > 1:
            try:
                split_endpoint(self.rdzv_endpoint or "")
            except ValueError:
                raise ConfigError(
                    f"--nnodes {self.nnodes} needs --rdzv-endpoint HOST:PORT, node 0's address and a "
                    f"free port, the same on every node (got {self.rdzv_endpoint!r})."
                ) from None

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    def torchrun_args(self, rdzv_id: str) -> list[str]:
        """torchrun's options for one job; ``rdzv_id`` keeps each job's rendezvous apart."""
        if self.nnodes == 1:
            return ["--standalone", f"--nproc-per-node={self.nproc_per_node}", "--max-restarts=0"]
        # is_host=false: node 0's launcher hosts the store for the whole run (umdbench.run.nodes); c10d
        # ignores --node-rank (the ranks take it from NODE_RANK_ENV: order_ranks_by_node)
        return [
            f"--nnodes={self.nnodes}",
            f"--nproc-per-node={self.nproc_per_node}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={self.rdzv_endpoint}",
            f"--rdzv-id={rdzv_id}",
            "--rdzv-conf=is_host=false",
            "--max-restarts=0",
        ]


def torchrun(launch: Launch, rdzv_id: str, request: str | Path, timeout: float | None = None) -> int:
    """Run this node's part of one torchrun job; returns its exit status."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *launch.torchrun_args(rdzv_id),
        "-m",
        "umdbench.run.distributed",
        str(request),
    ]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    if launch.nnodes > 1:
        env[NODE_RANK_ENV] = str(launch.node_rank)
        env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "0"  # the ranks join the agent's store: none of them hosts one
    return subprocess.run(cmd, env=env, timeout=timeout).returncode


def launch_stage(
    stage,
    run,
    ctx,
    nproc: int = 1,
    plugin_paths=(),
    timeout: float | None = None,
    *,
    launch: Launch | None = None,
    group=None,
) -> Path:
    """Train ``stage`` as one torchrun job (``nproc`` processes on this node, or ``launch``);
    ``group``: node 0's :class:`~umdbench.run.nodes.NodeGroup`, which tells the other nodes to join.
    Returns the stage folder."""
    launch = launch or Launch(nproc_per_node=nproc)
    request = write_request(stage, run, ctx, plugin_paths)
    rdzv_id = f"umdbench-{stage.key[:16]}"
    if group is not None:
        rdzv_id += f"-{group.jobs}"  # a fresh rendezvous per job, even for a stage tried twice
        group.announce({"stage": stage.title, "key": stage.key, "request": str(request), "rdzv_id": rdzv_id})
    returncode = torchrun(launch, rdzv_id, request, timeout)
    if returncode != 0 or not ctx.ws.is_trained(stage):
        where = " (and in the other nodes' terminals)" if launch.nnodes > 1 else ""
        raise UmdbenchError(
            f"torchrun of stage {stage.title} ({stage.key[:12]}) exited with {returncode}; "
            f"logs under {ctx.ws.train_dir(stage)}{where}. Run the same command again to resume it."
        )
    return ctx.ws.stage_dir(stage)


def torchrun_trainer(nproc: int | Launch, plugin_paths=(), group=None):
    """A ``train`` function for :func:`umdbench.run.cell.run_cell` that runs each stage not yet
    cached as a torchrun job (``nproc`` processes here, or a :class:`Launch` over several nodes).
    Only this process takes the stage lock: the ranks do not, nor do the other nodes."""
    from umdbench.run.console import echo
    from umdbench.run.train_and_evaluate import train_stage, waiting_note

    launch = nproc if isinstance(nproc, Launch) else Launch(nproc_per_node=int(nproc))

    def train(stage, run, ctx, step: str):
        if launch.world_size <= 1 or ctx.ws.is_trained(stage):
            return train_stage(stage, run, ctx, step)
        with ctx.ws.stage_lock(stage, on_wait=waiting_note(stage, step)):  # held here: the ranks themselves do not lock
            if ctx.ws.is_trained(stage):
                return train_stage(stage, run, ctx, step)
            nodes = f" on each of {launch.nnodes} nodes" if launch.nnodes > 1 else ""
            echo(f"{step} {stage.title}: torchrun with {launch.nproc_per_node} processes{nodes} (key {stage.key[:12]})")
            return launch_stage(stage, run, ctx, plugin_paths=plugin_paths, launch=launch, group=group)

    return train


def stage_trainer(launch: Launch, plugin_paths=(), group=None):
    """The ``train`` function of a run on node 0 (or a single node): in this process, or torchrun."""
    from umdbench.run.train_and_evaluate import train_stage

    return torchrun_trainer(launch, plugin_paths, group) if launch.world_size > 1 else train_stage


def follow(group, launch: Launch, timeout: float | None = None) -> tuple[int, list[str]]:
    """Node k > 0: join each job node 0 announces, in its order, until node 0 ends the run (raises
    :class:`~umdbench.run.nodes.NodeError` when node 0 failed). Returns (jobs joined, stages whose
    job failed here)."""
    from umdbench.run.console import echo

    joined, failed = 0, []
    while (job := group.next_job()) is not None:
        echo(
            f"node {launch.node_rank}: joining {job['stage']} (key {job['key'][:12]}), torchrun with "
            f"{launch.nproc_per_node} processes"
        )
        returncode = torchrun(launch, job["rdzv_id"], job["request"], timeout)
        joined += 1
        if returncode != 0:
            failed.append(job["stage"])
            echo(f"node {launch.node_rank}: {job['stage']} exited with {returncode}; node 0 decides what follows")
    return joined, failed


def order_ranks_by_node() -> None:
    """Number the ranks of a multi-node job node by node, node 0 first: c10d's rendezvous orders
    nodes by host name and process id, not --node-rank, yet node 0 must hold rank 0 (it writes the
    artifact node 0's launcher then reads). Safe because every rank joins the agent's store
    (TORCHELASTIC_USE_AGENT_STORE), which no rank hosts; env:// reads RANK when the group is made."""
    node = os.environ.get(NODE_RANK_ENV)
    if node is None or os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() != "true":
        return
    per_node = int(os.environ["LOCAL_WORLD_SIZE"])
    os.environ["RANK"] = str(int(node) * per_node + int(os.environ["LOCAL_RANK"]))
    os.environ["GROUP_RANK"] = node


def run_request(request_path: str | Path) -> Path:
    """One rank: rebuild the stage from the request and train it under DDP."""
    from umdbench.plan.config import CellSpec, ResolvedRun
    from umdbench.plan.stage_plan import build_plan
    from umdbench.plugin import get_registries
    from umdbench.run.context import RunContext
    from umdbench.run.train_and_evaluate import train_stage

    order_ranks_by_node()
    req = json.loads(Path(request_path).read_text())
    cell = dict(req["cell"])
    cell["tune"] = tuple(cell["tune"])
    cell["overrides"] = tuple(tuple(o) for o in cell["overrides"])
    run = ResolvedRun(CellSpec(**cell), req["config"], req.get("deviations", []))
    registries = get_registries(tuple(req.get("plugin_paths", ())))
    ctx = RunContext(Path(req["work_dir"]), registries)
    stages = {s.key: s for s in build_plan(run, registries, ctx.catalog)}
    if req["stage_key"] not in stages:
        raise UmdbenchError(
            f"stage {req['stage_key'][:12]} is not in the plan rebuilt from {request_path}: the code "
            f"or data changed since the request was written, or this node has other code or data "
            f"than node 0 (check out the same commit, mount the same data); run the same command "
            f"again."
        )
    rank = int(os.environ.get("RANK", "0"))
    return train_stage(stages[req["stage_key"]], run, ctx, f"[rank {rank}]", launcher="pytorch")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m umdbench.run.distributed",
        description="One rank of a torchrun (DDP) training stage; see module docstring.",
    )
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

"""The options of ``umdbench run`` and ``umdbench sweep`` that spread each training stage over
processes and nodes (torchrun), and what a node other than node 0 does. Import-light (no torch)."""

from __future__ import annotations

import argparse


def add_launch_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "several processes or nodes (torchrun; docs/sweeps.md, 'Several GPUs, several nodes, a Ray cluster')"
    )
    group.add_argument(
        "--nproc-per-node",
        type=int,
        default=1,
        metavar="N",
        help="train each stage with N processes on each node, as one DDP job (default 1)",
    )
    group.add_argument(
        "--nnodes",
        type=int,
        default=1,
        metavar="N",
        help="nodes taking part; start the same command on each (default 1)",
    )
    group.add_argument(
        "--node-rank",
        type=int,
        default=0,
        metavar="K",
        help="this node's rank, 0..N-1: node 0 trains, evaluates and stores the rows, the others join its stages",
    )
    group.add_argument(
        "--rdzv-endpoint",
        metavar="HOST:PORT",
        help="node 0's address and a free port, the same on every node (with --nnodes > 1)",
    )


def launch_of(args):
    """The :class:`~umdbench.run.distributed.Launch` of the parsed options (ConfigError when they clash)."""
    from umdbench.run.distributed import Launch

    return Launch(args.nproc_per_node, args.nnodes, args.node_rank, args.rdzv_endpoint)


def shared_paths(work_dir, data_root_arg, plugin_paths) -> list:
    """What every node must see at node 0's paths: (label, path) pairs for the node check."""
    from umdbench.util import data_root

    return [
        ("work dir", work_dir),
        ("data root", data_root(data_root_arg)),
        *(("plugin file", p) for p in plugin_paths),
    ]


def follow_node0(group, launch, what: str) -> int:
    """Node k > 0's whole run: join node 0's jobs until it ends; 1 when a job failed here."""
    from umdbench.run.distributed import follow

    print(
        f"node {launch.node_rank} of {launch.nnodes}: following node 0, which trains, evaluates and stores the {what}",
        flush=True,
    )
    joined, failed = follow(group, launch)
    print(
        f"\nnode {launch.node_rank}: joined {joined} training stage(s); node 0 stored the {what}."
        + (f" Failed here: {', '.join(failed)}." if failed else "")
    )
    return 1 if failed else 0

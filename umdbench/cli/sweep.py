"""``umdbench sweep``: run a suite (a grid of cells) with shared stages. Import-light (no torch)."""

from __future__ import annotations

import argparse

SWEEP_EPILOG = """\
examples:
  umdbench sweep --suite table4 --dry-run --data-root ../shared/datasets
  umdbench sweep --suite table1 --seeds 3 --data-root ../shared/datasets
  umdbench sweep --suite fig5 --datasets vqa-rad --cfg-options pretrain.train.max_iters=50 tune.*.train.max_iters=50
  umdbench sweep --suite table4 --executor ray --ray-address auto
  umdbench sweep --suite table4 --nproc-per-node 2          # each training stage as a 2-process DDP job
  umdbench sweep --suite table4 --nnodes 2 --node-rank 0 --rdzv-endpoint node0:29400  # node 1: --node-rank 1

--cfg-options apply to every cell: pretrain.* is ignored for cells without pre-training, tune.N.* for
chains shorter than N+1, and tune.*.KEY applies to every tuning stage that has KEY (tune.*.pooling=mean
skips TD-Calib). Stopping a sweep and running the same command again resumes it: finished cells and
cached stages are skipped.
"""


def add_subcommands(sub, common_parent_parser) -> None:
    p = sub.add_parser(
        "sweep",
        parents=[common_parent_parser],
        help="run a suite (grid of cells) with shared stages",
        description="Plan a suite's cells into one DAG of unique stages (shared pre-trainings and "
        "TD-Calib stages run once) and run it; finished cells are skipped.",
        epilog=SWEEP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--suite", required=True, metavar="NAME", help="suite name (`umdbench list --kind suite`)")
    p.add_argument(
        "--seeds",
        type=int,
        default=None,
        metavar="N",
        help="seeds 0..N-1 per cell (default: the suite's `seeds`, 3 for the paper's tables)",
    )
    p.add_argument(
        "--preset",
        default="tiny",
        help="model size and hyper-parameters of the built-in encoder: tiny (default; tests), "
        "small (learns on 2 CPU cores) or paper",
    )
    p.add_argument("--data-root", metavar="DIR", help="folder holding the datasets (or env UMDBENCH_DATA_ROOT)")
    p.add_argument(
        "--work-dir", default="work_dirs", metavar="DIR", help="cache, logs and results store (default work_dirs)"
    )
    p.add_argument(
        "--datasets",
        metavar="A,B",
        help="only these datasets of the suite (comma-separated); may name its "
        "extra_datasets, which go beyond the paper and are not run otherwise",
    )
    p.add_argument(
        "--track",
        metavar="B1,B2",
        help="also log every stage to these experiment trackers: tensorboard, mlflow (each must be installed)",
    )
    p.add_argument(
        "--cfg-options",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override config keys of every cell (see below)",
    )
    p.add_argument("--executor", default="local", choices=("local", "ray"), help="where stages run (default local)")
    p.add_argument("--ray-address", metavar="ADDR", help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--ray-num-cpus", type=int, metavar="N", help="CPUs of a local Ray (default: all)")
    p.add_argument("--dry-run", action="store_true", help="print cells, unique stages and sharing; run nothing")
    from umdbench.cli.launch import add_launch_arguments

    add_launch_arguments(p)  # --nproc-per-node, --nnodes, --node-rank, --rdzv-endpoint (local executor)
    p.set_defaults(handler=cmd_sweep)


def cmd_sweep(args) -> int:
    from umdbench.cli.launch import follow_node0, launch_of, shared_paths
    from umdbench.errors import ConfigError
    from umdbench.plan.config import parse_override
    from umdbench.plan.suites import check_suite_names, get_suite
    from umdbench.plugin import get_registries, note_failed_plugins
    from umdbench.results.store import ResultsStore
    from umdbench.run.context import RunContext
    from umdbench.run.nodes import node_group
    from umdbench.sweep.planning import plan_sweep

    launch = launch_of(args)
    if args.executor == "ray" and launch.world_size > 1:  # before planning, and before other nodes wait
        from umdbench.sweep.executors import RAY_WITH_TORCHRUN

        raise ConfigError(RAY_WITH_TORCHRUN)
    if args.seeds is not None and args.seeds < 1:
        raise ConfigError("--seeds must be at least 1.")
    registries = get_registries(tuple(args.plugin_path))
    note_failed_plugins()
    suite = get_suite(registries, args.suite)
    check_suite_names(suite, registries)
    if args.seeds is None:
        args.seeds = suite.seeds
    overrides = tuple(parse_override(o) for o in args.cfg_options)
    if args.track:
        overrides += (("tracking.backends", args.track),)
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()] if args.datasets else None
    specs = suite.cell_specs(
        seeds=args.seeds, preset=args.preset, data_root=args.data_root, user_overrides=overrides, datasets=datasets
    )
    ctx = RunContext(args.work_dir, registries)
    follower = launch.node_rank > 0 and not args.dry_run  # joins node 0's jobs; never opens the store
    store_path = ctx.ws.store_path
    store = ResultsStore(store_path) if not follower and (store_path.is_file() or not args.dry_run) else None
    plan = plan_sweep(specs, registries, ctx.catalog, store=store, suite=suite.name)
    from umdbench.run.step_in_backward import check_processes

    for planned in plan.cells:
        if planned.run is not None:
            check_processes(planned.run.config, launch.world_size)
    if args.dry_run:
        from umdbench.cli.plancache import note_config
        from umdbench.util import data_root

        given = data_root(args.data_root)
        note_config({"root": str(given) if given else None, "cells": [c.run.config for c in plan.cells if c.run]})
    print(f"{suite.title}  [suite {suite.name}, preset {args.preset}, seeds {args.seeds}, executor {args.executor}]")
    if any(r.inferred for r in suite.rows):
        from umdbench.results.paper_results import INFERRED_NOTE

        print(f"note: {INFERRED_NOTE}")
    if not follower:
        print(plan.describe(ctx.ws.is_trained))
    if args.dry_run:
        return 0
    with node_group(launch, shared_paths(ctx.ws.work_dir, args.data_root, args.plugin_path)) as group:
        if follower:
            return follow_node0(group, launch, "rows")
        return _run_plan(args, suite, plan, ctx, store, overrides, launch, group)


def _run_plan(args, suite, plan, ctx, store, overrides, launch, group) -> int:
    """Node 0's (or the only node's) sweep once planned: membership, the executor, the report."""
    from umdbench.sweep.executors import make_executor
    from umdbench.sweep.planning import membership_entries
    from umdbench.util import data_root

    store.record_membership(membership_entries(plan, overrides))
    if not plan.pending:
        print("\nnothing to run: every available cell is finished.")
        return 0
    executor = make_executor(
        args.executor,
        ray_address=args.ray_address,
        num_cpus=args.ray_num_cpus,
        plugin_paths=tuple(args.plugin_path),
        launch=launch,
        group=group,
        data_root=data_root(args.data_root),
    )
    print(
        f"\nrunning {len(plan.pending)} cells, {len(plan.needed_stages())} training stages ({executor.name} executor)"
    )
    report = executor.run(plan, ctx, overrides)
    print(
        f"\nsweep {suite.name}: {report.summary()}; results in {ctx.ws.store_path}. "
        f"`umdbench leaderboard --suite {suite.name} --work-dir {args.work_dir}` renders them."
    )
    if report.failed:
        print("failed cells (run the same command again to retry them):")
        for cell, error in report.failed:
            print(f"  - {cell.describe()}: {error.splitlines()[0]}")
        return 1
    return 0

"""``umdbench adopt``: reuse stages trained by older code once the current code is shown to train
them alike (:mod:`umdbench.run.stage_adoption`). Import-light (no torch until the command runs)."""

from __future__ import annotations

import argparse

ADOPT_EPILOG = """\
examples:
  umdbench adopt --work-dir work_dirs --pretrain mr --tune tdcalib+gmcoord --dataset medsynth
  umdbench adopt --work-dir work_dirs/small --suite table4 --seeds 3 --preset small --data-root ../shared/datasets
  umdbench adopt --work-dir work_dirs --suite table1 --steps 5 --tolerance 1e-6

Select the cells exactly as the run or sweep that trained them did (same preset, seeds, datasets
and --cfg-options). For each planned training stage without an artifact, a finished stage with the
same inputs but older code is looked up, its first K optimiser steps are re-run under the current
code and compared with what it recorded when it was trained; identical (or within --tolerance,
relative) means adopted. Then `umdbench run` / `umdbench sweep` reuses the stages and only
evaluates. Exit status 2 when any stage is refused (each with its reason).
"""


def add_subcommands(sub, common_parent_parser) -> None:
    p = sub.add_parser(
        "adopt",
        parents=[common_parent_parser],
        help="reuse stages trained by older code after re-running their first steps",
        description="Make the cached stages of older code count for the current code, stage by stage, "
        "when re-running a stage's first optimiser steps gives the numbers it recorded.",
        epilog=ADOPT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--work-dir", default="work_dirs", metavar="DIR", help="the work dir holding the trained stages")
    p.add_argument(
        "--steps", type=int, default=3, metavar="K", help="optimiser steps to re-run and compare (default 3)"
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.0,
        metavar="T",
        help="largest relative difference of a logged loss (and of the weights' norm) still adopted; "
        "default 0: identical losses and bit-identical weights",
    )
    p.add_argument("--suite", metavar="NAME", help="the cells of a suite (as `umdbench sweep --suite NAME`)")
    p.add_argument("--seeds", type=int, default=1, metavar="N", help="with --suite: seeds 0..N-1 (default 1)")
    p.add_argument("--datasets", metavar="A,B", help="with --suite: only these datasets")
    p.add_argument("--pretrain", metavar="P", help="one cell (as `umdbench run`): pre-training strategy, or 'none'")
    p.add_argument("--tune", metavar="T1+T2", help="one cell: tuning strategies")
    p.add_argument("--dataset", metavar="D", help="one cell: downstream dataset")
    p.add_argument("--seed", type=int, default=0, help="one cell: its seed (default 0)")
    p.add_argument("--encoder", metavar="E", help="one cell: registered encoder (default: the dataset's)")
    p.add_argument("--preset", default="tiny", help="tiny (default), small or paper")
    p.add_argument("--data-root", metavar="DIR", help="folder holding the datasets (or env UMDBENCH_DATA_ROOT)")
    p.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE", help="as for run / sweep")
    p.set_defaults(handler=cmd_adopt)


def cmd_adopt(args) -> int:
    from umdbench.errors import ConfigError
    from umdbench.plan.config import CellSpec, parse_override, parse_tune_chain, resolve
    from umdbench.plan.stage_plan import build_plan
    from umdbench.plugin import get_registries, note_failed_plugins
    from umdbench.run.context import RunContext
    from umdbench.run.evidence import EVIDENCE_STEPS
    from umdbench.run.stage_adoption import adopt_stages

    one_cell = [args.pretrain, args.tune, args.dataset]
    if bool(args.suite) == any(v is not None for v in one_cell) or (not args.suite and None in one_cell):
        raise ConfigError(
            "umdbench adopt needs the cells to look at: either --suite NAME (as `umdbench sweep`) or "
            "--pretrain P --tune T --dataset D (as `umdbench run`), not both."
        )
    if not 1 <= args.steps <= EVIDENCE_STEPS:
        raise ConfigError(
            f"--steps {args.steps}: a stage records its first {EVIDENCE_STEPS} optimiser steps when "
            f"it trains; choose K from 1 to {EVIDENCE_STEPS}."
        )
    if args.tolerance < 0:
        raise ConfigError(f"--tolerance {args.tolerance}: a relative difference, 0 or more.")
    registries = get_registries(tuple(args.plugin_path))
    note_failed_plugins()
    overrides = tuple(parse_override(o) for o in args.cfg_options)
    ctx = RunContext(args.work_dir, registries)
    if not ctx.ws.stages_dir.is_dir():
        raise ConfigError(
            f"{ctx.ws.stages_dir} does not exist: there is nothing to adopt in {args.work_dir}; pass "
            f"the --work-dir of the run or sweep that trained the stages."
        )
    if args.suite:
        from umdbench.plan.suites import get_suite
        from umdbench.sweep.planning import plan_sweep

        if args.seeds < 1:
            raise ConfigError("--seeds must be at least 1.")
        suite = get_suite(registries, args.suite)
        datasets = [d.strip() for d in args.datasets.split(",") if d.strip()] if args.datasets else None
        specs = suite.cell_specs(
            seeds=args.seeds, preset=args.preset, data_root=args.data_root, user_overrides=overrides, datasets=datasets
        )
        plan = plan_sweep(specs, registries, ctx.catalog, suite=suite.name)
        stages, runs = plan.stages, plan.runs
        what = f"suite {suite.name}: {len(plan.planned)} planned cells"
    else:
        cell = CellSpec(
            pretrain=args.pretrain,
            tune=parse_tune_chain(args.tune),
            dataset=args.dataset,
            preset=args.preset,
            seed=args.seed,
            overrides=overrides,
            data_root=args.data_root,
            encoder=args.encoder,
        )
        resolved = resolve(cell, registries)
        stages = build_plan(resolved, registries, ctx.catalog)[:-1]
        runs = {s.key: resolved for s in stages}
        what = f"{cell.label} seed {cell.seed}"
    print(
        f"umdbench adopt: {what}, {len(stages)} training stages, in {ctx.ws.work_dir} "
        f"(--steps {args.steps}, --tolerance {args.tolerance:g})"
    )
    outcomes = adopt_stages(stages, runs, ctx, steps=args.steps, tolerance=args.tolerance)
    count = {s: sum(o.status == s for o in outcomes) for s in ("trained", "adopted", "refused")}
    print(
        f"\n{count['adopted']} adopted, {count['trained']} had their artifact already, {count['refused']} refused"
        + ("; `umdbench run` / `umdbench sweep` reuses the adopted stages" if count["adopted"] else "")
        + ("; a refused stage is trained again by `umdbench run` / `umdbench sweep`" if count["refused"] else "")
        + "."
    )
    return 2 if count["refused"] else 0

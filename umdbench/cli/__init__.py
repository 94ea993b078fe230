"""The ``umdbench`` command line. Import-light: torch loads only when a command needs it."""

from __future__ import annotations

import argparse
import sys

from umdbench.errors import UmdbenchError
from umdbench.util import DATA_ROOT_ENV

DESCRIPTION = """\
umdbench: benchmark harness for medical vision-language pre-training (UMD and baselines).

examples:
  umdbench run --pretrain mr --tune tdcalib+gmcoord --dataset medsynth
  umdbench run --pretrain none --tune direct --dataset vqa-rad --data-root ../shared/datasets
  umdbench list
  umdbench leaderboard
"""


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--plugin-path",
        action="append",
        default=[],
        metavar="FILE",
        help="load a plugin from a local .py file (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of every command. Longer than 80 lines because it is a flat list of declarations, one block
    per command, read top to bottom like the help it prints."""
    from umdbench.cli.launch import add_launch_arguments

    common = argparse.ArgumentParser(add_help=False)
    _common(common)
    parser = argparse.ArgumentParser(
        prog="umdbench", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    # also accepted before the sub-command (`umdbench --plugin-path F run ...`); merged in main()
    parser.add_argument(
        "--plugin-path",
        action="append",
        default=[],
        metavar="FILE",
        dest="global_plugin_path",
        help="load a plugin from a local .py file (repeatable; also after the sub-command)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run",
        parents=[common],
        help="pre-train -> tune -> evaluate one configuration",
        description="Run one cell: an optional pre-training, a chain of tuning stages, and "
        "evaluation on the test split. Finished stages are reused from the cache.",
    )
    run.add_argument("--pretrain", required=True, metavar="P", help="pre-training strategy, or 'none' (scratch)")
    run.add_argument("--tune", required=True, metavar="T1+T2", help="tuning strategies, applied left to right")
    run.add_argument("--dataset", required=True, metavar="D", help="downstream dataset")
    run.add_argument(
        "--preset",
        default=None,
        help="model size and hyper-parameters of the built-in encoder: tiny (default; tests), "
        "small (learns on 2 CPU cores) or paper",
    )
    run.add_argument("--encoder", metavar="E", help="registered encoder (default: the dataset's)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--data-root", metavar="DIR", help=f"folder holding the datasets (or env {DATA_ROOT_ENV})")
    run.add_argument(
        "--work-dir", metavar="DIR", default="work_dirs", help="cache, logs and results store (default work_dirs)"
    )
    run.add_argument(
        "--cfg-options",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override resolved config keys, e.g. pretrain.train.max_iters=50 tune.0.train.lr=1e-4",
    )
    run.add_argument(
        "--track",
        metavar="B1,B2",
        help="also log every stage to these experiment trackers: "
        "tensorboard, mlflow (each must be installed); same as --cfg-options tracking.backends=...",
    )
    run.add_argument("--dry-run", action="store_true", help="print the resolved config and stage plan; train nothing")
    add_launch_arguments(run)

    lst = sub.add_parser("list", parents=[common], help="registered names by kind")
    lst.add_argument("--kind", choices=("pretrain", "tune", "dataset", "metric", "suite", "encoder", "task"))

    plugins = sub.add_parser(
        "plugins", parents=[common], help="where each plugin came from, its version, load failures"
    )
    plugins.add_argument(
        "--traceback",
        "--verbose",
        "-v",
        dest="traceback",
        action="store_true",
        help="show where each failed plugin raised",
    )
    plugins.add_argument(
        "--strict", action="store_true", help="exit 1 when any plugin failed to load (for a plugin package's own CI)"
    )

    board = sub.add_parser("leaderboard", parents=[common], help="render markdown leaderboards into results/")
    board.add_argument("--work-dir", default="work_dirs", metavar="DIR", help="where results.sqlite lives")
    board.add_argument("--store", metavar="FILE", help="results store to read (default WORK_DIR/results.sqlite)")
    board.add_argument("--out", default="results", metavar="DIR", help="output folder (default results)")
    board.add_argument("--suite", metavar="NAME", help="only this suite")

    copy = sub.add_parser(
        "copy-results",
        help="copy finished results (store rows, predictions, reference points) between work dirs",
        description="Copy what leaderboards read from one work dir into another: store rows (rows already there "
        "are kept), suite membership, per-example predictions and reference points; no trained stage. "
        "The copy renders the same boards, and a sweep into it skips every copied cell.",
        epilog="examples:\n"
        "  umdbench copy-results --from work_dirs/small --to results/small/store   # keep with the boards\n"
        "  umdbench copy-results --from results/small/store --to work_dirs/small   # resume a sweep elsewhere",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    copy.add_argument(
        "--from", dest="src", required=True, metavar="DIR", help="work dir (or results folder) to copy from"
    )
    copy.add_argument(
        "--to", dest="dst", required=True, metavar="DIR", help="work dir to copy into (created if missing)"
    )

    base = sub.add_parser(
        "baselines", parents=[common], help="majority-answer and question-only accuracy of a VQA dataset"
    )
    base.add_argument(
        "dataset",
        metavar="DATASET",
        nargs="?",
        help="a VQA dataset; omitted with --work-dir: every VQA dataset split evaluated there",
    )
    base.add_argument("--data-root", metavar="DIR", help=f"folder holding the datasets (or env {DATA_ROOT_ENV})")
    base.add_argument("--split", default="test")
    base.add_argument(
        "--cfg-options", nargs="+", default=[], metavar="KEY=VALUE", help="dataset options, e.g. n_test=100"
    )
    base.add_argument(
        "--work-dir",
        metavar="DIR",
        help="also keep them in DIR, where `umdbench leaderboard --work-dir DIR` prints them under the dataset's table",
    )

    from umdbench.cli import adopt as adopt_commands
    from umdbench.cli import data as data_commands
    from umdbench.cli import overlap_command as overlap_commands
    from umdbench.cli import power_command as power_commands
    from umdbench.cli import sweep as sweep_commands

    data_commands.add_subcommands(sub)
    sweep_commands.add_subcommands(sub, common)
    adopt_commands.add_subcommands(sub, common)
    power_commands.add_subcommands(sub, common)
    overlap_commands.add_subcommands(sub, common)
    return parser


def cmd_run(args) -> int:
    from umdbench.cli.launch import launch_of
    from umdbench.cli.plancache import note_config
    from umdbench.plan.config import CellSpec, parse_override, parse_tune_chain, resolve
    from umdbench.plan.stage_plan import build_plan, describe_plan
    from umdbench.plugin import get_registries, note_failed_plugins
    from umdbench.run.cell import run_cell
    from umdbench.run.context import RunContext

    launch = launch_of(args)
    chain = parse_tune_chain(args.tune)
    overrides = tuple(parse_override(o) for o in args.cfg_options)
    if args.track:
        overrides += (("tracking.backends", args.track),)
    registries = get_registries(tuple(args.plugin_path))
    note_failed_plugins()
    cell = CellSpec(
        pretrain=args.pretrain,
        tune=chain,
        dataset=args.dataset,
        preset=args.preset or "tiny",
        seed=args.seed,
        overrides=overrides,
        data_root=args.data_root,
        encoder=args.encoder,
    )
    resolved = resolve(cell, registries)
    from umdbench.run.step_in_backward import check_processes

    check_processes(resolved.config, launch.world_size)
    note_config(resolved.config)
    _note_unused_data_root(args.data_root, resolved.config)
    ctx = RunContext(args.work_dir, registries)
    stages = build_plan(resolved, registries, ctx.catalog)
    if args.dry_run:
        import json

        print(json.dumps(resolved.config, indent=2, default=str))
        if resolved.config["model"]["type"] == "coattn":
            from umdbench.models.availability import describe_init

            print(f"\n{describe_init(resolved.config['model'])}")
        for deviation in resolved.deviations:
            print(f"deviation: {deviation}")
        print(f"\nconfig hash {resolved.hash[:16]}\nstage plan ({len(stages)} stages):")
        print(describe_plan(stages, ctx.ws.is_trained))
        return 0
    from umdbench.cli.launch import follow_node0, shared_paths
    from umdbench.run.distributed import stage_trainer
    from umdbench.run.nodes import node_group

    with node_group(launch, shared_paths(ctx.ws.work_dir, args.data_root, args.plugin_path)) as group:
        if launch.node_rank > 0:
            return follow_node0(group, launch, "result")
        row = run_cell(resolved, stages, ctx, train=stage_trainer(launch, args.plugin_path, group))
    metrics = "  ".join(f"{k}={v:.2f}" for k, v in sorted(row["metrics"].items()))
    print(
        f"\nresult: {cell.label} seed {cell.seed}: {metrics}\nstored in {ctx.ws.store_path} "
        f"(cell {row['cell_key'][:12]}, {row['wall_time_s']:.1f}s)"
    )
    _result_in_context(row, stages[-1], ctx, explicit_preset=args.preset is not None)
    return 0


def _result_in_context(row: dict, evaluation, ctx, explicit_preset: bool) -> None:
    """The split's no-image reference points beside a VQA result (computed once per split and data,
    kept in the work dir as the boards keep them), a plain word when the result is below
    question-only, and why a ``tiny`` number on real data says little."""
    from umdbench.results.reference_points import (
        load_reference_points,
        reference_points,
        row_reference_key,
        store_reference_points,
    )
    from umdbench.util import is_score

    dataset = ctx.catalog.get(evaluation.data)
    if dataset.task != "vqa":
        return
    key = row_reference_key(row)
    points = load_reference_points(ctx.ws.reference_points_path).get(key)
    if points is None:
        points = reference_points(dataset.records("train"), dataset.records(evaluation.data["split"]))
        store_reference_points(ctx.ws.reference_points_path, key, points)
    for name, result in points.items():
        print(
            f"  {name:<16} "
            + "  ".join(f"{k}={v:.2f}" for k, v in sorted(result.items()) if is_score(v))
            + "   (no image: reference point)"
        )
    ours, text_only = row["metrics"].get("overall"), points.get("question only", {}).get("overall")
    if is_score(ours) and is_score(text_only) and ours < text_only:
        print(
            f"  below question-only ({ours:.2f} < {text_only:.2f}): this model answers worse than one that never "
            f"sees the image."
        )
    if row["preset"] == "tiny" and type(dataset).needs_root:
        hint = "" if explicit_preset else " (the default)"
        print(
            f"  note: preset tiny{hint} is a test-sized model with a random-init text tower; on real data its "
            f"number says little. --preset small learns on 2 CPU cores (README, Presets)."
        )


def _note_unused_data_root(arg: str | None, config: dict) -> None:
    """One line when --data-root was given but no dataset of the run reads files (needs_root = False)."""
    pretrain = config.get("pretrain") or {}
    roots = [config["dataset"].get("root"), (pretrain.get("corpus") or {}).get("root")]
    if arg and not any(roots):
        print(
            f"note: --data-root {arg} is not used: dataset {config['dataset']['type']!r} is generated "
            f"(needs_root = False){' and so is the pre-training corpus' if pretrain else ''}."
        )


def cmd_list(args) -> int:
    from umdbench.plugin import KINDS, get_registries, note_failed_plugins

    registries = get_registries(tuple(args.plugin_path))
    note_failed_plugins()
    for kind, reg in registries.kinds().items():
        if args.kind and kind != args.kind:
            continue
        print(f"{KINDS[kind]} ({kind}):")
        for name in reg.names():
            print(f"  {name:<22} {reg.origin(name)}")
    return 0


def cmd_plugins(args) -> int:
    from umdbench.plugin import get_plugin_report, get_registries

    get_registries(tuple(args.plugin_path), strict_paths=False)  # a broken --plugin-path is reported here
    report = get_plugin_report()
    for info in report.plugins:
        status = (
            f"FAILED: {info.error}"
            if info.error
            else ", ".join(f"{k}: {' '.join(v)}" for k, v in info.registered.items())
        )
        print(f"{info.name} {info.version}  [{info.source}]\n    {status or '(registered nothing)'}")
        if info.error and args.traceback:
            trace = getattr(info, "error_trace", None) or "(no traceback was captured for this failure)\n"
            print("".join(f"      {line}\n" for line in trace.rstrip("\n").splitlines()), end="")
    if report.failures:
        hint = "" if args.traceback else "; `umdbench plugins --traceback` shows where each one raised"
        print(f"\n{len(report.failures)} plugin(s) failed to load and were skipped{hint}.")
        if args.strict:
            return 1
    return 0


def cmd_leaderboard(args) -> int:
    from pathlib import Path

    from umdbench.plan.suites import all_suites, get_suite
    from umdbench.plugin import get_registries
    from umdbench.results.leaderboard import write_leaderboards
    from umdbench.results.reference_points import load_reference_points
    from umdbench.results.store import ResultsStore
    from umdbench.run import layout

    store_path = Path(args.store) if args.store else layout.store_path(args.work_dir)
    if not store_path.is_file():
        raise UmdbenchError(f"no results store at {store_path}: run `umdbench run ...` first, or pass --store FILE.")
    points = load_reference_points(layout.reference_points_path(store_path.parent))
    # suite specs come from the registries (registry.toml and plugin hooks; no strategy or dataset is
    # imported); the boards render from the resolved Suite objects
    registries = get_registries(tuple(args.plugin_path))
    suites = [get_suite(registries, args.suite)] if args.suite else all_suites(registries)
    written = write_leaderboards(
        ResultsStore(store_path), Path(args.out), suites, named=args.suite is not None, reference_points=points
    )
    for path in written:
        print(f"wrote {path}")
    return 0


def cmd_copy_results(args) -> int:
    from umdbench.run.workspace import Workspace

    counts = Workspace(args.dst).copy_results_from(Workspace(args.src))
    print(
        f"copied {counts['rows']} result rows and {counts['predictions']} predictions files from {args.src} to "
        f"{args.dst}; {counts['kept']} rows were already there"
        + (
            f"; {counts['unverified']} rows came without predictions (missing or failing their checksum in {args.src})"
            if counts["unverified"]
            else ""
        )
    )
    return 0


def cmd_baselines(args) -> int:
    from umdbench.cli.data import build_dataset, dataset_options
    from umdbench.plugin import get_registries
    from umdbench.results.reference_points import reference_key, reference_points, store_reference_points
    from umdbench.util import dataset_root

    registries = get_registries(tuple(args.plugin_path))
    if args.dataset is None:
        return _baselines_of_store(args, registries)
    cls = registries.dataset.get(args.dataset)
    if cls.task != "vqa":
        raise UmdbenchError(f"baselines are defined for VQA datasets; {args.dataset!r} is a {cls.task} dataset.")
    options = dataset_options(args.cfg_options, "--cfg-options", cls, args.dataset)
    dataset = build_dataset(cls, args.dataset, dataset_root(cls, args.data_root, args.dataset), "skip", options)
    points = reference_points(dataset.records("train"), dataset.records(args.split))
    _print_reference_points(args.dataset, args.split, points)
    if args.work_dir:
        from umdbench.run.layout import reference_points_path

        path = reference_points_path(args.work_dir)
        store_reference_points(path, reference_key(args.dataset, args.split, dataset.fingerprint()), points)
        print(f"kept in {path}")
    return 0


def _stored_root(root: str | None, given: str | None) -> str | None:
    """A dataset root as a row stores it (``<data-root>/slake``), on this machine's data root."""
    from umdbench.util import DATA_ROOT_MARK, data_root

    if root and root.startswith(DATA_ROOT_MARK):
        base = data_root(given)
        if base is None:
            raise UmdbenchError(
                f"the rows read {root}: pass --data-root DIR (or set UMDBENCH_DATA_ROOT) to say "
                f"where the data root is on this machine."
            )
        return str(base) + root[len(DATA_ROOT_MARK) :]
    return root


def _print_reference_points(dataset: str, split: str, points: dict) -> None:
    from umdbench.util import is_score

    for name, result in points.items():
        print(f"{dataset} {split} {name:<16} " + "  ".join(f"{k}={v:.2f}" for k, v in result.items() if is_score(v)))


def _baselines_of_store(args, registries) -> int:
    """``umdbench baselines --work-dir DIR``: the reference points of every VQA split the store's
    rows were evaluated on, each read with the row's own dataset root and options."""
    from umdbench.cli.data import build_dataset
    from umdbench.results.reference_points import (
        load_reference_points,
        reference_key,
        reference_points,
        row_reference_key,
        store_reference_points,
    )
    from umdbench.results.store import ResultsStore
    from umdbench.run import layout

    if not args.work_dir:
        raise UmdbenchError(
            "umdbench baselines needs a DATASET, or --work-dir DIR to cover every VQA dataset evaluated there."
        )
    store_path, points_path = layout.store_path(args.work_dir), layout.reference_points_path(args.work_dir)
    if not store_path.is_file():
        raise UmdbenchError(f"no results store at {store_path}: name a DATASET, or pass the work dir of a sweep.")
    kept = load_reference_points(points_path)
    splits: dict[str, tuple[str, dict, str]] = {}
    for row in ResultsStore(store_path).rows():
        if "closed" in row["metrics"]:  # VQA rows
            config = row.get("config") or {}
            splits.setdefault(
                row_reference_key(row),
                (row["dataset"], config.get("dataset") or {}, (config.get("eval") or {}).get("split", "test")),
            )
    for key, (name, data, split) in sorted(splits.items()):
        if key in kept:
            print(f"{name} {split}: kept already")
            continue
        try:
            dataset = build_dataset(
                registries.dataset.get(data.get("type", name)),
                name,
                _stored_root(data.get("root"), args.data_root),
                "skip",
                data.get("options") or {},
            )
            if reference_key(name, split, dataset.fingerprint()) != key:
                print(f"{name} {split}: skipped, the data at {data.get('root')} changed since its rows were stored")
                continue
            train, test = dataset.records("train"), dataset.records(split)
        except (UmdbenchError, OSError, ValueError) as exc:  # one unreadable dataset does not stop the others
            print(f"{name} {split}: skipped, its data cannot be read here ({exc})")
            continue
        points = reference_points(train, test)
        store_reference_points(points_path, key, points)
        _print_reference_points(name, split, points)
    print(f"kept in {points_path}")
    return 0


COMMANDS = {
    "run": cmd_run,
    "list": cmd_list,
    "plugins": cmd_plugins,
    "leaderboard": cmd_leaderboard,
    "baselines": cmd_baselines,
    "copy-results": cmd_copy_results,
}


def _trains_here(args) -> bool:
    """Whether this command trains stages in this process (or its torchrun children); a Ray
    sweep's stages run in Ray workers, which get the allocator through their runtime env."""
    if args.command not in ("run", "sweep") or args.dry_run:
        return False
    return getattr(args, "executor", "local") != "ray"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    args.plugin_path = list(args.global_plugin_path) + list(getattr(args, "plugin_path", None) or [])
    handler = COMMANDS.get(args.command) or getattr(args, "handler", None)
    try:
        if argv is None and _trains_here(args):
            # a process that trains runs on mimalloc where installed (umdbench.run.host_memory)
            from umdbench.run.host_memory import reexec_on_allocator

            reexec_on_allocator()
        if args.command in ("run", "sweep") and args.dry_run:
            # a repeated dry run replays its stored plan: no torch, model or plugin import
            from umdbench.cli.plancache import cached_dry_run

            argv = list(sys.argv[1:] if argv is None else argv)
            return cached_dry_run(argv, args.work_dir, args.plugin_path, lambda: handler(args))
        return handler(args)
    except UmdbenchError as exc:
        print(f"umdbench: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("umdbench: interrupted; run the same command again to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

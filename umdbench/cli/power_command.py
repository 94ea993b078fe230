"""``umdbench power``: how many seeds and test examples a difference needs, from a store's
per-example predictions (:mod:`umdbench.results.power`)."""

from __future__ import annotations

import numpy as np

from umdbench.errors import UmdbenchError


def add_subcommands(sub, common_parent_parser) -> None:
    p = sub.add_parser(
        "power",
        parents=[common_parent_parser],
        help="seeds and test examples a difference needs, from a store's predictions",
        description="For each suite, preset, dataset and metric in the store: the smallest difference "
        "its test split resolves with 1, 3, 5 and 10 seeds, and how many test examples a "
        "given difference needs (80 % power, two-sided 5 %), estimated from every row "
        "paired with the suite's reference row.",
    )
    p.add_argument("--work-dir", default="work_dirs", metavar="DIR", help="where results.sqlite lives")
    p.add_argument("--store", metavar="FILE", help="results store to read (default WORK_DIR/results.sqlite)")
    p.add_argument("--suite", metavar="NAME", help="only this suite")
    p.add_argument("--difference", type=float, default=1.0, metavar="POINTS", help="difference to resolve (default 1)")
    p.add_argument("--metric", metavar="M", help="only this metric (default: the suite's)")
    p.set_defaults(handler=cmd_power)


def cmd_power(args) -> int:
    from pathlib import Path

    from umdbench.plan.suites import all_suites, get_suite
    from umdbench.plugin import get_registries
    from umdbench.results.board_data import collect_suite_results
    from umdbench.results.power import components, plan_text
    from umdbench.results.store import ResultsStore
    from umdbench.run import layout

    store_path = Path(args.store) if args.store else layout.store_path(args.work_dir)
    if not store_path.is_file():
        raise UmdbenchError(f"no results store at {store_path}: pass --work-dir DIR (a sweep's) or --store FILE.")
    if args.difference <= 0:
        raise UmdbenchError(f"--difference must be a positive number of points, got {args.difference}.")
    store = ResultsStore(store_path)
    registries = get_registries(tuple(args.plugin_path))
    suites = [get_suite(registries, args.suite)] if args.suite else all_suites(registries)
    answered = 0
    for suite in suites:
        for preset, results in sorted(collect_suite_results(store, suite).items()):
            reference = suite.reference_cell
            for dataset in sorted(results.stored_datasets):
                for metric in [args.metric] if args.metric else list(suite.metrics):
                    ref, ref_index, _ = results.correct(reference, dataset, metric)
                    if not isinstance(ref, np.ndarray):
                        continue  # no predictions, or a rank metric (AUC): not a mean the components describe
                    pairs = []
                    for name in suite.cell_names():
                        row, index, _ = results.correct(name, dataset, metric) if name != reference else (None,) * 3
                        if row is not None and np.array_equal(index, ref_index):
                            pairs.append((row, ref))
                    c = components(pairs)
                    if c is None:
                        continue
                    print(plan_text(f"{suite.name} {preset} {dataset} {metric} (vs {reference})", c, args.difference))
                    answered += 1
    if not answered:
        raise UmdbenchError(
            f"no suite in {store_path} has rows with per-example predictions to estimate from; "
            f"run a sweep (its rows keep them) or pass --suite NAME."
        )
    return 0

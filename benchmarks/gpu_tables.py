"""Projected GPU hours of each paper-preset table from measured step throughput (runs on CPU).

    python -m benchmarks.gpu_tables benchmarks/gpu-h200/steps.jsonl [more.jsonl ...] \
        --data-root ../shared/datasets --suites table1,table4,fig5 --seeds 3

Reads the JSON lines written by ``python -m benchmarks.gpu --out FILE`` (for each strategy the
fastest measured samples/s is used), plans each suite at the paper preset exactly as
``umdbench sweep --dry-run`` does (unique stages only: a pre-training shared by several cells is
counted once), and sums ``max_iters x batch_size / samples_per_s`` over its training stages.
Evaluation, data loading and start-up are excluded; so is any gain from a larger batch than the one
measured. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def best_throughput(paths: list[str]) -> dict[str, dict]:
    """strategy -> the measured row with the highest samples/s."""
    best: dict[str, dict] = {}
    for path in paths:
        with open(path) as fh:
            for line in fh:
                if line.strip():
                    row = json.loads(line)
                    if row["samples_per_s"] > best.get(row["strategy"], {}).get("samples_per_s", 0):
                        best[row["strategy"]] = row
    return best


def suite_stage_hours(suite_name: str, seeds: int, data_root: str | None, rates: dict[str, dict]):
    """(hours per strategy, stage count per strategy, strategies without a measurement)."""
    from umdbench.data.catalog import DataCatalog
    from umdbench.plan.suites import get_suite
    from umdbench.plugin import get_registries
    from umdbench.sweep.planning import plan_sweep

    registries = get_registries(())
    suite = get_suite(registries, suite_name)
    specs = suite.cell_specs(
        seeds=seeds,
        preset="paper",
        data_root=data_root,
        # planning only: iterations and batches do not depend on where weights come from
        user_overrides=(("model.vision.on_missing", "random"),),
        datasets=None,
    )
    plan = plan_sweep(specs, registries, DataCatalog(registries), store=None, suite=suite.name)
    hours: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    missing = set()
    for stage in plan.stages:
        train = stage.cfg["train"]
        count[stage.name] += 1
        if stage.name not in rates:
            missing.add(stage.name)
            continue
        hours[stage.name] += (
            int(train["max_iters"]) * int(train["batch_size"]) / rates[stage.name]["samples_per_s"] / 3600
        )
    return dict(hours), dict(count), missing


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("measurements", nargs="+", help="JSON-lines files from benchmarks.gpu --out")
    ap.add_argument("--data-root", default=os.environ.get("UMDBENCH_DATA_ROOT"))
    ap.add_argument("--suites", default="table1,table4,fig5")
    ap.add_argument("--seeds", type=int, default=1)
    args = ap.parse_args(argv)
    rates = best_throughput(args.measurements)
    device = next(iter(rates.values()))["device"] if rates else "?"
    print(f"| suite ({args.seeds} seed(s)) | unique training stages | GPU-h on one {device} | largest share |")
    print("|---|---|---|---|")
    for name in [s for s in args.suites.split(",") if s]:
        hours, count, missing = suite_stage_hours(name, args.seeds, args.data_root, rates)
        total = sum(hours.values())
        top = max(hours, key=hours.get) if hours else "-"
        stages = ", ".join(f"{count[k]} {k}" for k in sorted(count))
        note = f" (no measurement: {', '.join(sorted(missing))})" if missing else ""
        print(f"| {name} | {stages} | {total:.0f}{note} | {top} {hours.get(top, 0) / max(total, 1e-9):.0%} |")
    print()
    print(
        "throughput used (samples/s at the measured batch): "
        + ", ".join(f"{k} {v['samples_per_s']:.0f} @ {v['batch']}" for k, v in sorted(rates.items()))
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Markdown leaderboards from the results store (tabulate), mean +- std over seeds."""
from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

from tabulate import tabulate

METRIC_ORDER = ("open", "closed", "overall", "accuracy", "auc", "sensitivity", "specificity",
                "t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10")


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def ordered_metrics(names) -> list[str]:
    known = [m for m in METRIC_ORDER if m in names]
    return known + sorted(set(names) - set(known))


def runs_table(rows: list[dict]) -> str:
    """One table of (pretrain, tune) rows x metrics for rows of one dataset and preset."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["pretrain"], row["tune"])].append(row)
    metrics = ordered_metrics({m for row in rows for m in row["metrics"]})
    table = []
    for (pretrain, tune), members in sorted(groups.items()):
        cells = [mean_std([r["metrics"][m] for r in members if m in r["metrics"]]) if any(m in r["metrics"] for r in members) else "-"
                 for m in metrics]
        table.append([pretrain, tune, *cells, len(members)])
    return tabulate(table, headers=["pretrain", "tune", *metrics, "seeds"], tablefmt="github")


def write_leaderboards(store, out_dir: Path, suite: str | None = None, plugin_paths=()) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = store.rows()
    written = []
    if suite is None:
        by_key: dict[tuple, list[dict]] = defaultdict(list)
        for row in rows:
            by_key[(row["dataset"], row["preset"])].append(row)
        parts = ["# umdbench runs\n", "Every finished run in the store, mean ± std over seeds (percent).\n"]
        for (dataset, preset), members in sorted(by_key.items()):
            commits = sorted({r["git_commit"] for r in members})
            parts.append(f"\n## {dataset} (preset {preset})\n\n{runs_table(members)}\n\n"
                         f"<sub>{len(members)} runs; devices: {', '.join(sorted({r['device'] for r in members}))}; "
                         f"commits: {', '.join(c[:12] for c in commits)}</sub>\n")
        path = out_dir / "runs.md"
        tmp = path.with_suffix(".md.tmp")
        tmp.write_text("".join(parts))
        tmp.replace(path)
        written.append(path)
    from .suites import write_suite_leaderboards  # suites module renders the paper tables

    written += write_suite_leaderboards(store, out_dir, suite=suite, plugin_paths=plugin_paths)
    return written

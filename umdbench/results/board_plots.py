"""The PNG beside a suite's board, where the suite asks for one: ``plot = "vary"`` draws a sweep
curve as the paper's Fig. 5 (one line per row and dataset over the varied value), ``plot = "rows"``
ablation bars per dataset with the paper's values as markers. matplotlib (Agg) is imported only
when a plot is drawn."""

from __future__ import annotations

import io
from pathlib import Path

from umdbench.results.board_data import SuiteResults
from umdbench.results.paper_results import get_table
from umdbench.util import atomic_write_bytes

__all__ = ["plot_suite"]


def plot_suite(suite, results: SuiteResults, preset: str, path: Path) -> Path | None:
    """Fig.-5-style curve (``plot = "vary"``) or ablation bars (``plot = "rows"``); None if nothing to plot."""
    if suite.plot is None or not results.rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = next(
        (m for m in ("overall", "accuracy") if m in suite.metrics), suite.metrics[0] if suite.metrics else None
    )
    if metric is None:
        return None
    stored = results.stored_datasets
    datasets = [d for d in suite.shown_datasets(stored) if d in stored]
    if not datasets:
        return None
    if suite.plot == "vary":
        fig = _vary_curve(plt, suite, results, datasets, metric)
    else:
        fig = _row_bars(plt, suite, results, datasets, metric)
    fig.suptitle(f"{suite.title} [{preset}]", fontsize=9)
    fig.axes[0].legend(fontsize=7)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, png.getvalue())
    return path


def _vary_curve(plt, suite, results: SuiteResults, datasets: list[str], metric: str):
    """One error-bar line per (row, dataset) over the suite's varied value."""
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for dataset in datasets:
        for row in suite.rows:
            xs, ys, es = [], [], []
            for value in suite.vary_values:
                v = results.metric(f"{row.name} {suite.vary_label}={value}", dataset, metric)
                if v is not None:
                    xs.append(value)
                    ys.append(v[0])
                    es.append(v[1] or 0.0)
            if xs:
                label = dataset if len(suite.rows) == 1 else f"{row.name} {dataset}"
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=label)
    ax.set_xlabel(suite.vary_label)
    ax.set_ylabel(f"{metric} (%)")
    ax.set_xticks(list(suite.vary_values))
    return fig


def _row_bars(plt, suite, results: SuiteResults, datasets: list[str], metric: str):
    """One panel per dataset: a bar per row (ours, std as error bar) and the paper's value as a mark."""
    paper = get_table(suite.paper)
    names = suite.cell_names()
    fig, axes = plt.subplots(
        1, len(datasets), figsize=(max(5, 1.0 * len(names)) * len(datasets) / 1.5, 3.8), squeeze=False
    )
    for ax, dataset in zip(axes[0], datasets):
        xs = range(len(names))
        vals = [results.metric(n, dataset, metric) for n in names]
        ax.bar(
            xs,
            [v[0] if v else float("nan") for v in vals],
            yerr=[(v[1] or 0) if v else 0 for v in vals],
            color="tab:blue",
            alpha=0.8,
            capsize=3,
            label="ours",
        )
        if paper is not None and (dataset, metric) in paper.columns:
            grid_rows = {p.cell_name: p.row for p in suite.grid()}
            pv = [paper.value(grid_rows[n].paper_row, dataset, metric) for n in names]
            ax.scatter(
                [x for x, v in zip(xs, pv) if v is not None],
                [v for v in pv if v is not None],
                marker="_",
                s=300,
                color="black",
                label="paper",
                zorder=3,
            )
        ax.set_xticks(list(xs))
        ax.set_xticklabels([n.split(" ")[0] if n.split(" ")[0].isdigit() else n for n in names], rotation=0)
        ax.set_title(dataset)
        ax.set_ylabel(f"{metric} (%)")
    return fig

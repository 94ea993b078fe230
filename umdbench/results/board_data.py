"""What a board shows, read from the results store: the rows of one suite and preset per (cell,
dataset) with the cells that have no number yet (:class:`SuiteResults`, from
:func:`collect_suite_results`), and the few summaries the tables, notes and footer share (mean and
std over seeds, metric order, the deviations the rows recorded).

Reads rows only: which suite a row belongs to comes from a :class:`umdbench.plan.suites.Suite` the
caller hands in, never from the plugin registries.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np

from umdbench.results import intervals
from umdbench.results.predictions import seed_matrix
from umdbench.util import is_score

__all__ = [
    "METRIC_ORDER",
    "SuiteResults",
    "collect_suite_results",
    "mean_std",
    "ordered_metrics",
    "recorded_deviations",
    "store_dir",
]

METRIC_ORDER = (
    "open",
    "closed",
    "overall",
    "accuracy",
    "auc",
    "sensitivity",
    "specificity",
    "t2i_r1",
    "t2i_r5",
    "t2i_r10",
    "i2t_r1",
    "i2t_r5",
    "i2t_r10",
)


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample std over seeds; std None for a single value."""
    if len(values) == 1:
        return values[0], None
    return statistics.mean(values), statistics.stdev(values)


def ordered_metrics(names) -> list[str]:
    """The known metrics in :data:`METRIC_ORDER`, then the others alphabetically."""
    known = [m for m in METRIC_ORDER if m in names]
    return known + sorted(set(names) - set(known))


def store_dir(store) -> Path | None:
    """The folder stored predictions paths are relative to (None for a store without a file)."""
    path = getattr(store, "path", None)
    return Path(path).parent if path is not None else None


class SuiteResults:
    """Store rows of one suite and preset, per (cell name, dataset), plus cells without a number."""

    def __init__(self, base_dir: Path | None = None):
        self.rows: dict[tuple[str, str], list[dict]] = defaultdict(list)
        self.status: dict[tuple[str, str], tuple[str, str]] = {}  # -> (status, detail)
        self.overrides: set[str] = set()
        self.base_dir = base_dir  # the store's folder: stored predictions paths are relative to it
        self._predictions: dict = {}

    @property
    def stored_datasets(self) -> set[str]:
        """The datasets with at least one stored row."""
        return {dataset for _, dataset in self.rows}

    def correct(self, cell_name: str, dataset: str, metric: str) -> tuple:
        """``(correct [seeds, n], index, why)`` of one cell (see ``seed_matrix``)."""
        rows = [r for r in self.rows.get((cell_name, dataset), []) if metric in r["metrics"]]
        if self.base_dir is None or not rows:
            return None, None, "no per-example predictions"
        return seed_matrix(rows, metric, self.base_dir, self._predictions)

    def interval(self, cell_name: str, dataset: str, metric: str) -> "intervals.Interval | None":
        correct, _, _ = self.correct(cell_name, dataset, metric)
        return intervals.cell_interval(correct) if correct is not None else None

    def comparison(self, cell_name: str, reference: str, dataset: str, metric: str) -> "intervals.Comparison | None":
        row, index, _ = self.correct(cell_name, dataset, metric)
        ref, ref_index, _ = self.correct(reference, dataset, metric)
        if row is None or ref is None or not np.array_equal(index, ref_index):
            return None
        return intervals.compare(row, ref)

    def metric(self, cell_name: str, dataset: str, metric: str) -> tuple[float, float | None, int] | None:
        # NaN means the metric is undefined for this split (e.g. "closed" on VQA-Med-2019, whose
        # questions are all open), not a score: such a cell shows as missing, never as a mean of NaN.
        values = [v for r in self.rows.get((cell_name, dataset), []) if is_score(v := r["metrics"].get(metric))]
        if not values:
            return None
        mean, std = mean_std(values)
        return mean, std, len(values)

    def undefined(self, dataset: str, metric: str) -> bool:
        """True when runs on ``dataset`` report ``metric`` but never a number (NaN: the split has no
        example of that kind, e.g. no closed question in VQA-Med-2019)."""
        reported = [
            r["metrics"][metric]
            for (_, d), rows in self.rows.items()
            if d == dataset
            for r in rows
            if metric in r["metrics"]
        ]
        return bool(reported) and not any(is_score(v) for v in reported)

    def all_rows(self) -> list[dict]:
        return [r for rows in self.rows.values() for r in rows]


def collect_suite_results(store, suite) -> dict[str, SuiteResults]:
    """preset -> results. Membership (written by sweeps) first; rows tagged with the suite fill in."""
    names = set(suite.cell_names())
    by_preset: dict[str, SuiteResults] = defaultdict(lambda: SuiteResults(store_dir(store)))
    covered: set[tuple] = set()
    seen_keys: set[tuple] = set()
    for m in store.membership(suite.name):
        if m.cell_name not in names:
            continue  # a row the suite no longer has
        res = by_preset[m.preset]
        res.overrides.update(m.overrides)
        covered.add((m.preset, m.cell_name, m.dataset, m.seed))
        row = store.get(m.cell_key) if m.cell_key else None
        if row is not None and (m.cell_key, m.cell_name, m.dataset) not in seen_keys:
            seen_keys.add((m.cell_key, m.cell_name, m.dataset))
            res.rows[(m.cell_name, m.dataset)].append(row)
        elif row is None:
            res.status.setdefault((m.cell_name, m.dataset), (m.status, m.detail or ""))
    for row in store.rows(suite=suite.name):
        ident = (row["preset"], row["cell_name"], row["dataset"], row["seed"])
        if row["cell_name"] not in names or ident in covered:
            continue
        covered.add(ident)
        by_preset[row["preset"]].rows[(row["cell_name"], row["dataset"])].append(row)
    return dict(by_preset)


def recorded_deviations(results: SuiteResults, names, dataset: str, own: bool) -> list[str]:
    """Deviations recorded with the rows of one dataset: its data's own (``own``: they start with
    the dataset's name, as DatasetPlugin.deviations writes them) or every other one."""
    found: dict[str, None] = {}
    for name in names:
        for row in results.rows.get((name, dataset), []):
            for d in (row.get("config") or {}).get("deviations") or []:
                if str(d).startswith(f"{dataset}:") == own:
                    found.setdefault(str(d), None)
    return list(found)

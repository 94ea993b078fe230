"""Markdown leaderboards from the results store (tabulate): mean +- std over seeds, and, from the
stored per-example predictions, a 95 % interval over seeds and test examples per cell and a
significance marker against the suite's reference row (``umdbench.results.intervals``).

``write_leaderboards`` writes ``runs.md`` (every run, when no suite is chosen) and, per suite,
``<suite>.md`` with our numbers beside the paper's, a PNG plot where the suite asks for one
(``plot = "rows"``: ablation bars; ``plot = "vary"``: a sweep curve as Fig. 5) and ``README.md``
indexing the files. Every file is written atomically (temp file + rename).

Import-light: no torch and no plugin module; suite specs come from the registries, which read
``registry.toml`` and plugin hooks but import no strategy or dataset.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from tabulate import tabulate

from umdbench.data.overlap import data_key, describe_data, load_report
from umdbench.plan.suites import all_suites, get_suite
from umdbench.plugin import get_registries
from umdbench.results import intervals
from umdbench.results.paper_results import INFERRED_NOTE, get_table
from umdbench.results.predictions import seed_matrix
from umdbench.results.reference_points import row_reference_key
from umdbench.util import atomic_write_bytes, atomic_write_text, is_score

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


def _stats(values: list[float]) -> tuple[float, float | None]:
    if len(values) == 1:
        return values[0], None
    return statistics.mean(values), statistics.stdev(values)


def _fmt(mean: float, std: float | None) -> str:
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def ordered_metrics(names) -> list[str]:
    known = [m for m in METRIC_ORDER if m in names]
    return known + sorted(set(names) - set(known))


def _interval_text(rows: list[dict], metric: str, base_dir: Path | None, cache: dict) -> str:
    """`` [low, high]`` of the rows' 95 % interval, or "" when their predictions do not allow one."""
    if base_dir is None:
        return ""
    correct, _, _ = seed_matrix(rows, metric, base_dir, cache)
    if correct is None:
        return ""
    ci = intervals.cell_interval(correct)
    return f" [{ci.low:.2f}, {ci.high:.2f}]"


def runs_table(rows: list[dict], base_dir: Path | None = None, cache: dict | None = None) -> str:
    """One table of (pretrain, tune) rows x metrics for rows of one dataset and preset; with
    ``base_dir`` (the store's folder) a cell whose rows have per-example predictions also shows
    its 95 % interval."""
    cache = {} if cache is None else cache
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["pretrain"], row["tune"])].append(row)
    metrics = ordered_metrics({m for row in rows for m in row["metrics"]})
    table = []
    for (pretrain, tune), members in sorted(groups.items()):
        # a metric undefined on a split (NaN, e.g. closed accuracy with no closed question) is "n/a"
        cells = [
            _fmt(*_stats(values)) + _interval_text([r for r in members if m in r["metrics"]], m, base_dir, cache)
            if (values := [r["metrics"][m] for r in members if is_score(r["metrics"].get(m))])
            else ("n/a" if any(m in r["metrics"] for r in members) else "-")
            for m in metrics
        ]
        table.append([pretrain, tune, *cells, len(members)])
    return tabulate(table, headers=["pretrain", "tune", *metrics, "seeds"], tablefmt="github", disable_numparse=True)


def write_leaderboards(
    store, out_dir: Path, suite: str | None = None, plugin_paths=(), reference_points: dict | None = None
) -> list[Path]:
    """Every board of the store (``runs.md`` and one per suite) into ``out_dir``. ``reference_points``:
    stored no-image baselines (:func:`umdbench.results.reference_points.load_reference_points`), printed
    under the tables of the dataset splits they were computed on."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = store.rows()
    written = []
    if suite is None:
        by_key: dict[tuple, list[dict]] = defaultdict(list)
        for row in rows:
            by_key[(row["dataset"], row["preset"])].append(row)
        parts = [
            "# umdbench runs\n",
            "Every finished run in the store, mean ± std over seeds (percent) and, where "
            "per-example predictions are stored, [the 95 % interval over seeds and test examples] "
            "(bootstrap, fixed seed; see docs/sweeps.md).\n",
        ]
        cache: dict = {}
        for (dataset, preset), members in sorted(by_key.items()):
            # rows from older stores or other executors may lack either (NULL): said, not sorted with None
            commits = _known(r["git_commit"][:12] if r.get("git_commit") else None for r in members)
            devices = _known(r.get("device") for r in members)
            parts.append(
                f"\n## {dataset} (preset {preset})\n\n{runs_table(members, _store_dir(store), cache)}\n\n"
                f"<sub>{len(members)} runs; devices: {devices}; commits: {commits}</sub>\n"
            )
        path = out_dir / "runs.md"
        atomic_write_text(path, "".join(parts))
        written.append(path)
    written += write_suite_boards(
        store, out_dir, suite=suite, plugin_paths=plugin_paths, reference_points=reference_points
    )
    return written


def _store_dir(store) -> Path | None:
    """The folder stored predictions paths are relative to (None for a store without a file)."""
    path = getattr(store, "path", None)
    return Path(path).parent if path is not None else None


def _known(values) -> str:
    """Distinct values, sorted, with "unknown" for missing ones."""
    values = list(values)
    known = sorted({v for v in values if v})
    return ", ".join(known + (["unknown"] if len(known) < len(set(values)) or not known else []))


# ---------------------------------------------------------------------------------------------
# suite leaderboards
# ---------------------------------------------------------------------------------------------
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
        mean, std = _stats(values)
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
    by_preset: dict[str, SuiteResults] = defaultdict(lambda: SuiteResults(_store_dir(store)))
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


STATUS_TEXT = {"data unavailable": "data unavailable", "failed": "failed", "planned": "pending", "done": "missing"}


def render_suite(
    suite, results: SuiteResults, preset: str, reference_points: dict | None = None, overlap: dict | None = None
) -> str:
    paper = get_table(suite.paper)
    names = suite.cell_names()
    grid_rows = {p.cell_name: p.row for p in suite.grid()}
    used_paper_rows = {grid_rows[n].paper_row for n in names if suite.vary_key is None}
    all_rows = results.all_rows()
    suite_metrics = list(suite.metrics) or ordered_metrics({m for r in all_rows for m in r["metrics"]})
    out = [
        f"# {suite.title}\n\n",
        f"Suite `{suite.name}`, preset `{preset}`. Ours: mean ± std over seeds (percent) [95 % interval over "
        f"seeds and test examples], from `umdbench sweep --suite {suite.name}`; * = differs from the reference "
        f"row (explained under each table).",
    ]
    if paper is not None and paper.columns:
        out.append(
            f" Paper: {paper.source}; Δ = ours − paper. **Bold**: best in its column (ours among our "
            f"rows, paper among the paper's rows). Rows marked *reported, not run* are methods umdbench "
            f"does not implement, shown with the paper's numbers."
        )
    out.append("\n")
    footnotes: list[str] = []
    reference = suite.reference_cell
    for dataset in suite.shown_datasets(results.stored_datasets):
        undefined = [m for m in suite_metrics if results.undefined(dataset, m)]
        metrics = [m for m in suite_metrics if m not in undefined]
        paper_cols = [m for m in metrics if paper is not None and (dataset, m) in paper.columns]
        headers = ["method"]
        for m in metrics:
            headers.append(m)
            if m in paper_cols:
                headers += [f"{m} (paper)", f"Δ {m}"]
        with_compute = bool(_board_stage_hours(results.all_rows()))  # rows that recorded their stages' time
        if with_compute:
            headers.append("compute")
        headers.append("seeds")
        # best values per column
        best_of = {m: (min if m in suite.lower_is_better else max) for m in metrics}
        best_ours = {
            m: best_of[m]((v[0] for n in names if (v := results.metric(n, dataset, m))), default=None) for m in metrics
        }
        best_paper = {}
        for m in paper_cols:
            vals = [paper.value(r, dataset, m) for r in paper.rows]
            vals = [v for v in vals if v is not None]
            best_paper[m] = max(vals) if vals else None
        table = []
        compared: dict[str, dict[str, intervals.Comparison]] = {}  # row -> metric -> vs the reference
        family = _holm_family(results, names, reference, dataset, metrics)
        no_interval: dict[str, list[str]] = defaultdict(list)  # why -> rows shown without an interval
        for name in names:
            row = grid_rows[name]
            label = (
                name
                + (" †" if row.inferred else "")
                + (" ‡" if row.note else "")
                + (" (ref)" if name == reference else "")
            )
            status = results.status.get((name, dataset))
            line = [label]
            seeds = 0
            for m in metrics:
                v = results.metric(name, dataset, m)
                if v is not None:
                    seeds = max(seeds, v[2])
                    text = _fmt(v[0], v[1])
                    if best_ours[m] is not None and v[0] == best_ours[m] and len(names) > 1:
                        text = f"**{text}**"
                    correct, _, why = results.correct(name, dataset, m)
                    if correct is not None:
                        ci = intervals.cell_interval(correct)
                        text += f" [{ci.low:.2f}, {ci.high:.2f}]"
                        cmp = family.get(m, {}).get(name)
                        if cmp is not None:
                            compared.setdefault(name, {})[m] = cmp
                            text += " *" if cmp.significant else ""
                    elif why and not why.startswith("no test example"):
                        no_interval[why].append(name)
                elif status is not None:
                    text = STATUS_TEXT.get(status[0], status[0])
                else:
                    text = "not run"
                line.append(text)
                if m in paper_cols:
                    pv = paper.value(row.paper_row, dataset, m) if suite.vary_key is None else None
                    ptext = "–" if pv is None else (f"**{pv:.2f}**" if pv == best_paper[m] else f"{pv:.2f}")
                    delta = "–" if (pv is None or v is None) else f"{v[0] - pv:+.2f}"
                    line += [ptext, delta]
            if with_compute:
                line.append(_cell_compute_text(results.rows.get((name, dataset), [])))
            line.append(seeds or "–")
            table.append(line)
        reported = []  # the paper's baselines umdbench does not implement: first, as in the paper
        if paper is not None:
            for prow in paper.rows:
                if prow in used_paper_rows or not paper_cols:
                    continue
                if all(paper.value(prow, dataset, m) is None for m in paper_cols):
                    continue
                group = f" [{paper.groups[prow]}]" if prow in paper.groups else ""
                line = [f"{prow}{group} (reported, not run)"]
                for m in metrics:
                    line.append("–")
                    if m in paper_cols:
                        pv = paper.value(prow, dataset, m)
                        line += ["–" if pv is None else (f"**{pv:.2f}**" if pv == best_paper[m] else f"{pv:.2f}"), "–"]
                line += ["–", "–"] if with_compute else ["–"]
                reported.append(line)
        table = reported + table
        beyond = (
            f"*Beyond the paper, which does not report {dataset} here (`--datasets {dataset}` runs it).*\n\n"
            if dataset in suite.extra_datasets
            else ""
        )
        out.append(
            f"\n## {dataset}\n\n{beyond}{tabulate(table, headers=headers, tablefmt='github', disable_numparse=True)}\n"
        )
        out.append(_differences(compared, metrics, reference, results, dataset))
        out.append(_rank_lines(results, names, dataset, metrics, suite.lower_is_better))
        out.append(_reference_points(results, names, dataset, reference_points or {}))
        out.append(_overlap_lines(results, names, dataset, overlap))
        for why, rows_without in sorted(no_interval.items()):
            out.append(
                f"\n<sub>no interval for {', '.join(dict.fromkeys(rows_without))}: {why}; shown as mean ± std "
                f"over seeds only.</sub>\n"
            )
        unavailable = {
            results.status[(n, dataset)][1]
            for n in names
            if results.status.get((n, dataset), ("",))[0] == "data unavailable"
        }
        for reason in sorted(r for r in unavailable if r):
            out.append(f"\n<sub>data unavailable: {reason}</sub>\n")
        if undefined:
            out.append(
                f"\n<sub>not shown: {', '.join(undefined)}; every run on {dataset} reports it undefined "
                f"(the evaluated split has no example of that kind).</sub>\n"
            )
        for deviation in _deviations(results, names, dataset, own=True):
            out.append(f"\n<sub>deviation: {deviation}</sub>\n")
    if any(r.inferred for r in suite.rows):
        footnotes.append(f"† {INFERRED_NOTE}")
    for row in suite.rows:
        if row.note:
            footnotes.append(f"‡ {row.name}: {row.note}")
    if paper is not None:  # a paper note already given as the † footnote is not repeated
        footnotes += [n for n in paper.notes if not any(f.endswith(n) for f in footnotes)]
    if footnotes:
        out.append("\n" + "\n".join(f"- {f}" for f in dict.fromkeys(footnotes)) + "\n")
    out.append(_footer(suite, results, preset))
    return "".join(out)


def _holm_family(results: SuiteResults, names, reference: str, dataset: str, metrics) -> dict:
    """``{metric: {row: Comparison}}`` against the reference, each metric's rows one family whose
    p-values are Holm-adjusted (a board runs several tests per dataset and metric)."""
    out = {}
    for m in metrics:
        found = {n: c for n in names if n != reference and (c := results.comparison(n, reference, dataset, m))}
        adjusted = intervals.holm({n: c.p for n, c in found.items()})
        out[m] = {n: dataclasses.replace(c, p_holm=adjusted[n]) for n, c in found.items()}
    return out


def _rank_lines(results: SuiteResults, names, dataset: str, metrics, lower_is_better) -> str:
    """Each row's rank (1 = best) with its 95 % bootstrap interval, per metric, over the rows scored
    on the same test examples."""
    lines = []
    for m in metrics:
        found = {}
        for n in names:
            correct, index, _ = results.correct(n, dataset, m)
            if correct is not None:
                found[n] = (correct, index)
        if len(found) < 2:
            continue
        first = next(iter(found.values()))[1]
        same = {n: c for n, (c, i) in found.items() if np.array_equal(i, first)}
        if len(same) < 2:
            continue
        ranks = intervals.rank_intervals(same, higher_is_better=m not in lower_is_better)
        text = "; ".join(
            f"{n} {r.rank:g} [{r.low:g}, {r.high:g}]" for n, r in sorted(ranks.items(), key=lambda kv: kv[1].rank)
        )
        lines.append(f"- rank by {m} (1 = best) [95 % interval]: {text}")
    if not lines:
        return ""
    return (
        "\n" + "\n".join(lines) + f"\n\n<sub>Rank intervals: {intervals.BOOTSTRAP} bootstrap replicates "
        f"drawing the test examples once for all rows and each row's seeds; a row's interval is the 2.5 and 97.5 "
        f"percentiles of its rank over them.</sub>\n"
    )


def _stage_hours(entry: dict) -> tuple[str, float] | None:
    """``(unit, hours)`` of one trained stage from a row's ``schedule``: core-hours on the CPU
    (wall time x processes x threads), GPU-hours on CUDA (wall time x processes); None when the row
    predates the record."""
    wall = entry.get("wall_time_s")
    if wall is None:
        return None
    procs = int(entry.get("world_size", 1))
    if entry.get("device") == "cuda":
        return "GPU-h", wall * procs / 3600
    return "core-h", wall * procs * int(entry.get("threads", 1)) / 3600


def _cell_compute_text(rows: list[dict]) -> str:
    """A cell's training compute: the stages it used (shared ones in full), mean over its seeds."""
    totals: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        per_unit: dict[str, float] = defaultdict(float)
        for entry in (row.get("schedule") or {}).values():
            if (hours := _stage_hours(entry)) is not None:
                per_unit[hours[0]] += hours[1]
        for unit, value in per_unit.items():
            totals[unit].append(value)
    return ", ".join(f"{statistics.mean(v):.3g} {unit}" for unit, v in sorted(totals.items())) or "–"


def _board_stage_hours(rows: list[dict]) -> dict[str, tuple[float, int]]:
    """``{unit: (hours, stages)}`` over the unique stages of a board's rows: a stage shared by many
    cells is counted once."""
    seen: dict[str, tuple[str, float]] = {}
    for row in rows:
        for key, entry in (row.get("schedule") or {}).items():
            if key not in seen and (hours := _stage_hours(entry)) is not None:
                seen[key] = hours
    out: dict[str, tuple[float, int]] = {}
    for unit, value in seen.values():
        total, n = out.get(unit, (0.0, 0))
        out[unit] = (total + value, n + 1)
    return out


def _differences(compared: dict, metrics: list[str], reference: str, results: SuiteResults, dataset: str) -> str:
    """Under a dataset's table: each row's difference from the reference with its paired interval
    and p, what the intervals and * mean, and the smallest difference the test split resolves."""
    if not compared:
        return ""
    shown = [m for m in metrics if any(m in c for c in compared.values())]
    table = []
    for name, by_metric in compared.items():
        line = [name]
        for m in shown:
            c = by_metric.get(m)
            holm = "" if c is None or c.p_holm is None else f" (Holm {c.p_holm:.3f})"
            line.append(
                "–"
                if c is None
                else f"{c.diff.mean:+.2f} [{c.diff.low:+.2f}, {c.diff.high:+.2f}] "
                f"p={c.p:.3f}{holm}{' *' if c.significant else ''}"
            )
        table.append(line)
    n = {m: len(results.correct(reference, dataset, m)[1]) for m in shown}
    resolve = ", ".join(
        f"{m} {statistics.median(c[m].diff.half_width for c in compared.values() if m in c):.2f}" for m in shown
    )
    headers = ["vs reference " + reference] + [f"Δ {m} (n={n[m]})" for m in shown]
    return (
        f"\n{tabulate(table, headers=headers, tablefmt='github', disable_numparse=True)}\n\n"
        f"<sub>[a, b] in the table: 95 % interval of the mean over seeds, bootstrapping the seeds and the test "
        f"examples together ({intervals.BOOTSTRAP} resamples, fixed RNG seed {intervals.SEED}). Δ: row − "
        f"reference `{reference}` on the same test examples, each example's value (its correctness, or the "
        f"metric's own per-example score) averaged over the row's seeds, with a paired bootstrap 95 % interval; "
        f"p: paired sign-flip permutation "
        f"test ({intervals.PERMUTATIONS} permutations); Holm: p adjusted over the rows compared with the reference "
        f"on this dataset and metric; * = significant after that adjustment (Holm p < {intervals.ALPHA}: at most a "
        f"{intervals.ALPHA:.0%} chance of any false star per dataset and metric). Smallest difference this test "
        f"split resolves (median half-width of the paired intervals, points): {resolve}.</sub>\n"
    )


def _reference_points(results: SuiteResults, names, dataset: str, points: dict) -> str:
    """Under a VQA dataset's table: the question-only and majority-answer accuracy of the split its
    rows were evaluated on (same data fingerprint), and which rows fall below question-only."""
    rows = [r for n in names for r in results.rows.get((n, dataset), [])]
    if not rows or "closed" not in rows[0]["metrics"]:
        return ""  # baselines are defined for VQA only
    splits = {row_reference_key(r) for r in rows}
    if len(splits) != 1 or (key := splits.pop()) not in points:
        return (
            "\n<sub>no-image reference points: `umdbench baselines --work-dir WORK_DIR` (the work dir of "
            "these runs) adds the question-only and majority-answer accuracy of this split here.</sub>\n"
        )
    point = points[key]

    def text(name: str) -> str:
        acc = point[name]
        rest = ", ".join(f"{m} {acc[m]:.2f}" for m in ("open", "closed") if is_score(acc.get(m)))
        return f"{name} {acc['overall']:.2f} overall" + (f" ({rest})" if rest else "")

    q_only = point["question only"]["overall"]
    below = [n for n in names if (v := results.metric(n, dataset, "overall")) and v[0] < q_only]
    verdict = (
        f"Rows whose mean overall is below question-only: {', '.join(below)}."
        if below
        else "Every row with a result is above question-only overall."
    )
    return (
        f"\n<sub>No-image reference points on the same split and data (`umdbench baselines {dataset}`): "
        f"{text('question only')} (bag-of-words logistic regression, no image); {text('majority answer')}. "
        f"{verdict}</sub>\n"
    )


def _overlap_pair(report: dict, row: dict, corpus: dict, cells: dict) -> int | None:
    """The report's pair for a row: the one it names the row's cell in, else the pair of the same
    corpus config and test split whose audited data has the row's fingerprint."""
    cell = cells.get(row.get("cell_key"))
    if cell is not None and isinstance(cell.get("pair"), int) and 0 <= cell["pair"] < len(report["pairs"]):
        return cell["pair"]
    config = row.get("config") or {}
    data = config.get("dataset") or {}
    split = (config.get("eval") or {}).get("split", "test")
    corpora = {c.get("id"): c for c in report.get("corpora") or []}
    tests = {t.get("id"): t for t in report.get("tests") or []}
    for i, pair in enumerate(report["pairs"]):
        c, t = corpora.get(pair.get("corpus")), tests.get(pair.get("test"))
        if (
            c
            and t
            and data_key(c) == data_key(corpus)
            and data_key(t) == data_key(data)
            and t.get("split") == split
            and row.get("data_fingerprint") in {t.get("fingerprint"), *(t.get("row_fingerprints") or [])}
        ):
            return i
    return None


def _overlap_lines(results: SuiteResults, names, dataset: str, report: dict | None) -> str:
    """Under a dataset's table, when the work dir keeps an overlap report (``umdbench overlap``):
    how many test images the pre-training corpus of its rows also holds, or that none was found."""
    if not report:
        return ""
    cells = {c.get("cell_key"): c for c in report.get("cells") or [] if isinstance(c, dict)}
    corpora = {c.get("id"): c for c in report.get("corpora") or []}
    found: dict[int, list[str]] = {}
    missing: list[str] = []
    for name in names:
        for row in results.rows.get((name, dataset), []):
            corpus = ((row.get("config") or {}).get("pretrain") or {}).get("corpus")
            if not corpus:
                continue  # trained from scratch: no corpus to share a test image with
            index = _overlap_pair(report, row, corpus, cells)
            (missing if index is None else found.setdefault(index, [])).append(name)
    lines = []
    threshold = report.get("threshold")
    for index, members in sorted(found.items()):
        pair = report["pairs"][index]
        corpus = corpora.get(pair.get("corpus"), {})
        who = f"the pre-training corpus {describe_data(corpus)} of {', '.join(dict.fromkeys(members))}"
        study = pair.get("kind") == "study"
        unit = "studies" if study else "images"
        if pair.get("overlap"):
            how = (
                f"{pair['exact']} same content, {pair['same_subject']} same declared subject"
                if study
                else f"{pair['exact']} exact (same file content), {pair['near']} near (Hamming distance <= {threshold} "
                f"of a 128-bit perceptual hash)"
            )
            first = pair["shared"][0] if pair.get("shared") else None
            example = f", e.g. {first['test']} ~ {first['corpus']}" if first else ""
            text = (
                f"train/test overlap: {pair['overlap']} of the {pair['test_items']} test {unit} "
                f"({pair['overlap_records']} of {pair['test_records']} test records) have "
                f"{'a copy' if study else 'an exact or near duplicate'} in {who}: {how}{example}."
            )
        else:
            criterion = (
                "same content or declared subject"
                if study
                else (f"exact or near duplicate, Hamming distance <= {threshold} of a 128-bit perceptual hash")
            )
            text = (
                f"train/test overlap: none found: no test {unit[:-1] if not study else 'study'} of the "
                f"{pair['test_items']} is in the {pair['corpus_items']} {unit} of {who} ({criterion})."
            )
        for lo in pair.get("left_out") or []:
            text += f" Its option `{lo['option']}` left out {lo['records']} records ({lo['items']} {unit}); " + (
                f"{lo['overlap']} of the test {unit} are among them ({lo['exact']} exact, {lo['near']} near)."
                if lo.get("overlap")
                else f"no test {unit[:-1] if not study else 'study'} is among them."
            )
        lines.append(text + " (`umdbench overlap`; every shared item is listed in overlap.json beside the store.)")
    if missing:
        lines.append(
            f"train/test overlap: not audited for {', '.join(dict.fromkeys(missing))}: the overlap report "
            f"covers neither their corpus nor this data (`umdbench overlap --work-dir WORK_DIR` adds it)."
        )
    return "".join(f"\n<sub>{line}</sub>\n" for line in lines)


def _deviations(results: SuiteResults, names, dataset: str, own: bool) -> list[str]:
    """Deviations recorded with the rows of one dataset: its data's own (``own``: they start with
    the dataset's name, as DatasetPlugin.deviations writes them) or every other one."""
    found: dict[str, None] = {}
    for name in names:
        for row in results.rows.get((name, dataset), []):
            for d in (row.get("config") or {}).get("deviations") or []:
                if str(d).startswith(f"{dataset}:") == own:
                    found.setdefault(str(d), None)
    return list(found)


def _footer(suite, results: SuiteResults, preset: str) -> str:
    rows = results.all_rows()
    lines = ["\n---\n", f"- **preset**: `{preset}`"]
    data = {}
    for r in rows:
        root = (r.get("config") or {}).get("dataset", {}).get("root")
        data.setdefault(r["dataset"], set()).add(
            f"fingerprint {str(r['data_fingerprint'])[:12]}" + (f", root `{root}`" if root else " (generated)")
        )
    for (name, dataset), (status, detail) in results.status.items():
        if status == "data unavailable" and dataset not in data:
            data[dataset] = {f"unavailable ({detail})" if detail else "unavailable"}
    if data:
        lines.append("- **data**: " + "; ".join(f"{d}: {', '.join(sorted(v))}" for d, v in sorted(data.items())))
    devices = sorted({r["device"] for r in rows if r.get("device")})
    wall = sum(float(r.get("wall_time_s") or 0) for r in rows)
    lines.append(
        f"- **compute**: {', '.join(devices) or '–'}; {wall / 3600:.2f} h of cell wall time over {len(rows)} runs"
    )
    hours = _board_stage_hours(rows)
    if hours:
        lines.append(
            "- **training compute** (each trained stage once, however many cells share it): "
            + ", ".join(f"{v:.3g} {unit} over {n} stages" for unit, (v, n) in sorted(hours.items()))
        )
    seeds = sorted({r["seed"] for r in rows})
    lines.append(f"- **seeds**: {', '.join(map(str, seeds)) or '–'}")
    commits = sorted({r["git_commit"] for r in rows if r.get("git_commit")})
    shown = [f"`{c[:12]}{'-dirty' if c.endswith('-dirty') else ''}`" for c in commits]
    lines.append(f"- **commits**: {', '.join(shown) or '–'}")
    plugins: dict[str, set[str]] = {}  # package -> the plugin names it provided, over every row
    for r in rows:
        for used, package in (r.get("plugins") or {}).items():
            if not package.startswith("umdbench "):
                plugins.setdefault(package, set()).add(used.split(":", 1)[1])
    if plugins:
        lines.append(
            "- **plugin packages**: " + "; ".join(f"{p} ({', '.join(sorted(n))})" for p, n in sorted(plugins.items()))
        )
    others = {
        d: None
        for ds in suite.shown_datasets(results.stored_datasets)
        for d in _deviations(results, suite.cell_names(), ds, own=False)
    }
    if others:
        lines.append("- **deviations** recorded with the runs: " + "; ".join(others))
    if results.overrides:
        lines.append(f"- **overrides** (`--cfg-options`): {' '.join(f'`{o}`' for o in sorted(results.overrides))}")
    lines.append(f"- generated {time.strftime('%Y-%m-%d %H:%M')} by `umdbench leaderboard --suite {suite.name}`")
    return "\n".join(lines) + "\n"


def plot_suite(suite, results: SuiteResults, preset: str, path: Path) -> Path | None:
    """Fig.-5-style curve (``plot = "vary"``) or ablation bars (``plot = "rows"``); None if nothing to plot."""
    if suite.plot is None or not results.rows:
        return None
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = next(
        (m for m in ("overall", "accuracy") if m in suite.metrics), suite.metrics[0] if suite.metrics else None
    )
    if metric is None:
        return None
    paper = get_table(suite.paper)
    stored = results.stored_datasets
    datasets = [d for d in suite.shown_datasets(stored) if d in stored]
    if not datasets:
        return None
    if suite.plot == "vary":
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
    else:
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
    fig.suptitle(f"{suite.title} [{preset}]", fontsize=9)
    fig.axes[0].legend(fontsize=7)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, png.getvalue())
    return path


def write_suite_boards(
    store, out_dir: Path, suite: str | None = None, plugin_paths=(), reference_points: dict | None = None
) -> list[Path]:
    registries = get_registries(tuple(plugin_paths))
    suites = [get_suite(registries, suite)] if suite else all_suites(registries)
    out_dir.mkdir(parents=True, exist_ok=True)
    overlap = load_report(_store_dir(store))  # `umdbench overlap --work-dir`: a line under each dataset
    written: list[Path] = []
    for s in suites:
        by_preset = collect_suite_results(store, s)
        if not by_preset and suite is None:
            continue  # nothing of this suite in the store
        if not by_preset:
            by_preset = {"tiny": SuiteResults()}
        presets = sorted(by_preset, key=lambda p: (p != "paper", p))
        parts = []
        for preset in presets:
            parts.append(render_suite(s, by_preset[preset], preset, reference_points, overlap))
            plot_name = f"{s.name}.png" if preset == presets[0] else f"{s.name}-{preset}.png"
            png = plot_suite(s, by_preset[preset], preset, out_dir / plot_name)
            if png is not None:
                parts.append(f"\n![{s.title} ({preset})]({png.name})\n")
                written.append(png)
        rows = [r for preset in presets for r in by_preset[preset].all_rows()]
        if rows:
            runs = out_dir / f"{s.name}-runs.jsonl"
            atomic_write_text(runs, runs_jsonl(rows))
            parts.append(
                f"\nEvery run behind these numbers (config, hash, seed, commit, package versions, data "
                f"fingerprint, metrics): [{runs.name}]({runs.name}).\n"
            )
            written.append(runs)
        path = out_dir / f"{s.name}.md"
        atomic_write_text(path, "\n".join(parts))
        written.append(path)
    written.append(write_index(out_dir))
    return written


def runs_jsonl(rows: list[dict]) -> str:
    """One stored row per line, in a stable order (cell, dataset, seed)."""
    ordered = sorted(rows, key=lambda r: (str(r.get("cell_name")), str(r.get("dataset")), r.get("seed", 0)))
    return "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in ordered)


def write_index(out_dir: Path) -> Path:
    """``README.md``: one line per leaderboard file in ``out_dir``, and one per sub-folder that has
    its own index (boards of another preset or work dir rendered with ``--out DIR/sub``)."""
    lines = [
        "# umdbench results\n",
        "Generated by `umdbench leaderboard`; each file states the preset, data, compute, "
        "seeds and commits behind its numbers.\n",
    ]
    for md in sorted(out_dir.glob("*.md")):
        if md.name == "README.md":
            continue
        first = md.read_text().splitlines()[:1]
        title = first[0].lstrip("# ").strip() if first else md.stem
        pngs = sorted(p.name for p in out_dir.glob(f"{md.stem}*.png"))
        plots = f" (plots: {', '.join(f'[{p}]({p})' for p in pngs)})" if pngs else ""
        lines.append(f"- [{md.name}]({md.name}): {title}{plots}")
    for sub in sorted(d for d in out_dir.iterdir() if d.is_dir() and (d / "README.md").is_file()):
        boards = sorted(m.name for m in sub.glob("*.md") if m.name not in ("README.md", "NOTES.md"))
        lines.append(f"- [{sub.name}/]({sub.name}/README.md): {', '.join(boards) or 'no boards yet'}")
    path = out_dir / "README.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path

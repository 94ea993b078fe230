"""The markdown of the boards (tabulate, GitHub tables): ``runs.md`` (every stored run, one table per
dataset and preset) and a suite's board of one preset (:func:`render_suite`): a header, per shown
dataset our rows beside the paper's (mean ± std over seeds [95 % interval], * against the reference
row, the paper's value and Δ, the compute column) with the notes under the table, the footnotes and
the provenance footer.

Renders from what it is handed: a :class:`umdbench.plan.suites.Suite`, the suite's
:class:`~umdbench.results.board_data.SuiteResults`, the stored no-image reference points and the
overlap report; it loads no plugin and reads no data.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tabulate import tabulate

from umdbench.results import intervals
from umdbench.results.board_compute import board_stage_hours, cell_compute_text
from umdbench.results.board_data import SuiteResults, mean_std, ordered_metrics, recorded_deviations
from umdbench.results.board_footer import board_footer
from umdbench.results.board_notes import overlap_lines, reference_point_lines
from umdbench.results.board_statistics import difference_lines, holm_family, rank_lines
from umdbench.results.paper_results import INFERRED_NOTE, PaperTable, get_table
from umdbench.results.predictions import seed_matrix
from umdbench.util import is_score

if TYPE_CHECKING:
    from umdbench.plan.suites import Suite

__all__ = ["STATUS_TEXT", "render_runs", "render_suite", "runs_table"]

# How a cell without a number reads, by its membership status.
STATUS_TEXT = {"data unavailable": "data unavailable", "failed": "failed", "planned": "pending", "done": "missing"}


def _fmt(mean: float, std: float | None) -> str:
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


# -- runs.md ------------------------------------------------------------------------------------------
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
            _fmt(*mean_std(values)) + _interval_text([r for r in members if m in r["metrics"]], m, base_dir, cache)
            if (values := [r["metrics"][m] for r in members if is_score(r["metrics"].get(m))])
            else ("n/a" if any(m in r["metrics"] for r in members) else "-")
            for m in metrics
        ]
        table.append([pretrain, tune, *cells, len(members)])
    return tabulate(table, headers=["pretrain", "tune", *metrics, "seeds"], tablefmt="github", disable_numparse=True)


def _known(values) -> str:
    """Distinct values, sorted, with "unknown" for missing ones."""
    values = list(values)
    known = sorted({v for v in values if v})
    return ", ".join(known + (["unknown"] if len(known) < len(set(values)) or not known else []))


def render_runs(rows: list[dict], base_dir: Path | None) -> str:
    """``runs.md``: every stored row, one table per (dataset, preset), with the devices and commits
    behind it; ``base_dir``: the store's folder (predictions paths are relative to it)."""
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
            f"\n## {dataset} (preset {preset})\n\n{runs_table(members, base_dir, cache)}\n\n"
            f"<sub>{len(members)} runs; devices: {devices}; commits: {commits}</sub>\n"
        )
    return "".join(parts)


# -- a suite's board ------------------------------------------------------------------------------
@dataclass
class _Board:
    """What every dataset section of one suite's board shares."""

    suite: Suite
    results: SuiteResults
    paper: PaperTable | None
    names: list[str]  # the suite's cell names, in its order
    grid_rows: dict  # cell name -> SuiteRow
    used_paper_rows: set  # paper rows that one of ours stands for (not repeated as "reported, not run")
    metrics: list[str]  # the suite's metrics, or every stored one
    with_compute: bool  # rows recorded their stages' time: a compute column

    @classmethod
    def of(cls, suite: Suite, results: SuiteResults) -> "_Board":
        names = suite.cell_names()
        grid_rows = {p.cell_name: p.row for p in suite.grid()}
        all_rows = results.all_rows()
        return cls(
            suite=suite,
            results=results,
            paper=get_table(suite.paper),
            names=names,
            grid_rows=grid_rows,
            used_paper_rows={grid_rows[n].paper_row for n in names if suite.vary_key is None},
            metrics=list(suite.metrics) or ordered_metrics({m for r in all_rows for m in r["metrics"]}),
            with_compute=bool(board_stage_hours(all_rows)),
        )


@dataclass
class _Section:
    """One dataset's table: its columns and best values, and what rendering its rows finds for the
    notes under it (the comparisons with the reference, the rows shown without an interval)."""

    board: _Board
    dataset: str
    metrics: list[str]  # shown: the board's metrics less those undefined on this dataset
    paper_cols: list[str]  # metrics the paper reports for this dataset
    best_ours: dict[str, float | None]
    best_paper: dict[str, float | None]
    family: dict  # metric -> row -> Comparison with the reference (Holm-adjusted)
    compared: dict[str, dict[str, intervals.Comparison]] = field(default_factory=dict)  # row -> metric -> vs ref
    no_interval: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))  # why -> rows

    @classmethod
    def of(cls, board: _Board, dataset: str, metrics: list[str]) -> "_Section":
        suite, results, paper = board.suite, board.results, board.paper
        paper_cols = [m for m in metrics if paper is not None and (dataset, m) in paper.columns]
        best_of = {m: (min if m in suite.lower_is_better else max) for m in metrics}
        best_ours = {
            m: best_of[m]((v[0] for n in board.names if (v := results.metric(n, dataset, m))), default=None)
            for m in metrics
        }
        best_paper = {}
        for m in paper_cols:
            vals = [v for r in paper.rows if (v := paper.value(r, dataset, m)) is not None]
            best_paper[m] = max(vals) if vals else None
        family = holm_family(results, board.names, suite.reference_cell, dataset, metrics)
        return cls(board, dataset, metrics, paper_cols, best_ours, best_paper, family)


def render_suite(
    suite: Suite, results: SuiteResults, preset: str, reference_points: dict | None = None, overlap: dict | None = None
) -> str:
    """A suite's board of one preset: header, one section per shown dataset (table and the notes
    under it), footnotes and the provenance footer. ``reference_points``: stored no-image baselines
    (:func:`umdbench.results.reference_points.load_reference_points`); ``overlap``: the work dir's
    ``umdbench overlap`` report."""
    board = _Board.of(suite, results)
    out = [_header(board, preset)]
    for dataset in suite.shown_datasets(results.stored_datasets):
        out.append(_dataset_section(board, dataset, reference_points or {}, overlap))
    out.append(_footnotes(board))
    out.append(board_footer(suite, results, preset))
    return "".join(out)


def _header(board: _Board, preset: str) -> str:
    suite, paper = board.suite, board.paper
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
    return "".join(out)


def _dataset_section(board: _Board, dataset: str, reference_points: dict, overlap: dict | None) -> str:
    """``## dataset``, its table (the paper's reported-only rows first, then ours) and the notes under it."""
    suite, results, names = board.suite, board.results, board.names
    undefined = [m for m in board.metrics if results.undefined(dataset, m)]
    section = _Section.of(board, dataset, [m for m in board.metrics if m not in undefined])
    ours = [_our_row(section, name) for name in names]  # fills section.compared and .no_interval
    table = _reported_rows(section) + ours
    beyond = (
        f"*Beyond the paper, which does not report {dataset} here (`--datasets {dataset}` runs it).*\n\n"
        if dataset in suite.extra_datasets
        else ""
    )
    markdown = tabulate(table, headers=_headers(section), tablefmt="github", disable_numparse=True)
    return "".join(
        [
            f"\n## {dataset}\n\n{beyond}{markdown}\n",
            difference_lines(section.compared, section.metrics, suite.reference_cell, results, dataset),
            rank_lines(results, names, dataset, section.metrics, suite.lower_is_better),
            reference_point_lines(results, names, dataset, reference_points),
            overlap_lines(results, names, dataset, overlap),
            _dataset_notes(section, undefined),
        ]
    )


def _headers(section: _Section) -> list[str]:
    headers = ["method"]
    for m in section.metrics:
        headers.append(m)
        if m in section.paper_cols:
            headers += [f"{m} (paper)", f"Δ {m}"]
    if section.board.with_compute:
        headers.append("compute")
    headers.append("seeds")
    return headers


def _paper_text(value: float | None, best: float | None) -> str:
    return "–" if value is None else (f"**{value:.2f}**" if value == best else f"{value:.2f}")


def _our_row(section: _Section, name: str) -> list:
    """One of our rows: label, per metric our cell (and the paper's value and Δ), compute, seeds."""
    board, dataset = section.board, section.dataset
    row = board.grid_rows[name]
    label = (
        name
        + (" †" if row.inferred else "")
        + (" ‡" if row.note else "")
        + (" (ref)" if name == board.suite.reference_cell else "")
    )
    line = [label]
    seeds = 0
    for m in section.metrics:
        v = board.results.metric(name, dataset, m)
        if v is not None:
            seeds = max(seeds, v[2])
        line.append(_our_cell(section, name, m, v))
        if m in section.paper_cols:
            pv = board.paper.value(row.paper_row, dataset, m) if board.suite.vary_key is None else None
            delta = "–" if (pv is None or v is None) else f"{v[0] - pv:+.2f}"
            line += [_paper_text(pv, section.best_paper[m]), delta]
    if board.with_compute:
        line.append(cell_compute_text(board.results.rows.get((name, dataset), [])))
    line.append(seeds or "–")
    return line


def _our_cell(section: _Section, name: str, metric: str, value: tuple | None) -> str:
    """``mean ± std [interval] *`` (bold when best), or why the cell has no number; records the
    cell's comparison with the reference, or why it has no interval, in ``section``."""
    board, dataset = section.board, section.dataset
    if value is None:
        status = board.results.status.get((name, dataset))
        return "not run" if status is None else STATUS_TEXT.get(status[0], status[0])
    text = _fmt(value[0], value[1])
    best = section.best_ours[metric]
    if best is not None and value[0] == best and len(board.names) > 1:
        text = f"**{text}**"
    correct, _, why = board.results.correct(name, dataset, metric)
    if correct is not None:
        ci = intervals.cell_interval(correct)
        text += f" [{ci.low:.2f}, {ci.high:.2f}]"
        cmp = section.family.get(metric, {}).get(name)
        if cmp is not None:
            section.compared.setdefault(name, {})[metric] = cmp
            text += " *" if cmp.significant else ""
    elif why and not why.startswith("no test example"):
        section.no_interval[why].append(name)
    return text


def _reported_rows(section: _Section) -> list[list]:
    """The paper's rows umdbench does not implement (the paper's baselines) with the paper's numbers,
    shown first, as in the paper."""
    board, dataset, paper = section.board, section.dataset, section.board.paper
    if paper is None:
        return []
    reported = []
    for prow in paper.rows:
        if prow in board.used_paper_rows or not section.paper_cols:
            continue
        if all(paper.value(prow, dataset, m) is None for m in section.paper_cols):
            continue
        group = f" [{paper.groups[prow]}]" if prow in paper.groups else ""
        line = [f"{prow}{group} (reported, not run)"]
        for m in section.metrics:
            line.append("–")
            if m in section.paper_cols:
                line += [_paper_text(paper.value(prow, dataset, m), section.best_paper[m]), "–"]
        line += ["–", "–"] if board.with_compute else ["–"]
        reported.append(line)
    return reported


def _dataset_notes(section: _Section, undefined: list[str]) -> str:
    """The small print under a dataset's table: rows without an interval, unavailable data, metrics
    undefined on the split, and the data's own recorded deviations."""
    board, dataset = section.board, section.dataset
    out = []
    for why, rows_without in sorted(section.no_interval.items()):
        out.append(
            f"\n<sub>no interval for {', '.join(dict.fromkeys(rows_without))}: {why}; shown as mean ± std "
            f"over seeds only.</sub>\n"
        )
    unavailable = {
        board.results.status[(n, dataset)][1]
        for n in board.names
        if board.results.status.get((n, dataset), ("",))[0] == "data unavailable"
    }
    for reason in sorted(r for r in unavailable if r):
        out.append(f"\n<sub>data unavailable: {reason}</sub>\n")
    if undefined:
        out.append(
            f"\n<sub>not shown: {', '.join(undefined)}; every run on {dataset} reports it undefined "
            f"(the evaluated split has no example of that kind).</sub>\n"
        )
    for deviation in recorded_deviations(board.results, board.names, dataset, own=True):
        out.append(f"\n<sub>deviation: {deviation}</sub>\n")
    return "".join(out)


def _footnotes(board: _Board) -> str:
    """† (inferred rows), ‡ (row notes) and the paper's own notes, once each."""
    footnotes: list[str] = []
    if any(r.inferred for r in board.suite.rows):
        footnotes.append(f"† {INFERRED_NOTE}")
    for row in board.suite.rows:
        if row.note:
            footnotes.append(f"‡ {row.name}: {row.note}")
    if board.paper is not None:  # a paper note already given as the † footnote is not repeated
        footnotes += [n for n in board.paper.notes if not any(f.endswith(n) for f in footnotes)]
    if not footnotes:
        return ""
    return "\n" + "\n".join(f"- {f}" for f in dict.fromkeys(footnotes)) + "\n"

"""Writes the leaderboards of a results store into a folder: ``runs.md`` (every run), per suite
``<suite>.md`` with our numbers beside the paper's, a PNG plot where the suite asks for one, a
``<suite>-runs.jsonl`` with every row behind the board, and ``README.md`` indexing the files. Every
file is written atomically (temp file + rename).

The suites come from the caller as :class:`umdbench.plan.suites.Suite` objects (``umdbench
leaderboard`` resolves them from the plugin registries): the results package loads no plugin.
What goes into a board is in the ``board_*`` modules: the rows (:mod:`~umdbench.results.board_data`),
the markdown (:mod:`~umdbench.results.board_markdown`, with :mod:`~umdbench.results.board_statistics`,
:mod:`~umdbench.results.board_notes`, :mod:`~umdbench.results.board_compute` and
:mod:`~umdbench.results.board_footer`) and the plots (:mod:`~umdbench.results.board_plots`).
Import-light: no torch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from umdbench.data.overlap import load_report
from umdbench.results.board_data import SuiteResults, collect_suite_results, store_dir
from umdbench.results.board_markdown import render_runs, render_suite
from umdbench.results.board_plots import plot_suite
from umdbench.util import atomic_write_text

if TYPE_CHECKING:
    from umdbench.plan.suites import Suite

__all__ = ["runs_jsonl", "write_index", "write_leaderboards", "write_runs_board", "write_suite_boards"]


def write_leaderboards(
    store, out_dir: Path, suites: Sequence[Suite], named: bool = False, reference_points: dict | None = None
) -> list[Path]:
    """The boards of ``suites`` into ``out_dir``. ``named``: the caller chose the suites (``umdbench
    leaderboard --suite``): each gets its board even with nothing stored, and no ``runs.md``;
    otherwise ``runs.md`` lists every run and a suite with nothing in the store is left out.
    ``reference_points``: stored no-image baselines
    (:func:`umdbench.results.reference_points.load_reference_points`), printed under the tables of
    the dataset splits they were computed on."""
    written = [] if named else [write_runs_board(store, out_dir)]
    return written + write_suite_boards(
        store, out_dir, suites, reference_points=reference_points, skip_unstored=not named
    )


def write_runs_board(store, out_dir: Path) -> Path:
    """``runs.md``: every finished run in the store."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "runs.md"
    atomic_write_text(path, render_runs(store.rows(), store_dir(store)))
    return path


def write_suite_boards(
    store,
    out_dir: Path,
    suites: Sequence[Suite],
    reference_points: dict | None = None,
    skip_unstored: bool = False,
) -> list[Path]:
    """Per suite, its board (one section per preset stored, ``paper`` first), plots and runs file,
    then the folder's index. ``skip_unstored``: no board for a suite with nothing in the store (else
    such a suite shows the paper's numbers beside cells not run)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    overlap = load_report(store_dir(store))  # `umdbench overlap --work-dir`: a line under each dataset
    written: list[Path] = []
    for suite in suites:
        by_preset = collect_suite_results(store, suite)
        if not by_preset and skip_unstored:
            continue  # nothing of this suite in the store
        written += _write_suite_board(suite, by_preset or {"tiny": SuiteResults()}, out_dir, reference_points, overlap)
    written.append(write_index(out_dir))
    return written


def _write_suite_board(
    suite: Suite, by_preset: dict[str, SuiteResults], out_dir: Path, reference_points: dict | None, overlap
) -> list[Path]:
    """``<suite>.md`` with a section per preset, each with its plot, and ``<suite>-runs.jsonl``."""
    written: list[Path] = []
    presets = sorted(by_preset, key=lambda p: (p != "paper", p))
    parts = []
    for preset in presets:
        parts.append(render_suite(suite, by_preset[preset], preset, reference_points, overlap))
        plot_name = f"{suite.name}.png" if preset == presets[0] else f"{suite.name}-{preset}.png"
        png = plot_suite(suite, by_preset[preset], preset, out_dir / plot_name)
        if png is not None:
            parts.append(f"\n![{suite.title} ({preset})]({png.name})\n")
            written.append(png)
    rows = [r for preset in presets for r in by_preset[preset].all_rows()]
    if rows:
        runs = out_dir / f"{suite.name}-runs.jsonl"
        atomic_write_text(runs, runs_jsonl(rows))
        parts.append(
            f"\nEvery run behind these numbers (config, hash, seed, commit, package versions, data "
            f"fingerprint, metrics): [{runs.name}]({runs.name}).\n"
        )
        written.append(runs)
    path = out_dir / f"{suite.name}.md"
    atomic_write_text(path, "\n".join(parts))
    written.append(path)
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

"""Benchmark suites: the paper's tables as compact grids, and which store rows belong to them.

A suite is declared as data, in ``registry.toml`` under ``[suites.NAME]`` or by a plugin through
``registries.suite.register(name, spec_dict)``::

    [suites.table4]
    title = "Table 4: ablation on medical VQA (accuracy %)"
    paper = "table4"                                # key into umdbench.results.paper_results.TABLES
    datasets = ["vqa-rad", "slake", "vqa-med-2019"]
    metrics = ["open", "closed", "overall"]         # columns of the leaderboard, in order
    plot = "rows"                                   # "rows" (bar chart) | "vary" (line plot) | omitted
    overrides = { }                                 # cfg overrides for every cell of the suite
    rows = [
      { name = "1 none", pretrain = "none", tune = "direct", paper = "1" },
      { name = "5 TD-Calib+GM-Coord", pretrain = "none", tune = "tdcalib+gmcoord", paper = "5", inferred = true },
    ]
    vary = { key = "pretrain.alpha", label = "alpha", values = [0.2, 0.5, 0.8] }   # optional

The grid is rows x vary values x datasets; each grid point is run once per seed. A row's
``paper`` names its row in the paper table (default: the row's name); ``overrides`` (an inline
table of ``"key.path" = value``) applies to that row only.

Membership: the results store keys a row by its cell key, so a cell that two suites share (UMD on
VQA-RAD is both Table 1's "UMD" and Table 4's row 8) is trained and stored once. The sweep records,
in a side table ``suite_cells`` of the same SQLite file, which cell key each (suite, cell name,
dataset, preset, seed) points at and whether its data was unavailable; leaderboards read it.
"""
from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from umdbench.errors import ConfigError, UnknownNameError

SPEC_KEYS = {"title", "paper", "datasets", "metrics", "plot", "overrides", "rows", "vary", "description"}
ROW_KEYS = {"name", "pretrain", "tune", "paper", "overrides", "inferred", "note"}


@dataclass(frozen=True)
class SuiteRow:
    name: str
    pretrain: str
    tune: tuple[str, ...]
    overrides: tuple[tuple[str, Any], ...] = ()
    paper_row: str | None = None
    inferred: bool = False
    note: str = ""


@dataclass(frozen=True)
class GridPoint:
    """One (row, vary value, dataset) of a suite: a cell before seeds and presets are chosen."""

    suite: str
    cell_name: str
    row: SuiteRow
    dataset: str
    overrides: tuple[tuple[str, Any], ...]
    vary_value: Any = None


@dataclass(frozen=True)
class Suite:
    name: str
    title: str
    datasets: tuple[str, ...]
    rows: tuple[SuiteRow, ...]
    metrics: tuple[str, ...] = ()
    paper: str | None = None
    plot: str | None = None
    overrides: tuple[tuple[str, Any], ...] = ()
    vary_key: str | None = None
    vary_label: str | None = None
    vary_values: tuple[Any, ...] = ()
    description: str = ""
    spec: dict = field(default_factory=dict, compare=False, hash=False)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_spec(cls, name: str, spec: Any) -> "Suite":
        where = f"suite {name!r}"
        if isinstance(spec, Suite):
            return spec
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: a suite is a table (dict), got {type(spec).__name__}.")
        unknown = sorted(set(spec) - SPEC_KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown keys {', '.join(unknown)}; allowed: {', '.join(sorted(SPEC_KEYS))}.")
        datasets = spec.get("datasets")
        if not datasets or not isinstance(datasets, list) or not all(isinstance(d, str) for d in datasets):
            raise ConfigError(f"{where}: 'datasets' must be a non-empty list of dataset names.")
        raw_rows = spec.get("rows")
        if not raw_rows or not isinstance(raw_rows, list):
            raise ConfigError(f"{where}: 'rows' must be a non-empty list of {{name, pretrain, tune}} tables.")
        rows = []
        for i, raw in enumerate(raw_rows):
            if not isinstance(raw, dict) or not {"name", "pretrain", "tune"} <= set(raw):
                raise ConfigError(f"{where}: rows[{i}] needs name, pretrain and tune (got {raw!r}).")
            bad = sorted(set(raw) - ROW_KEYS)
            if bad:
                raise ConfigError(f"{where}: rows[{i}] has unknown keys {', '.join(bad)}; allowed: {', '.join(sorted(ROW_KEYS))}.")
            from umdbench.plan.config import parse_tune_chain

            rows.append(SuiteRow(
                name=str(raw["name"]), pretrain=str(raw["pretrain"]), tune=parse_tune_chain(str(raw["tune"])),
                overrides=_overrides(raw.get("overrides", {}), f"{where} rows[{i}]"),
                paper_row=str(raw.get("paper", raw["name"])), inferred=bool(raw.get("inferred", False)),
                note=str(raw.get("note", "")),
            ))
        names = [r.name for r in rows]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"{where}: row names must be unique; repeated: {', '.join(dup)}.")
        vary = spec.get("vary")
        vary_key = vary_label = None
        vary_values: tuple = ()
        if vary is not None:
            if not isinstance(vary, dict) or "key" not in vary or not vary.get("values"):
                raise ConfigError(f"{where}: 'vary' must be {{key = \"cfg.path\", values = [...], label = \"...\"}}.")
            vary_key = str(vary["key"])
            vary_label = str(vary.get("label", vary_key.rsplit(".", 1)[-1]))
            vary_values = tuple(vary["values"])
        plot = spec.get("plot")
        if plot not in (None, "rows", "vary"):
            raise ConfigError(f"{where}: 'plot' must be 'rows' or 'vary', got {plot!r}.")
        return cls(
            name=name, title=str(spec.get("title", name)), datasets=tuple(datasets), rows=tuple(rows),
            metrics=tuple(spec.get("metrics", ())), paper=spec.get("paper"), plot=plot,
            overrides=_overrides(spec.get("overrides", {}), where), vary_key=vary_key, vary_label=vary_label,
            vary_values=vary_values, description=str(spec.get("description", "")), spec=dict(spec),
        )

    # -- the grid -----------------------------------------------------------------------------
    def grid(self, datasets: tuple[str, ...] | list[str] | None = None) -> list[GridPoint]:
        chosen = self.datasets
        if datasets:
            unknown = [d for d in datasets if d not in self.datasets]
            if unknown:
                raise ConfigError(f"suite {self.name!r} has no dataset {', '.join(unknown)}; "
                                  f"its datasets: {', '.join(self.datasets)}.")
            chosen = tuple(d for d in self.datasets if d in datasets)
        points = []
        values = self.vary_values or (None,)
        for row in self.rows:
            for value in values:
                name = row.name if self.vary_key is None else f"{row.name} {self.vary_label}={value}"
                extra = () if self.vary_key is None else ((self.vary_key, value),)
                for dataset in chosen:
                    points.append(GridPoint(self.name, name, row, dataset, self.overrides + row.overrides + extra, value))
        return points

    def cell_specs(self, *, seeds: int | list[int] = 1, preset: str = "tiny", data_root: str | None = None,
                   user_overrides: tuple = (), datasets=None) -> list:
        """CellSpecs of the grid for each seed. User overrides come last (they win)."""
        from umdbench.plan.config import CellSpec

        seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
        specs = []
        for seed in seed_list:
            for p in self.grid(datasets):
                specs.append(CellSpec(pretrain=p.row.pretrain, tune=p.row.tune, dataset=p.dataset, preset=preset,
                                      seed=seed, overrides=tuple(p.overrides) + tuple(user_overrides),
                                      data_root=data_root, suite=self.name, cell_name=p.cell_name))
        return specs

    def cell_names(self) -> list[str]:
        return list(dict.fromkeys(p.cell_name for p in self.grid()))

    def row_of(self, cell_name: str) -> SuiteRow | None:
        for p in self.grid():
            if p.cell_name == cell_name:
                return p.row
        return None


def _overrides(table: Any, where: str) -> tuple[tuple[str, Any], ...]:
    if isinstance(table, dict):
        return tuple((str(k), v) for k, v in table.items())
    if isinstance(table, list):  # ["key=value", ...]
        from umdbench.plan.config import parse_override

        return tuple(parse_override(str(item)) for item in table)
    raise ConfigError(f"{where}: 'overrides' must be a table of \"key.path\" = value.")


def get_suite(registries, name: str) -> Suite:
    try:
        spec = registries.suite.get(name)
    except UnknownNameError:
        raise
    return Suite.from_spec(name, spec)


def all_suites(registries) -> list[Suite]:
    return [get_suite(registries, name) for name in registries.suite.names()]


# ---------------------------------------------------------------------------------------------
# membership: which cell key each suite cell points at (side table in the results store's file)
# ---------------------------------------------------------------------------------------------
MEMBERSHIP_SCHEMA = """
CREATE TABLE IF NOT EXISTS suite_cells (
    suite TEXT NOT NULL, cell_name TEXT NOT NULL, dataset TEXT NOT NULL, preset TEXT NOT NULL,
    seed INTEGER NOT NULL,
    cell_key TEXT,                  -- NULL when the cell could not be planned (data unavailable)
    status TEXT NOT NULL,           -- planned | done | data unavailable | failed
    detail TEXT,                    -- why (data unavailable / failed)
    overrides TEXT,                 -- JSON: the user's --cfg-options of the sweep
    updated_at TEXT NOT NULL,
    PRIMARY KEY (suite, cell_name, dataset, preset, seed)
);
"""


@dataclass
class Membership:
    suite: str
    cell_name: str
    dataset: str
    preset: str
    seed: int
    cell_key: str | None
    status: str
    detail: str = ""
    overrides: list = field(default_factory=list)


def _connect(store_path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(Path(store_path), timeout=60)
    con.execute("PRAGMA journal_mode=WAL")
    con.executescript(MEMBERSHIP_SCHEMA)
    return con


def record_membership(store_path: Path, entries: list[Membership]) -> None:
    """Insert or replace membership rows in one transaction (the latest sweep of a suite wins)."""
    if not entries:
        return
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    with _connect(store_path) as con:
        con.executemany(
            "INSERT OR REPLACE INTO suite_cells VALUES (?,?,?,?,?,?,?,?,?,?)",
            [(m.suite, m.cell_name, m.dataset, m.preset, int(m.seed), m.cell_key, m.status, m.detail,
              json.dumps(m.overrides, default=str), now) for m in entries],
        )
    # the connection context manager commits; close explicitly to release the file
    con.close()


def read_membership(store_path: Path, suite: str | None = None) -> list[Membership]:
    if not Path(store_path).is_file():
        return []
    con = _connect(store_path)
    try:
        query = "SELECT suite, cell_name, dataset, preset, seed, cell_key, status, detail, overrides FROM suite_cells"
        args: tuple = ()
        if suite is not None:
            query += " WHERE suite = ?"
            args = (suite,)
        out = []
        for row in con.execute(query, args):
            out.append(Membership(*row[:8], overrides=json.loads(row[8]) if row[8] else []))
        return out
    finally:
        con.close()


def write_suite_leaderboards(store, out_dir, suite=None, plugin_paths=()) -> list:
    """Render ``<out_dir>/<suite>.md`` (+ PNG plots) and ``<out_dir>/README.md``; see leaderboard.py."""
    from umdbench.results.leaderboard import write_suite_boards

    return write_suite_boards(store, Path(out_dir), suite=suite, plugin_paths=plugin_paths)

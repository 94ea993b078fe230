"""Benchmark suites: the paper's tables as compact grids.

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
    reference = "1 none"                            # optional: the row others are tested against (default: the first)
    dataset_options = { "vqa-med-2019" = { eval_split_fallback = "val" } }   # optional: options of one dataset

The grid is rows x vary values x datasets; each grid point is run once per seed. A row's
``paper`` names its row in the paper table (default: the row's name); ``overrides`` (an inline
table of ``"key.path" = value``) applies to that row only.

Which stored row each suite cell points at (a cell two suites share is trained and stored once)
is recorded by the sweep in the results store; see ``ResultsStore.record_membership``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from umdbench.errors import ConfigError
from umdbench.plan.config import CellSpec, parse_tune_chain
from umdbench.util import parse_option

SPEC_KEYS = {"title", "paper", "datasets", "metrics", "plot", "overrides", "rows", "vary", "reference",
             "dataset_options"}
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
    reference: str | None = None  # a row or cell name; None = the first cell
    dataset_options: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()  # dataset -> its option overrides

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
        reference = spec.get("reference")
        cell_names = [n if vary_key is None else f"{n} {vary_label}={v}" for n in names for v in (vary_values or (None,))]
        if reference is not None and str(reference) not in names + cell_names:
            raise ConfigError(f"{where}: 'reference' {reference!r} is not one of its rows ({', '.join(names)})"
                              + (f" or cells ({', '.join(cell_names)})" if vary_key else "") + ".")
        raw_options = spec.get("dataset_options", {})
        if not isinstance(raw_options, dict) or not all(isinstance(v, dict) for v in raw_options.values()):
            raise ConfigError(f"{where}: 'dataset_options' must be a table of dataset = {{ option = value }}.")
        stray = sorted(set(raw_options) - set(datasets))
        if stray:
            raise ConfigError(f"{where}: 'dataset_options' names {', '.join(stray)}, which is not in its datasets "
                              f"({', '.join(datasets)}).")
        dataset_options = tuple((d, tuple((f"dataset.options.{k}", v) for k, v in opts.items()))
                                for d, opts in raw_options.items())
        return cls(
            name=name, title=str(spec.get("title", name)), datasets=tuple(datasets), rows=tuple(rows),
            metrics=tuple(spec.get("metrics", ())), paper=spec.get("paper"), plot=plot,
            overrides=_overrides(spec.get("overrides", {}), where), vary_key=vary_key, vary_label=vary_label,
            vary_values=vary_values, reference=None if reference is None else str(reference),
            dataset_options=dataset_options,
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
                    own = dict(self.dataset_options).get(dataset, ())
                    points.append(GridPoint(self.name, name, row, dataset, self.overrides + own + row.overrides + extra))
        return points

    def cell_specs(self, *, seeds: int | list[int] = 1, preset: str = "tiny", data_root: str | None = None,
                   user_overrides: tuple = (), datasets=None) -> list[CellSpec]:
        """CellSpecs of the grid for each seed. User overrides come last (they win)."""
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

    @property
    def reference_cell(self) -> str:
        """The cell every other row is compared with (significance markers): ``reference`` (a cell,
        or a row's first vary value), default the first cell of the grid."""
        names = self.cell_names()
        if self.reference in names:
            return self.reference
        if self.reference is not None:
            return next(n for n in names if n.startswith(f"{self.reference} {self.vary_label}="))
        return names[0]


def _overrides(table: Any, where: str) -> tuple[tuple[str, Any], ...]:
    if isinstance(table, dict):
        return tuple((str(k), v) for k, v in table.items())
    if isinstance(table, list):  # ["key=value", ...]
        return tuple(parse_option(str(item), f"{where} overrides", form="key.path=value") for item in table)
    raise ConfigError(f"{where}: 'overrides' must be a table of \"key.path\" = value.")


def get_suite(registries, name: str) -> Suite:
    return Suite.from_spec(name, registries.suite.get(name))


def all_suites(registries) -> list[Suite]:
    return [get_suite(registries, name) for name in registries.suite.names()]

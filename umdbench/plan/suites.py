"""Benchmark suites: the paper's tables as compact grids.

A suite is declared as data, in ``registry.toml`` under ``[suites.NAME]`` or by a plugin through
``registries.suite.register(name, spec_dict)``::

    [suites.table4]
    title = "Table 4: ablation on medical VQA (accuracy %)"
    paper = "table4"                                # key into umdbench.results.paper_results.TABLES
    datasets = ["vqa-rad", "slake", "vqa-med-2019"]
    metrics = ["open", "closed", "overall"]         # columns of the leaderboard, in order
    lower_is_better = ["hd95"]                      # optional: columns whose best value is the smallest
    plot = "rows"                                   # "rows" (bar chart) | "vary" (line plot) | omitted
    overrides = { }                                 # cfg overrides for every cell of the suite
    rows = [
      { name = "1 none", pretrain = "none", tune = "direct", paper = "1" },
      { name = "5 TD-Calib+GM-Coord", pretrain = "none", tune = "tdcalib+gmcoord", paper = "5", inferred = true },
      { name = "scratch", pretrain = "none", tune = "seg", tune_by_dataset = { "brainsynth-grade" = "cls" } },
    ]
    vary = { key = "pretrain.alpha", label = "alpha", values = [0.2, 0.5, 0.8] }   # optional
    vary = { keys = ["pretrain.alpha", "tune.tdcalib.alpha"], label = "alpha", values = [0.2, 0.5, 0.8] }
    reference = "1 none"                            # optional: the row others are tested against (default: the first)
    dataset_options = { "vqa-med-2019" = { eval_split_fallback = "val" } }   # optional: options of one dataset
    extra_datasets = ["vqa-med-2019"]               # optional: also runnable, beyond the paper (see below)

The grid is rows x vary values x datasets; each grid point is run once per seed. A row's
``paper`` names its row in the paper table (default: the row's name); ``overrides`` (an inline
table of ``"key.path" = value``) applies to that row only; ``seeds = N`` runs that row for seeds
0..N-1 only, however many the sweep runs (an expensive point run once; its board shows the count).
``tune_by_dataset`` gives the row another tune chain on some of the suite's datasets (the same
method on a dataset of another task type: ``seg`` on a segmentation dataset, ``cls`` on a
classification one), so one row, and one reference, spans both.

``vary`` sets one value on one key (``key``) or on several keys together (``keys``: each grid
point gives every key the same value, e.g. Fig. 5's alpha in MR-Pretrain and in TD-Calib). A key
may name a tuning stage by its strategy, ``tune.<name>.<option>``; each row turns it into that
stage's index in its own chain (``tune.tdcalib.alpha`` -> ``tune.0.alpha`` in ``tdcalib+gmcoord``).
Every row must have every stage a vary key names (``pretrain.*`` needs a pre-training stage,
``tune.<name>.*`` / ``tune.<i>.*`` that tuning stage): a row without it is refused when the suite
is read, rather than silently left un-varied.

``datasets`` are the paper's; a sweep runs them all by default. ``extra_datasets`` are datasets
the same rows can also be run on although the paper did not (Fig. 5 on VQA-Med-2019): a sweep runs
them only when ``--datasets`` names them, and the leaderboard shows them after the paper's, marked
as beyond the paper, once a stored row exists.

Which stored row each suite cell points at (a cell two suites share is trained and stored once)
is recorded by the sweep in the results store; see ``ResultsStore.record_membership``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from umdbench.errors import ConfigError
from umdbench.plan.config import CellSpec, parse_tune_chain
from umdbench.util import parse_option

SPEC_KEYS = {
    "title",
    "paper",
    "datasets",
    "extra_datasets",
    "metrics",
    "plot",
    "overrides",
    "rows",
    "vary",
    "reference",
    "dataset_options",
    "lower_is_better",
    "seeds",
}
ROW_KEYS = {"name", "pretrain", "tune", "paper", "overrides", "inferred", "note", "seeds", "tune_by_dataset"}


def _seeds(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"{where}: 'seeds' must be a whole number >= 1 (the seeds a sweep runs by default), got {value!r}."
        )
    return value


@dataclass(frozen=True)
class SuiteRow:
    name: str
    pretrain: str
    tune: tuple[str, ...]
    overrides: tuple[tuple[str, Any], ...] = ()
    paper_row: str | None = None
    inferred: bool = False
    note: str = ""
    seeds: int | None = None  # at most this many seeds (0..seeds-1) for this row: an expensive point run once
    # dataset -> the tune chain the row runs there instead of ``tune`` (a dataset of another task type)
    tune_by_dataset: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def chain(self, dataset: str) -> tuple[str, ...]:
        """The tune chain this row runs on ``dataset``."""
        return dict(self.tune_by_dataset).get(dataset, self.tune)

    @property
    def chains(self) -> tuple[tuple[str, ...], ...]:
        """Every tune chain the row runs (``tune`` first)."""
        return tuple(dict.fromkeys((self.tune, *(c for _, c in self.tune_by_dataset))))


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
    lower_is_better: tuple[str, ...] = ()  # metric columns whose best value is the smallest (distances)
    paper: str | None = None
    plot: str | None = None
    overrides: tuple[tuple[str, Any], ...] = ()
    vary_keys: tuple[str, ...] = ()  # every key gets the vary value; tune.<name>.* as written (see grid)
    vary_label: str | None = None
    vary_values: tuple[Any, ...] = ()
    reference: str | None = None  # a row or cell name; None = the first cell
    dataset_options: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()  # dataset -> its option overrides
    extra_datasets: tuple[str, ...] = ()  # beyond the paper: run only when --datasets names them
    seeds: int = 1  # seeds a sweep runs unless --seeds says otherwise (the boards' intervals need several)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_spec(cls, name: str, spec: Any) -> "Suite":
        """Read a suite table, checking each key in turn (one paragraph per mistake). Longer than 80 lines because it
        is one validation pass over one table, key by key, in the order the table is documented."""
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
        extra = spec.get("extra_datasets", [])
        if not isinstance(extra, list) or not all(isinstance(d, str) for d in extra):
            raise ConfigError(f"{where}: 'extra_datasets' must be a list of dataset names.")
        both = sorted(set(extra) & set(datasets))
        if both:
            raise ConfigError(f"{where}: {', '.join(both)} is in both 'datasets' and 'extra_datasets'; keep it in one.")
        raw_rows = spec.get("rows")
        if not raw_rows or not isinstance(raw_rows, list):
            raise ConfigError(f"{where}: 'rows' must be a non-empty list of {{name, pretrain, tune}} tables.")
        rows = []
        for i, raw in enumerate(raw_rows):
            if not isinstance(raw, dict) or not {"name", "pretrain", "tune"} <= set(raw):
                raise ConfigError(f"{where}: rows[{i}] needs name, pretrain and tune (got {raw!r}).")
            bad = sorted(set(raw) - ROW_KEYS)
            if bad:
                raise ConfigError(
                    f"{where}: rows[{i}] has unknown keys {', '.join(bad)}; allowed: {', '.join(sorted(ROW_KEYS))}."
                )
            rows.append(
                SuiteRow(
                    name=str(raw["name"]),
                    pretrain=str(raw["pretrain"]),
                    tune=parse_tune_chain(str(raw["tune"])),
                    overrides=_overrides(raw.get("overrides", {}), f"{where} rows[{i}]"),
                    paper_row=str(raw.get("paper", raw["name"])),
                    inferred=bool(raw.get("inferred", False)),
                    note=str(raw.get("note", "")),
                    seeds=None if "seeds" not in raw else _seeds(raw["seeds"], f"{where} rows[{i}]"),
                    tune_by_dataset=_tune_by_dataset(
                        raw.get("tune_by_dataset", {}), datasets + extra, f"{where} rows[{i}]"
                    ),
                )
            )
        names = [r.name for r in rows]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"{where}: row names must be unique; repeated: {', '.join(dup)}.")
        vary = spec.get("vary")
        vary_keys: tuple[str, ...] = ()
        vary_label = None
        vary_values: tuple = ()
        if vary is not None:
            form = (
                f'{where}: \'vary\' must be {{key = "cfg.path", values = [...], label = "..."}} or, to set several '
                f'keys to the same value, {{keys = ["pretrain.alpha", "tune.tdcalib.alpha"], values = [...], '
                f'label = "..."}}'
            )
            if not isinstance(vary, dict) or not vary.get("values") or ("key" in vary) == ("keys" in vary):
                raise ConfigError(f"{form}.")
            bad_vary = sorted(set(vary) - {"key", "keys", "values", "label"})
            if bad_vary:
                raise ConfigError(f"{form}; it has unknown keys {', '.join(bad_vary)}.")
            keys = [vary["key"]] if "key" in vary else vary["keys"]
            if (
                not isinstance(keys, list)
                or not keys
                or not all(isinstance(k, str) and k for k in keys)
                or len(set(keys)) != len(keys)
            ):
                raise ConfigError(f"{form}; 'keys' must be a non-empty list of distinct cfg paths, got {keys!r}.")
            vary_keys = tuple(keys)
            vary_label = str(vary.get("label", vary_keys[0].rsplit(".", 1)[-1]))
            vary_values = tuple(vary["values"])
            for row in rows:
                for key in vary_keys:
                    for chain in row.chains:
                        stage_key(key, row, where, chain)  # every row has every stage a vary key names
        vary_key = vary_keys[0] if vary_keys else None
        plot = spec.get("plot")
        if plot not in (None, "rows", "vary"):
            raise ConfigError(f"{where}: 'plot' must be 'rows' or 'vary', got {plot!r}.")
        reference = spec.get("reference")
        cell_names = [
            n if vary_key is None else f"{n} {vary_label}={v}" for n in names for v in (vary_values or (None,))
        ]
        if reference is not None and str(reference) not in names + cell_names:
            raise ConfigError(
                f"{where}: 'reference' {reference!r} is not one of its rows ({', '.join(names)})"
                + (f" or cells ({', '.join(cell_names)})" if vary_key else "")
                + "."
            )
        raw_options = spec.get("dataset_options", {})
        if not isinstance(raw_options, dict) or not all(isinstance(v, dict) for v in raw_options.values()):
            raise ConfigError(f"{where}: 'dataset_options' must be a table of dataset = {{ option = value }}.")
        stray = sorted(set(raw_options) - set(datasets) - set(extra))
        if stray:
            raise ConfigError(
                f"{where}: 'dataset_options' names {', '.join(stray)}, which is not in its datasets "
                f"({', '.join(datasets + extra)})."
            )
        dataset_options = tuple(
            (d, tuple((f"dataset.options.{k}", v) for k, v in opts.items())) for d, opts in raw_options.items()
        )
        return cls(
            name=name,
            title=str(spec.get("title", name)),
            datasets=tuple(datasets),
            rows=tuple(rows),
            metrics=tuple(spec.get("metrics", ())),
            lower_is_better=tuple(spec.get("lower_is_better", ())),
            paper=spec.get("paper"),
            plot=plot,
            overrides=_overrides(spec.get("overrides", {}), where),
            vary_keys=vary_keys,
            vary_label=vary_label,
            vary_values=vary_values,
            reference=None if reference is None else str(reference),
            dataset_options=dataset_options,
            extra_datasets=tuple(extra),
            seeds=_seeds(spec.get("seeds", 1), where),
        )

    @property
    def vary_key(self) -> str | None:
        """The first vary key (None for a suite without ``vary``)."""
        return self.vary_keys[0] if self.vary_keys else None

    # -- the grid -----------------------------------------------------------------------------
    def grid(self, datasets: tuple[str, ...] | list[str] | None = None) -> list[GridPoint]:
        chosen = self.datasets
        if datasets:
            allowed = self.datasets + self.extra_datasets
            unknown = [d for d in datasets if d not in allowed]
            if unknown:
                beyond = f" (and, beyond the paper, {', '.join(self.extra_datasets)})" if self.extra_datasets else ""
                raise ConfigError(
                    f"suite {self.name!r} has no dataset {', '.join(unknown)}; "
                    f"its datasets: {', '.join(self.datasets)}{beyond}."
                )
            chosen = tuple(d for d in allowed if d in datasets)
        points = []
        values = self.vary_values or (None,)
        for row in self.rows:
            for value in values:
                name = row.name if self.vary_key is None else f"{row.name} {self.vary_label}={value}"
                for dataset in chosen:
                    chain = row.chain(dataset)
                    extra = tuple((stage_key(k, row, f"suite {self.name!r}", chain), value) for k in self.vary_keys)
                    own = dict(self.dataset_options).get(dataset, ())
                    points.append(
                        GridPoint(self.name, name, row, dataset, self.overrides + own + row.overrides + extra)
                    )
        return points

    def cell_specs(
        self,
        *,
        seeds: int | list[int] = 1,
        preset: str = "tiny",
        data_root: str | None = None,
        user_overrides: tuple = (),
        datasets=None,
    ) -> list[CellSpec]:
        """CellSpecs of the grid for each seed. User overrides come last (they win)."""
        seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
        specs = []
        for seed in seed_list:
            for p in self.grid(datasets):
                if p.row.seeds is not None and seed >= p.row.seeds:
                    continue  # the row caps its seeds (an expensive point run fewer times; the board shows its count)
                specs.append(
                    CellSpec(
                        pretrain=p.row.pretrain,
                        tune=p.row.chain(p.dataset),
                        dataset=p.dataset,
                        preset=preset,
                        seed=seed,
                        overrides=tuple(p.overrides) + tuple(user_overrides),
                        data_root=data_root,
                        suite=self.name,
                        cell_name=p.cell_name,
                    )
                )
        return specs

    def shown_datasets(self, stored: set[str] | frozenset[str] = frozenset()) -> tuple[str, ...]:
        """The datasets a leaderboard shows: the paper's, then each extra dataset that has a stored row."""
        return self.datasets + tuple(d for d in self.extra_datasets if d in stored)

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


def stage_key(key: str, row: SuiteRow, where: str, tune: tuple[str, ...] | None = None) -> str:
    """``key`` as a cfg path of ``row``'s own config: ``tune.<name>.rest`` becomes ``tune.<i>.rest``
    with ``i`` the stage's place in the row's tune chain (``tune``: the chain on one dataset, default
    the row's ``tune``). Raises ConfigError when the row has no stage the key names (``pretrain.*``
    on a row without pre-training, a tuning stage not in its chain)."""
    tune = row.tune if tune is None else tune
    parts = key.split(".")
    fix = f"Give the row that stage, move the row to a suite of its own, or drop {key!r} from the suite's vary keys."
    if parts[0] == "pretrain" and row.pretrain == "none":
        raise ConfigError(
            f"{where}: vary key {key!r} sets a pre-training option, but row {row.name!r} has no "
            f'pre-training stage (pretrain = "none"). {fix}'
        )
    if parts[0] != "tune":
        return key
    if len(parts) < 3:
        raise ConfigError(
            f"{where}: vary key {key!r} must name a tuning stage and an option, "
            f"e.g. tune.tdcalib.alpha or tune.0.train.lr."
        )
    chain = " + ".join(tune)
    if parts[1] == "*":  # every tuning stage (expanded where the override is applied)
        return key
    if parts[1].isdigit():
        if int(parts[1]) >= len(tune):
            raise ConfigError(
                f"{where}: vary key {key!r} names tuning stage {parts[1]}, but row {row.name!r} has "
                f"{len(tune)} ({chain}). {fix}"
            )
        return key
    if parts[1] not in tune:
        raise ConfigError(
            f"{where}: vary key {key!r} names tuning stage {parts[1]!r}, which row {row.name!r} does "
            f"not run (its chain: {chain}). {fix}"
        )
    return ".".join(["tune", str(tune.index(parts[1])), *parts[2:]])


def _tune_by_dataset(table: Any, datasets: list[str], where: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """A row's ``tune_by_dataset``: {dataset of the suite: "tune chain"}."""
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        raise ConfigError(f"{where}: 'tune_by_dataset' must be a table of dataset = \"tune chain\".")
    stray = sorted(set(table) - set(datasets))
    if stray:
        raise ConfigError(
            f"{where}: 'tune_by_dataset' names {', '.join(stray)}, which is not in the suite's datasets "
            f"({', '.join(datasets)})."
        )
    return tuple((str(d), parse_tune_chain(chain)) for d, chain in table.items())


def _overrides(table: Any, where: str) -> tuple[tuple[str, Any], ...]:
    if isinstance(table, dict):
        return tuple((str(k), v) for k, v in table.items())
    if isinstance(table, list):  # ["key=value", ...]
        return tuple(parse_option(str(item), f"{where} overrides", form="key.path=value") for item in table)
    raise ConfigError(f"{where}: 'overrides' must be a table of \"key.path\" = value.")


def check_suite_names(suite: Suite, registries) -> None:
    """Every strategy and dataset a suite names is registered, and each row fits each of its datasets
    (``Strategy.task_types`` / ``encoders``), so a misspelt name fails before a sweep plans, not as
    cells that are silently "data unavailable" or fail one by one."""
    from umdbench.plan import options
    from umdbench.plan.config import tune_chain

    where = f"suite {suite.name!r} (from {registries.suite.origin(suite.name)})"

    def known(kind: str, name: str, what: str) -> None:
        registry = getattr(registries, kind)
        if name not in registry:
            raise ConfigError(f"{where}: {what} names {registry.unknown_message(name)}")

    for dataset in suite.datasets + suite.extra_datasets:
        known("dataset", dataset, "its datasets")
    for row in suite.rows:
        if row.pretrain != "none":
            known("pretrain", row.pretrain, f"row {row.name!r}")
        for name in dict.fromkeys(n for chain in row.chains for n in chain):
            known("tune", name, f"row {row.name!r}")
    for row in suite.rows:
        for dataset in suite.datasets + suite.extra_datasets:
            overrides = dict(suite.overrides + dict(suite.dataset_options).get(dataset, ()) + row.overrides)
            dataset_cls = registries.dataset.get(dataset)
            corpus = overrides.get("pretrain.corpus.type") or dataset_cls.default_pretrain_corpus
            corpus = corpus.get("type") if isinstance(corpus, dict) else corpus
            if row.pretrain != "none" and corpus is None:
                continue  # resolving the cell says which corpus to choose
            config = {
                "model": {"type": overrides.get("model.type") or dataset_cls.encoder},
                "dataset": {"type": dataset},
                "pretrain": None if row.pretrain == "none" else {"type": row.pretrain, "corpus": {"type": corpus}},
                "tune": [{"type": name} for name, _, _ in tune_chain(row.chain(dataset), registries)],
            }
            try:
                options.check_compatibility(config, registries)
            except ConfigError as exc:
                raise ConfigError(f"{where}, row {row.name!r} on {dataset!r}: {exc}") from exc


def get_suite(registries, name: str) -> Suite:
    return Suite.from_spec(name, registries.suite.get(name))


def all_suites(registries) -> list[Suite]:
    return [get_suite(registries, name) for name in registries.suite.names()]

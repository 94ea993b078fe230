"""A sweep: a grid of cells planned into one DAG of unique stages, then executed.

Every cell resolves to a chain of stages (pre-training -> tuning stages -> evaluation) whose keys
cover everything upstream (see :mod:`umdbench.plan.stage_plan`), so stages that several cells need have equal
keys: one pre-training serves every cell that uses it, one TD-Calib every cell with the same
pre-training, dataset and seed. The sweep dedupes the training stages by key and orders them
topologically (parents first, cell by cell so that results arrive early); evaluation stays per
cell. Executors (:mod:`umdbench.sweep.executors`) run that DAG.

Resume: a cell whose key is in the results store is finished and skipped; a stage whose artifact is
cached is skipped; an interrupted stage resumes from its mmengine checkpoint. Stopping a sweep at
any point and starting it again therefore loses and duplicates nothing.
"""

from __future__ import annotations

import dataclasses
import re
import traceback
from dataclasses import dataclass, field
from typing import Callable

from umdbench.api import DataError
from umdbench.data.catalog import DataCatalog, missing_data
from umdbench.errors import ConfigError, UmdbenchError, UnknownNameError
from umdbench.plan.config import CellSpec, ResolvedRun, resolve, tune_chain
from umdbench.plan.stage_plan import Stage, build_plan
from umdbench.util import dataset_root, portable_paths

_TUNE_INDEX = re.compile(r"^tune\.(\d+|\*)(\..*)?$")


@dataclass
class PlannedCell:
    spec: CellSpec
    run: ResolvedRun | None = None
    stages: list[Stage] = field(default_factory=list)  # training stages, then the evaluation stage
    status: str = "pending"  # pending | done | data unavailable | duplicate
    reason: str = ""
    dropped_overrides: tuple[str, ...] = ()

    @property
    def key(self) -> str | None:
        return self.stages[-1].key if self.stages else None

    @property
    def training(self) -> list[Stage]:
        return self.stages[:-1]

    @property
    def eval_stage(self) -> Stage:
        return self.stages[-1]

    def describe(self) -> str:
        s = self.spec
        name = f"{s.cell_name}: " if s.cell_name else ""
        return f"{name}{s.pretrain} / {'+'.join(s.tune)} / {s.dataset} / seed {s.seed}"


@dataclass
class SweepPlan:
    cells: list[PlannedCell]
    stages: list[Stage]  # unique training stages, topological order (a parent before its children)
    runs: dict[str, ResolvedRun]  # stage key -> a run that contains the stage (any will do: same key)
    suite: str | None = None

    # -- views ----------------------------------------------------------------------------------
    def by_status(self, status: str) -> list[PlannedCell]:
        return [c for c in self.cells if c.status == status]

    @property
    def pending(self) -> list[PlannedCell]:
        return self.by_status("pending")

    @property
    def planned(self) -> list[PlannedCell]:
        return [c for c in self.cells if c.stages]

    def needed_stages(self) -> list[Stage]:
        """The unique training stages that some unfinished cell still needs, in topological order."""
        keys = {s.key for c in self.pending for s in c.training}
        return [s for s in self.stages if s.key in keys]

    def counts(self) -> dict[str, int]:
        planned = [c for c in self.planned if c.status != "duplicate"]
        uses = sum(len(c.training) for c in planned)
        pre_uses = sum(1 for c in planned for s in c.training if s.kind == "pretrain")
        return {
            "cells": len(self.cells),
            "planned": len(planned),
            "duplicates": len(self.by_status("duplicate")),
            "done": len(self.by_status("done")),
            "pending": len(self.pending),
            "unavailable": len(self.by_status("data unavailable")),
            "stage_uses": uses,
            "unique_stages": len(self.stages),
            "saved": uses - len(self.stages),
            "pretrain_uses": pre_uses,
            "unique_pretrains": sum(1 for s in self.stages if s.kind == "pretrain"),
            "evaluations": len(planned),
        }

    def describe(self, is_cached: Callable[[Stage], bool] | None = None) -> str:
        """The plan in words; ``is_cached`` (e.g. ``Workspace.is_trained``) marks cached stages."""
        c = self.counts()
        lines = [
            f"sweep{' of suite ' + self.suite if self.suite else ''}: {c['cells']} cells "
            f"({c['pending']} to run, {c['done']} finished, {c['unavailable']} data unavailable"
            f"{', ' + str(c['duplicates']) + ' duplicates' if c['duplicates'] else ''})",
            "",
            "cells:",
        ]
        for n, cell in enumerate(self.cells, 1):
            tag = cell.status if cell.status != "pending" else "to run"
            key = f" key {cell.key[:12]}" if cell.key else ""
            why = f"  ({cell.reason})" if cell.reason and cell.status != "data unavailable" else ""
            if cell.dropped_overrides:  # grid-wide overrides that do not apply to this cell
                why += f"  (not applied here: {', '.join(cell.dropped_overrides)})"
            lines.append(f"  {n:>3}. [{tag}] {cell.describe()}{key}{why}")
        unavailable = self.by_status("data unavailable")
        if unavailable:
            lines += ["", "data unavailable (listed, not run):"]
            reasons: dict[str, list[str]] = {}
            for cell in unavailable:
                reasons.setdefault(cell.reason, []).append(cell.spec.dataset)
            for reason, datasets in reasons.items():
                lines.append(f"  - {', '.join(sorted(set(datasets)))}: {reason}")
        lines += ["", f"unique training stages ({len(self.stages)}; a parent before its children):"]
        users: dict[str, int] = {}
        for cell in self.planned:
            if cell.status == "duplicate":
                continue
            for s in cell.training:
                users[s.key] = users.get(s.key, 0) + 1
        for n, s in enumerate(self.stages, 1):
            cached = "  [cached]" if is_cached is not None and is_cached(s) else ""
            parent = f" <- {s.parent.key[:12]}" if s.parent else ""
            train = s.cfg.get("train", {})
            lines.append(
                f"  {n:>3}. {s.title:<18} key {s.key[:12]}{parent}  data {s.data['type']}:{s.data['split']}  "
                f"{train.get('max_iters', '?')} iters  used by {users.get(s.key, 0)} cell(s){cached}"
            )
        lines += [
            "",
            f"sharing: {c['stage_uses']} training stages over {c['planned']} planned cells -> "
            f"{c['unique_stages']} unique ({c['saved']} saved); pre-trainings: {c['unique_pretrains']} unique "
            f"for {c['pretrain_uses']} cells that pre-train; evaluations: {c['evaluations']}",
        ]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# planning
# ---------------------------------------------------------------------------------------------
def _chain(spec: CellSpec, registries) -> list | None:
    """The cell's tuning strategy classes as resolved (see :func:`umdbench.plan.config.tune_chain`)."""
    try:
        return [cls for _, cls, _ in tune_chain(spec.tune, registries)]
    except UmdbenchError:
        return None


def _stages_with_key(spec: CellSpec, chain: list, rest: str) -> list[int]:
    """Indices of the chain's stages whose preset has the first key of ``rest`` (".pooling" ->
    the supervised stages only); every index when none has it, so resolving reports the typo."""
    first = rest.lstrip(".").split(".", 1)[0]
    if not first:
        return list(range(len(chain)))
    found = []
    for i, cls in enumerate(chain):
        try:
            if first in cls.default_config(spec.preset, spec.dataset):
                found.append(i)
        except Exception:  # a preset that cannot resolve here is reported when the cell resolves
            found.append(i)
    return found or list(range(len(chain)))


def _pretrain_lacks(spec: CellSpec, registries, first: str) -> bool:
    """Whether the cell's pre-training preset lacks ``first`` while another registered pre-training
    strategy has it (a key of some strategies only); a key no strategy has is kept, so the typo is
    reported when the cell resolves."""

    def has(name: str) -> bool:
        try:
            return first in registries.pretrain.get(name).default_config(spec.preset, spec.dataset)
        except Exception:  # a strategy that cannot resolve here is reported when its cell resolves
            return False

    return not has(spec.pretrain) and any(has(n) for n in registries.pretrain.names() if n != spec.pretrain)


def fit_overrides(spec: CellSpec, registries) -> tuple[CellSpec, tuple[str, ...]]:
    """Adapt grid-wide overrides to one cell.

    ``tune.*.KEY`` expands to every tuning stage of the cell whose preset has KEY (so
    ``tune.*.pooling=mean`` skips TD-Calib, which has no task head); ``pretrain.*.KEY`` reaches the
    cell's pre-training only if its preset has KEY (``pretrain.*.alpha=0.2`` skips MAE);
    ``pretrain.KEY`` is dropped for a cell without pre-training and ``tune.N.KEY`` for a chain
    shorter than N+1 (one override list serves the whole grid, e.g. ``pretrain.train.max_iters=4
    tune.*.train.max_iters=4``).
    """
    chain = _chain(spec, registries)
    length = None if chain is None else len(chain)
    kept, dropped = [], []
    for key, value in spec.overrides:
        if key.startswith("pretrain.") and spec.pretrain == "none":
            dropped.append(key)
            continue
        if key.startswith("pretrain.*."):
            rest = key[len("pretrain.*.") :]
            if _pretrain_lacks(spec, registries, rest.split(".", 1)[0]):
                dropped.append(key)
            else:
                kept.append((f"pretrain.{rest}", value))
            continue
        m = _TUNE_INDEX.match(key)
        if m and length is not None:
            index, rest = m.group(1), m.group(2) or ""
            if index == "*":
                kept += [(f"tune.{i}{rest}", value) for i in _stages_with_key(spec, chain, rest)]
                continue
            if int(index) >= length:
                dropped.append(key)
                continue
        kept.append((key, value))
    return dataclasses.replace(spec, overrides=tuple(kept)), tuple(dropped)


def data_problem(spec: CellSpec, registries) -> str | None:
    """Why a cell's data (dataset or pre-training corpus) cannot be read, or None."""
    try:
        cls = registries.dataset.get(spec.dataset)
    except UnknownNameError as exc:
        return f"dataset plugin {spec.dataset!r} is not installed ({str(exc).split('.')[0]})"
    try:
        dataset_root(cls, spec.data_root, spec.dataset)
    except ConfigError as exc:
        return str(exc).split(". ")[0]
    if spec.pretrain != "none":
        corpus = dict(spec.overrides).get("pretrain.corpus.type") or getattr(cls, "default_pretrain_corpus", None)
        if isinstance(corpus, str):
            try:
                corpus_cls = registries.dataset.get(corpus)
                dataset_root(corpus_cls, spec.data_root, corpus)
            except UnknownNameError:
                return f"pre-training corpus plugin {corpus!r} is not installed"
            except ConfigError as exc:
                return f"pre-training corpus: {str(exc).split('. ')[0]}"
    return None


def plan_sweep(
    specs: list[CellSpec], registries, catalog: DataCatalog | None = None, store=None, suite: str | None = None
) -> SweepPlan:
    """Resolve every cell, build its stage chain and merge the chains into one DAG.

    Cells whose data is unavailable are kept (status ``data unavailable``) instead of failing the
    sweep; any other configuration error is raised (it would fail every cell alike)."""
    catalog = catalog or DataCatalog(registries)
    cells: list[PlannedCell] = []
    unique: dict[str, Stage] = {}
    runs: dict[str, ResolvedRun] = {}
    seen_cells: dict[str, PlannedCell] = {}
    for raw in specs:
        spec, dropped = fit_overrides(raw, registries)
        cell = PlannedCell(spec, dropped_overrides=dropped)
        cells.append(cell)
        problem = data_problem(spec, registries)
        if problem:
            cell.status, cell.reason = "data unavailable", problem
            continue
        try:
            cell.run = resolve(spec, registries)
        except ConfigError:
            problem = data_problem(spec, registries)
            if not problem:
                raise
            cell.status, cell.reason = "data unavailable", problem
            continue
        try:
            cell.stages = build_plan(cell.run, registries, catalog)
            problem = missing_data(cell.stages, catalog)
        except (DataError, OSError) as exc:  # reading the data failed (missing files, bad records)
            problem = f"could not read the data: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if problem:
            cell.status, cell.reason = "data unavailable", problem
            cell.run, cell.stages = None, []
            continue
        if cell.key in seen_cells:
            cell.status, cell.reason = "duplicate", f"same cell as '{seen_cells[cell.key].describe()}'"
            continue
        seen_cells[cell.key] = cell
        for stage in cell.training:
            if stage.key not in unique:
                unique[stage.key] = stage
                runs[stage.key] = cell.run
        if store is not None and store.get(cell.key) is not None:
            cell.status = "done"
    return SweepPlan(cells, topological(list(unique.values())), runs, suite)


def topological(stages: list[Stage]) -> list[Stage]:
    """Stable topological order: each stage after its parent (Kahn's algorithm, input order kept)."""
    keys = {s.key for s in stages}
    placed: set[str] = set()
    order: list[Stage] = []
    remaining = list(stages)
    while remaining:
        progressed = []
        for s in remaining:
            parent = s.parent.key if s.parent is not None and s.parent.key in keys else None
            if parent is None or parent in placed:
                order.append(s)
                placed.add(s.key)
                progressed.append(s)
        if not progressed:
            raise UmdbenchError("the stage graph has a cycle; this is a bug in the planner")
        remaining = [s for s in remaining if s.key not in placed]
    return order


# ---------------------------------------------------------------------------------------------
# execution bookkeeping shared by the executors
# ---------------------------------------------------------------------------------------------
@dataclass
class SweepReport:
    finished: list[PlannedCell] = field(default_factory=list)  # run now
    skipped: list[PlannedCell] = field(default_factory=list)  # already in the store
    failed: list[tuple[PlannedCell, str]] = field(default_factory=list)
    stages_trained: int = 0

    def summary(self) -> str:
        parts = [
            f"{len(self.finished)} cells run",
            f"{len(self.skipped)} already finished",
            f"{self.stages_trained} stages trained",
        ]
        if self.failed:
            parts.append(f"{len(self.failed)} failed")
        return ", ".join(parts)


def membership_entries(plan: SweepPlan, user_overrides=()) -> list:
    from umdbench.results.store import Membership

    out = []
    overrides = [f"{k}={v}" for k, v in user_overrides]
    by_key = {c.key: c for c in plan.cells if c.key and c.status != "duplicate"}
    for cell in plan.cells:
        s = cell.spec
        if not s.suite or not s.cell_name:
            continue
        status = cell.status
        if status == "duplicate":
            status = by_key[cell.key].status if cell.key in by_key else "planned"
        status = {"pending": "planned"}.get(status, status)
        out.append(
            Membership(
                s.suite,
                s.cell_name,
                s.dataset,
                s.preset,
                s.seed,
                cell.key,
                status,
                # the reason names the folder it looked in: kept as <data-root>/..., never the machine's path
                portable_paths(cell.reason, s.data_root) if status == "data unavailable" else "",
                overrides,
            )
        )
    return out


def plan_data_root(plan: SweepPlan) -> str | None:
    """The data root the plan's cells read (they share one; None for generated data only)."""
    return next((c.spec.data_root for c in plan.cells if c.spec.data_root), None)


def mark(plan: SweepPlan, ws, cell: PlannedCell, status: str, detail: str = "", user_overrides=()) -> None:
    """Record a cell's new status (and that of its duplicates) in the work dir's results store."""
    cell.status = {"done": "done", "failed": "failed"}.get(status, status)
    entries = [e for e in membership_entries(plan, user_overrides) if e.cell_key == cell.key]
    for e in entries:
        e.status, e.detail = status, portable_paths(detail, plan_data_root(plan))
    ws.store.record_membership(entries)


def format_failure(exc: BaseException) -> str:
    tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
    return "".join(tb[-3:]).strip()

"""The work dir's one owner: every path under it, and the stage artifacts (weights) kept there.

The names of its files and folders, and the layout they make, are in :mod:`umdbench.run.layout`;
the Workspace builds every path from them. Other modules ask a :class:`Workspace` (or, for a path
or two without one, the layout's helpers).
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from umdbench.errors import CheckpointError
from umdbench.results import predictions as predictions_file
from umdbench.results.store import ResultsStore
from umdbench.run import layout
from umdbench.run.layout import (
    CELL_LOCK_FILE,
    DDP_REQUEST_FILE,
    EVAL_DIR,
    EVIDENCE_FILE,
    IMAGE_CACHE_DIR,
    MARKER_FILE,
    PREDICTIONS_FILE,
    RESULT_FILE,
    RUN_CONFIG_FILE,
    RUNS_DIR,
    STAGE_INPUTS_FILE,
    STAGE_LOCK_FILE,
    TRAIN_DIR,
    WEIGHTS_FILE,
)
from umdbench.util import atomic_write_bytes, atomic_write_json

__all__ = ["Workspace"]


class Workspace:
    """Paths and stage artifacts of one work dir (``--work-dir``)."""

    def __init__(self, work_dir: str | Path):
        self.work_dir = Path(work_dir)
        self._store: ResultsStore | None = None

    def __repr__(self) -> str:
        return f"Workspace({str(self.work_dir)!r})"

    # -- results store -----------------------------------------------------------------------------
    @property
    def store_path(self) -> Path:
        return layout.store_path(self.work_dir)

    @property
    def store(self) -> ResultsStore:
        if self._store is None:
            self._store = ResultsStore(self.store_path)
        return self._store

    # -- stages ------------------------------------------------------------------------------------
    @property
    def stages_dir(self) -> Path:
        return layout.stages_dir(self.work_dir)

    def stage_dir(self, stage) -> Path:
        return self.stages_dir / stage.dirname

    def train_dir(self, stage) -> Path:
        return self.stage_dir(stage) / TRAIN_DIR

    def resume_checkpoint(self, stage) -> Path | None:
        """The checkpoint an interrupted stage resumes from, or None to start it afresh.

        mmengine's ``last_checkpoint`` holds an absolute path, which is wrong once the work dir is
        moved or mounted elsewhere: the file is looked up by name in the stage's own train dir."""
        pointer = self.train_dir(stage) / "last_checkpoint"
        if not pointer.is_file():
            return None
        try:
            name = Path(pointer.read_text().strip()).name
        except (OSError, UnicodeDecodeError) as exc:
            raise CheckpointError(
                f"{pointer} cannot be read ({type(exc).__name__}: {exc}); fix: delete it to "
                f"restart the stage from scratch."
            ) from exc
        checkpoint = self.train_dir(stage) / name
        if not name or not checkpoint.is_file():
            raise CheckpointError(
                f"{pointer} names the checkpoint {pointer.read_text().strip()!r}, which is not in {pointer.parent}; "
                f"fix: delete {pointer} (and any partial checkpoint there) to restart the stage from scratch."
            )
        return checkpoint

    def prune_checkpoints(self, stage, keep: int) -> list[Path]:
        """Delete all but the newest ``keep`` resumable checkpoints of a finished stage (its
        artifact is what later stages read; a checkpoint only matters if the artifact is lost).
        Returns the deleted files."""
        train_dir = self.train_dir(stage)

        def iteration(path: Path) -> int:
            digits = path.stem.rpartition("_")[2]
            return int(digits) if digits.isdigit() else -1

        checkpoints = sorted(train_dir.glob("iter_*.pth"), key=iteration, reverse=True)
        doomed = checkpoints[max(0, int(keep)) :]
        for path in doomed:
            path.unlink(missing_ok=True)
        if keep <= 0:  # no checkpoint left for the pointer to name
            (train_dir / "last_checkpoint").unlink(missing_ok=True)
        return doomed

    def ddp_request_path(self, stage) -> Path:
        return self.stage_dir(stage) / DDP_REQUEST_FILE

    def weights_path(self, stage) -> Path:
        return self.stage_dir(stage) / WEIGHTS_FILE

    def _marker_path(self, stage) -> Path:
        return self.stage_dir(stage) / MARKER_FILE

    def is_trained(self, stage) -> bool:
        """Whether the stage's artifact is finished (its marker is written last)."""
        return self._marker_path(stage).is_file()

    def marker(self, stage) -> dict:
        """The finished stage's ``artifact.json`` (sha256, wall time, ...). A marker without the
        weights' sha256 is corrupt, like an unreadable one: weights that cannot be verified are
        never loaded."""
        path = self._marker_path(stage)
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(
                f"stage marker {path} cannot be read ({type(exc).__name__}: {exc}). Delete the "
                f"folder {path.parent} and run again to rebuild that stage."
            ) from exc
        sha = meta.get("sha256") if isinstance(meta, dict) else None
        if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
            raise CheckpointError(
                f"stage marker {path} is corrupt: it holds no sha256 of the weights "
                f"({WEIGHTS_FILE}), so they cannot be verified and are not loaded. Delete the folder "
                f"{path.parent} and run again to rebuild that stage."
            )
        return meta

    def stage_wall_time(self, stage) -> float:
        """Training seconds recorded for a finished stage (0 if it has none)."""
        try:
            return float(self.marker(stage).get("wall_time_s", 0.0))
        except (CheckpointError, TypeError, ValueError):
            return 0.0

    def write_stage_inputs(self, stage) -> None:
        """``stage.json``: what the stage's key was computed from."""
        self.stage_dir(stage).mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            self.stage_dir(stage) / STAGE_INPUTS_FILE,
            {"key": stage.key, "key_inputs": stage.key_inputs, "data": stage.data},
        )

    def save_stage(self, stage, state: dict, **meta: Any) -> str:
        """Store a finished stage: the weights, then the marker. Returns the weights' sha256."""
        from umdbench.run.checkpoint import save_artifact

        self.stage_dir(stage).mkdir(parents=True, exist_ok=True)
        sha = save_artifact(state, self.weights_path(stage))
        atomic_write_json(
            self._marker_path(stage),
            {"key": stage.key, "sha256": sha, "created_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **meta},
        )
        return sha

    def evidence_path(self, stage) -> Path:
        """Where a training stage records its first optimiser steps (:mod:`umdbench.run.evidence`)."""
        return self.train_dir(stage) / EVIDENCE_FILE

    def stage_inputs(self, stage_dir: Path) -> dict | None:
        """A stage folder's ``stage.json`` (None when absent or unreadable)."""
        try:
            data = json.loads((Path(stage_dir) / STAGE_INPUTS_FILE).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def finished_stages(self, kind: str, name: str) -> list[Path]:
        """Folders of finished stages of one strategy (any key), newest marker first."""
        prefix = f"{kind}-{name}-"
        found = []
        if self.stages_dir.is_dir():
            for folder in self.stages_dir.iterdir():
                rest = folder.name[len(prefix) :] if folder.name.startswith(prefix) else ""
                if len(rest) == 16 and all(c in "0123456789abcdef" for c in rest) and (folder / MARKER_FILE).is_file():
                    found.append(folder)
        return sorted(found, key=lambda f: (f / MARKER_FILE).stat().st_mtime, reverse=True)

    def folder_marker(self, stage_dir: Path) -> dict:
        """The marker of a finished stage folder found by :meth:`finished_stages`."""
        path = Path(stage_dir) / MARKER_FILE
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(
                f"stage marker {path} cannot be read ({type(exc).__name__}: {exc}). Delete the "
                f"folder {path.parent} and run again to rebuild that stage."
            ) from exc

    def adopt_artifact(self, stage, source_dir: Path, **meta: Any) -> Path:
        """Make the finished stage in ``source_dir`` (another key) this stage's artifact: its
        weights hard-linked (copied where links fail), then a marker with ``meta`` written last,
        as :meth:`save_stage` does. The weights' sha256 is checked first; returns the folder."""
        import os
        import shutil

        from umdbench.run.checkpoint import sha256_file

        source_marker = self.folder_marker(source_dir)
        source = Path(source_dir) / WEIGHTS_FILE
        if not source.is_file() or sha256_file(source) != source_marker.get("sha256"):  # refused, not spread
            raise CheckpointError(
                f"cached artifact {source} is missing or does not match the checksum recorded when "
                f"it was written; it cannot be adopted. Delete the folder {source.parent} and train "
                f"the stage again (`umdbench run` or `umdbench sweep`)."
            )
        self.write_stage_inputs(stage)
        target = self.weights_path(stage)
        target.unlink(missing_ok=True)
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)
        marker = {k: v for k, v in source_marker.items() if k not in ("key", "created_at")}
        atomic_write_json(
            self._marker_path(stage),
            {
                "key": stage.key,
                "sha256": source_marker.get("sha256"),
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                **marker,
                **meta,
            },
        )
        return self.stage_dir(stage)

    def load_stage(self, stage) -> dict:
        """The finished stage's weights, checked against the sha256 in its marker."""
        from umdbench.run.checkpoint import load_artifact

        return load_artifact(self.weights_path(stage), self.marker(stage).get("sha256"))

    # -- runs --------------------------------------------------------------------------------------
    def run_dir(self, cell_key: str) -> Path:
        return self.work_dir / RUNS_DIR / cell_key[:16]

    def eval_dir(self, cell_key: str) -> Path:
        return self.run_dir(cell_key) / EVAL_DIR

    def write_run_config(self, run, stages: list) -> Path:
        """``runs/<cell key>/config.json``: the cell's resolved config and stage plan."""
        run_dir = self.run_dir(stages[-1].key)
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            run_dir / RUN_CONFIG_FILE,
            {
                "config": run.config,
                "config_hash": run.hash,
                "plan": [{"title": s.title, "key": s.key, "dir": s.dirname} for s in stages],
            },
        )
        return run_dir

    @property
    def reference_points_path(self) -> Path:
        """The no-image baselines of the datasets evaluated here (:mod:`umdbench.results.reference_points`)."""
        return layout.reference_points_path(self.work_dir)

    @property
    def overlap_path(self) -> Path:
        """The train/test overlap report of the corpora and test splits evaluated here
        (``umdbench overlap``; :mod:`umdbench.data.overlap`), read by the boards."""
        return layout.overlap_report_path(self.work_dir)

    def predictions_path(self, cell_key: str) -> Path:
        return self.run_dir(cell_key) / PREDICTIONS_FILE

    def write_predictions(self, cell_key: str, arrays) -> Path | None:
        """``runs/<cell key>/predictions.npz`` from an evaluation's per-example arrays; None (and no
        file, not even a stale one) when the task recorded none."""
        path = self.predictions_path(cell_key)
        if arrays is None:
            path.unlink(missing_ok=True)
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, predictions_file.encode(arrays))
        return path

    def predictions_ref(self, cell_key: str) -> dict | None:
        """What a store row keeps of the cell's predictions file: its path relative to the store's
        folder, sha256, number of examples and field names; None when there is no file."""
        path = self.predictions_path(cell_key)
        if not path.is_file():
            return None
        data = path.read_bytes()
        arrays = predictions_file.decode(data)
        return {
            "path": path.relative_to(self.store_path.parent).as_posix(),
            "sha256": predictions_file.sha256(data),
            "n": int(len(arrays["index"])),
            "fields": sorted(arrays),
        }

    def result_path(self, cell_key: str) -> Path:
        return self.run_dir(cell_key) / RESULT_FILE

    def write_result(self, row: dict) -> Path:
        """``runs/<cell key>/result.json``: the stored row without its config."""
        path = self.result_path(row["cell_key"])
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {k: v for k, v in row.items() if k != "config"})
        return path

    def ensure_result(self, row: dict) -> Path:
        """``result.json`` of a stored row, written again if it went missing (a store copied
        without its runs/ folder, a cleaned work dir), and ``config.json`` beside it written again
        from the row when it is missing, garbled or describes another config."""
        self._ensure_run_config(row)
        path = self.result_path(row["cell_key"])
        return path if path.is_file() else self.write_result(row)

    def _ensure_run_config(self, row: dict) -> None:
        path = self.run_dir(row["cell_key"]) / RUN_CONFIG_FILE
        try:
            stored = json.loads(path.read_text())
            if (
                isinstance(stored, dict)
                and stored.get("config_hash") == row.get("config_hash")
                and isinstance(stored.get("config"), dict)
                and isinstance(stored.get("plan"), list)
            ):
                return
        except (OSError, ValueError):
            pass
        config = row.get("config") or {}
        kinds = [("pretrain", config["pretrain"].get("type"))] if isinstance(config.get("pretrain"), dict) else []
        kinds += [("tune", t.get("type")) for t in config.get("tune") or [] if isinstance(t, dict)]
        keys = list(row.get("stage_keys") or [])
        plan = (
            [
                {"title": f"{kind} {name}", "key": key, "dir": f"{kind}-{name}-{key[:16]}"}
                for (kind, name), key in zip(kinds, keys)
            ]
            if len(kinds) == len(keys)
            else [{"title": None, "key": key, "dir": None} for key in keys]
        )
        plan.append({"title": "evaluate", "key": row["cell_key"], "dir": f"eval-eval-{row['cell_key'][:16]}"})
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, {"config": config, "config_hash": row.get("config_hash"), "plan": plan})
        except OSError:
            pass  # a read-only work dir keeps the row; config.json is a convenience copy of it

    # -- copying results between work dirs ----------------------------------------------------------
    def copy_results_from(self, src: "Workspace") -> dict[str, int]:
        """Copy what leaderboards read from the work dir ``src`` into this one: its store rows (a row
        already here is kept, never replaced), suite membership (``src``'s entries win), each row's
        per-example predictions, the no-image reference points and the train/test overlap report
        (``src``'s replaces one here). Trained stages are not copied.

        A copied folder renders the same boards as ``src`` (``umdbench leaderboard --work-dir``) and
        a sweep into it skips every copied cell, so a sweep can go on after its machine is gone from
        a results folder committed with the boards. Files are written before the rows that name
        them, so a copy killed half-way leaves no row pointing at a missing file; running it again
        finishes it. Returns counts: ``rows`` copied, ``kept`` (already here), ``predictions`` files
        copied, ``unverified`` rows whose predictions file was missing in ``src`` or failed its checksum
        (copied without the file: their boards show no interval, as in ``src``)."""
        from umdbench.errors import StoreError
        from umdbench.results.reference_points import load_reference_points

        if not src.store_path.is_file():
            raise StoreError(
                f"{src.store_path}: no results store to copy from; fix: pass the work dir (or results "
                f"folder) that holds results.sqlite."
            )
        if src.store_path.resolve() == self.store_path.resolve():
            raise StoreError(f"{src.store_path}: source and destination are the same store; fix: pass another --to.")
        counts = {"rows": 0, "kept": 0, "predictions": 0, "unverified": 0}
        rows = src.store.rows()
        for row in rows:
            ref = row.get("predictions")
            if not ref or self.store.get(row["cell_key"]) is not None:
                continue
            data, _ = predictions_file.read_for_row(row, src.store_path.parent)
            if data is None:
                counts["unverified"] += 1
                continue
            dest = self.predictions_path(row["cell_key"])
            dest.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(dest, data)
            counts["predictions"] += 1
        for row in rows:
            counts["rows" if self.store.add(row) else "kept"] += 1
        self.store.record_membership(src.store.membership())
        points = load_reference_points(src.reference_points_path)
        if points:
            atomic_write_json(
                self.reference_points_path, {**load_reference_points(self.reference_points_path), **points}
            )
        if src.overlap_path.is_file():
            atomic_write_bytes(self.overlap_path, src.overlap_path.read_bytes())
        return counts

    # -- locks -------------------------------------------------------------------------------------
    def stage_lock(self, stage, on_wait: Callable[[Path], None] | None = None):
        """Held while this process trains ``stage``: a second process (same work dir, this machine
        or a shared file system with working locks) waits, then finds the stage trained."""
        return self._hold(self.stage_dir(stage) / STAGE_LOCK_FILE, on_wait)

    def cell_lock(self, cell_key: str, on_wait: Callable[[Path], None] | None = None):
        """Held while this process evaluates a cell and stores its row."""
        return self._hold(self.run_dir(cell_key) / CELL_LOCK_FILE, on_wait)

    @staticmethod
    @contextmanager
    def _hold(path: Path, on_wait: Callable[[Path], None] | None) -> Iterator[None]:
        from filelock import FileLock, Timeout

        path.parent.mkdir(parents=True, exist_ok=True)
        # one lock object per file in this process, so holding it again (run_cell -> store_result)
        # re-enters instead of waiting for itself; the OS drops the lock of a killed process
        lock = FileLock(path, is_singleton=True)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            if on_wait is not None:
                on_wait(path)
            lock.acquire()
        try:
            yield
        finally:
            lock.release()

    # -- caches ------------------------------------------------------------------------------------
    @property
    def image_cache_dir(self) -> Path:
        return self.work_dir / IMAGE_CACHE_DIR

    @property
    def plan_cache_path(self) -> Path:
        """The dry-run replay cache (:mod:`umdbench.cli.plancache`)."""
        return layout.plan_cache_path(self.work_dir)

    @property
    def planning_cache_path(self) -> Path:
        """The data catalog's planning cache (:class:`umdbench.data.catalog.DataCatalog`)."""
        return layout.planning_cache_path(self.work_dir)

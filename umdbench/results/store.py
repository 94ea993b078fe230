"""The results store: one SQLite file (``results.sqlite``) with two tables.

``runs``: one row per finished cell (cell key), written in one transaction. SQLite commits
atomically, so a run killed at any point leaves either the whole row or none; rows are never
updated in place, so a finished result cannot be damaged by a later run.

``suite_cells``: suite membership. A row is keyed by its cell key, so a cell that two suites share
(UMD on VQA-RAD is both Table 1's "UMD" and Table 4's row 8) is trained and stored once. The sweep
records which cell key each (suite, cell name, dataset, preset, seed) points at and whether its
data was unavailable or it failed; leaderboards read it.
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from umdbench.errors import StoreError

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    cell_key TEXT PRIMARY KEY,
    suite TEXT, cell_name TEXT,
    pretrain TEXT NOT NULL, tune TEXT NOT NULL, dataset TEXT NOT NULL,
    preset TEXT NOT NULL, seed INTEGER NOT NULL,
    metrics TEXT NOT NULL,          -- JSON: metric name -> value (percent)
    config TEXT NOT NULL,           -- JSON: the fully resolved config
    config_hash TEXT NOT NULL,
    stage_keys TEXT NOT NULL,       -- JSON list, pre-training first
    git_commit TEXT, packages TEXT, data_fingerprint TEXT,
    wall_time_s REAL, device TEXT, created_at TEXT NOT NULL,
    skipped TEXT,                   -- JSON: dataset -> records left out (on_error skip, malformed)
    plugins TEXT,                   -- JSON: "kind:name" -> the package (and version) that provided it
    predictions TEXT,               -- JSON: {path, sha256, n, fields} of runs/<cell>/predictions.npz, or NULL
    schedule TEXT                   -- JSON: stage key -> how it was trained (processes, micro-batches, exceptions)
);
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
COLUMNS = (
    "cell_key",
    "suite",
    "cell_name",
    "pretrain",
    "tune",
    "dataset",
    "preset",
    "seed",
    "metrics",
    "config",
    "config_hash",
    "stage_keys",
    "git_commit",
    "packages",
    "data_fingerprint",
    "wall_time_s",
    "device",
    "created_at",
    "skipped",
    "plugins",
    "predictions",
    "schedule",
)
JSON_COLUMNS = ("metrics", "config", "stage_keys", "packages", "skipped", "plugins", "predictions", "schedule")

# The store's layout, kept in SQLite's user_version. 1: the first released layout (user_version
# never set, so read as 0 too); 2: runs.skipped; 3: runs.plugins; 4: runs.predictions (older rows
# keep NULL: they render without intervals); 5: runs.schedule (older rows keep NULL: not recorded).
# Older stores are migrated when opened; a store from a newer umdbench is refused rather than
# written in a layout it does not know.
SCHEMA_VERSION = 5
# columns added since version 1: (version, table, column, SQL type)
MIGRATIONS = [
    (2, "runs", "skipped", "TEXT"),
    (3, "runs", "plugins", "TEXT"),
    (4, "runs", "predictions", "TEXT"),
    (5, "runs", "schedule", "TEXT"),
]
MEMBERSHIP_COLUMNS = ("suite", "cell_name", "dataset", "preset", "seed", "cell_key", "status", "detail", "overrides")


@dataclass
class Membership:
    """Which stored cell a suite cell points at, and its state in the latest sweep of the suite."""

    suite: str
    cell_name: str
    dataset: str
    preset: str
    seed: int
    cell_key: str | None
    status: str
    detail: str = ""
    overrides: list = field(default_factory=list)


class ResultsStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        from filelock import FileLock

        try:
            # two processes opening a new or older store at once would race on creating tables, the
            # switch to WAL and the migration ("database is locked"): one at a time sets it up
            with FileLock(str(self.path) + ".init.lock", timeout=120), self._connect() as con:
                # WAL (readers never block the writer) is a property of the file: set once, here
                con.execute("PRAGMA journal_mode=WAL")
                con.executescript(SCHEMA)
                self._migrate(con)
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise StoreError(
                    f"results store {self.path} is not a readable SQLite database ({exc}). Move it aside and run "
                    f"again to start a new store; `umdbench leaderboard --store OLD` can still read a healthy copy."
                ) from exc
            raise StoreError(
                f"results store {self.path} stayed locked by another process for too long ({exc}); "
                f"wait for the other umdbench run to finish and run again."
            ) from exc
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"results store {self.path} is not a readable SQLite database ({exc}). Move it aside and run "
                f"again to start a new store; `umdbench leaderboard --store OLD` can still read a healthy copy."
            ) from exc

    def _migrate(self, con: sqlite3.Connection) -> None:
        version = con.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"results store {self.path} has schema version {version}, written by a newer umdbench than this "
                f"one (which knows versions up to {SCHEMA_VERSION}); fix: upgrade umdbench, or pass another "
                f"--work-dir / --store so that this store is left as it is."
            )
        for _, table, column, sql_type in MIGRATIONS:
            have = {row[1] for row in con.execute(f"PRAGMA table_info({table})")}
            if column not in have:  # CREATE TABLE IF NOT EXISTS kept an older table as it was
                con.execute(f"ALTER TABLE {table} ADD COLUMN {column} {sql_type}")
        if version != SCHEMA_VERSION:
            con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @property
    def schema_version(self) -> int:
        with self._connect() as con:
            return con.execute("PRAGMA user_version").fetchone()[0]

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection for one transaction: committed on success, rolled back on error, always closed."""
        con = sqlite3.connect(self.path, timeout=60)
        try:
            with con:
                yield con
        finally:
            con.close()

    def get(self, cell_key: str) -> dict | None:
        with self._connect() as con:
            row = con.execute(f"SELECT {', '.join(COLUMNS)} FROM runs WHERE cell_key = ?", (cell_key,)).fetchone()
        return self._decode(row) if row else None

    def add(self, row: dict) -> bool:
        """Insert a finished cell; returns False (and writes nothing) if the key is already stored."""
        row = dict(row)
        row.setdefault("created_at", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        row.setdefault("skipped", {})
        row.setdefault("plugins", {})
        row.setdefault("predictions", None)
        row.setdefault("schedule", None)
        for col in JSON_COLUMNS:
            row[col] = json.dumps(row[col], sort_keys=True)
        values = [row.get(col) for col in COLUMNS]
        with self._connect() as con:
            cur = con.execute(
                f"INSERT OR IGNORE INTO runs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})", values
            )
            return cur.rowcount == 1

    def rows(self, suite: str | None = None) -> list[dict]:
        query = f"SELECT {', '.join(COLUMNS)} FROM runs"
        args: tuple = ()
        if suite is not None:
            query += " WHERE suite = ?"
            args = (suite,)
        with self._connect() as con:
            return [self._decode(r) for r in con.execute(query + " ORDER BY created_at", args)]

    def record_membership(self, entries: list[Membership]) -> None:
        """Insert or replace membership rows in one transaction (the latest sweep of a suite wins)."""
        if not entries:
            return
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        with self._connect() as con:
            con.executemany(
                f"INSERT OR REPLACE INTO suite_cells ({', '.join(MEMBERSHIP_COLUMNS)}, updated_at) "
                f"VALUES ({', '.join('?' * (len(MEMBERSHIP_COLUMNS) + 1))})",
                [
                    (
                        m.suite,
                        m.cell_name,
                        m.dataset,
                        m.preset,
                        int(m.seed),
                        m.cell_key,
                        m.status,
                        m.detail,
                        json.dumps(m.overrides, default=str),
                        now,
                    )
                    for m in entries
                ],
            )

    def membership(self, suite: str | None = None) -> list[Membership]:
        """Membership rows, of one suite or of all."""
        query = f"SELECT {', '.join(MEMBERSHIP_COLUMNS)} FROM suite_cells"
        args: tuple = ()
        if suite is not None:
            query += " WHERE suite = ?"
            args = (suite,)
        with self._connect() as con:
            rows = con.execute(query, args).fetchall()
        return [Membership(*row[:8], overrides=json.loads(row[8]) if row[8] else []) for row in rows]

    @staticmethod
    def _decode(row) -> dict:
        out = dict(zip(COLUMNS, row))
        for col in JSON_COLUMNS:
            out[col] = json.loads(out[col]) if out[col] is not None else None
        if out["schedule"] is None:  # a row from before schema 5: absent, so older exports stay byte-identical
            del out["schedule"]
        return out

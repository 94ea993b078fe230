"""The results store: one SQLite row per finished cell (cell key), written in one transaction.

SQLite commits atomically, so a run killed at any point leaves either the whole row or none; rows
are never updated in place, so a finished result cannot be damaged by a later run.
"""
from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

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
    wall_time_s REAL, device TEXT, created_at TEXT NOT NULL
);
"""
COLUMNS = ("cell_key", "suite", "cell_name", "pretrain", "tune", "dataset", "preset", "seed", "metrics", "config",
           "config_hash", "stage_keys", "git_commit", "packages", "data_fingerprint", "wall_time_s", "device", "created_at")
JSON_COLUMNS = ("metrics", "config", "stage_keys", "packages")


class ResultsStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._connect() as con:
                con.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"results store {self.path} is not a readable SQLite database ({exc}). Move it aside and run "
                f"again to start a new store; `umdbench leaderboard --store OLD` can still read a healthy copy."
            ) from exc

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=60)
        con.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
        return con

    def get(self, cell_key: str) -> dict | None:
        with self._connect() as con:
            row = con.execute(f"SELECT {', '.join(COLUMNS)} FROM runs WHERE cell_key = ?", (cell_key,)).fetchone()
        return self._decode(row) if row else None

    def add(self, row: dict) -> bool:
        """Insert a finished cell; returns False (and writes nothing) if the key is already stored."""
        row = dict(row)
        row.setdefault("created_at", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        for col in JSON_COLUMNS:
            row[col] = json.dumps(row[col], sort_keys=True)
        values = [row.get(col) for col in COLUMNS]
        with self._connect() as con:
            cur = con.execute(
                f"INSERT OR IGNORE INTO runs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})", values)
            return cur.rowcount == 1

    def rows(self, suite: str | None = None) -> list[dict]:
        query = f"SELECT {', '.join(COLUMNS)} FROM runs"
        args: tuple = ()
        if suite is not None:
            query += " WHERE suite = ?"
            args = (suite,)
        with self._connect() as con:
            return [self._decode(r) for r in con.execute(query + " ORDER BY created_at", args)]

    @staticmethod
    def _decode(row) -> dict:
        out = dict(zip(COLUMNS, row))
        for col in JSON_COLUMNS:
            out[col] = json.loads(out[col]) if out[col] is not None else None
        return out

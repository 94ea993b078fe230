"""Results store: atomic rows, no overwrite, survives a killed writer."""

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from umdbench.errors import StoreError
from umdbench.results.store import Membership, ResultsStore


def _row(key, seed=0, overall=50.0):
    return {
        "cell_key": key,
        "suite": None,
        "cell_name": None,
        "pretrain": "mr",
        "tune": "direct",
        "dataset": "medsynth",
        "preset": "tiny",
        "seed": seed,
        "metrics": {"overall": overall},
        "config": {"x": 1},
        "config_hash": "h",
        "stage_keys": ["a"],
        "git_commit": "c",
        "packages": {"torch": "x"},
        "data_fingerprint": "fp",
        "wall_time_s": 1.0,
        "device": "cpu",
    }


def test_add_get_and_no_overwrite(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    assert store.add(_row("k1", overall=61.0))
    assert not store.add(_row("k1", overall=99.0))  # a finished cell is never overwritten
    assert store.get("k1")["metrics"] == {"overall": 61.0}
    assert store.get("missing") is None
    assert [r["cell_key"] for r in store.rows()] == ["k1"]


def test_corrupt_store_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "r.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a readable SQLite database"):
        ResultsStore(bad)


def test_writer_killed_mid_stream_leaves_whole_rows_only(tmp_path):
    path = tmp_path / "r.sqlite"
    ResultsStore(path)
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))!r})
        from umdbench.results.store import ResultsStore
        from tests.results.test_store import _row
        store = ResultsStore({str(path)!r})
        i = 0
        while True:
            store.add(_row(f"k{{i}}", overall=float(i)))
            i += 1
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 30
    while time.time() < deadline:
        time.sleep(0.3)
        with sqlite3.connect(path) as con:
            if con.execute("SELECT COUNT(*) FROM runs").fetchone()[0] > 20:
                break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    rows = ResultsStore(path).rows()
    assert len(rows) > 20
    for row in rows:  # every row is complete and decodes
        assert row["metrics"]["overall"] == float(row["cell_key"][1:])
        assert row["config"] == {"x": 1}
    with sqlite3.connect(path) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_membership_lives_in_the_same_store(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    store.add(_row("k1"))
    store.record_membership(
        [
            Membership("t4", "1 none", "vqa-rad", "tiny", 0, "k1", "planned", overrides=["a.b=1"]),
            Membership("t4", "1 none", "slake", "tiny", 0, None, "data unavailable", "no slake/"),
            Membership("t1", "UMD", "vqa-rad", "tiny", 0, "k1", "planned"),
        ]
    )
    # the latest sweep of a suite wins: a row with the same (suite, cell, dataset, preset, seed) replaces
    store.record_membership([Membership("t4", "1 none", "vqa-rad", "tiny", 0, "k1", "done")])
    t4 = {(m.dataset, m.status, m.cell_key, m.detail) for m in store.membership("t4")}
    assert t4 == {("vqa-rad", "done", "k1", ""), ("slake", "data unavailable", None, "no slake/")}
    assert len(store.membership()) == 3 and store.membership("t1")[0].overrides == []
    store.record_membership([])  # nothing to write is not an error
    with sqlite3.connect(tmp_path / "r.sqlite") as con:
        assert {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")} >= {
            "runs",
            "suite_cells",
        }


def test_an_older_store_gains_the_plugins_column(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as con:  # the first release's table, without `plugins`
        con.execute(
            "CREATE TABLE runs (cell_key TEXT PRIMARY KEY, suite TEXT, cell_name TEXT, pretrain TEXT NOT NULL, "
            "tune TEXT NOT NULL, dataset TEXT NOT NULL, preset TEXT NOT NULL, seed INTEGER NOT NULL, "
            "metrics TEXT NOT NULL, config TEXT NOT NULL, config_hash TEXT NOT NULL, stage_keys TEXT NOT NULL, "
            "git_commit TEXT, packages TEXT, data_fingerprint TEXT, wall_time_s REAL, device TEXT, "
            "created_at TEXT NOT NULL)"
        )
        con.execute(
            "INSERT INTO runs VALUES ('k1', NULL, NULL, 'none', 'direct', 'medsynth', 'tiny', 0, '{}', '{}', "
            "'h', '[]', NULL, NULL, NULL, 1.0, NULL, '2026-01-01')"
        )
    store = ResultsStore(path)
    (old,) = store.rows()
    assert old["cell_key"] == "k1" and old["plugins"] is None

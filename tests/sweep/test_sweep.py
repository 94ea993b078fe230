"""Sweeps: planning a grid into a DAG of unique stages, skipping finished cells, resuming after a kill."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from tests.support import REPO, SHARED, TINY, umdbench_here, write_plugin
from umdbench.cli import main
from umdbench.data.catalog import DataCatalog
from umdbench.plan.config import CellSpec
from umdbench.plan.suites import get_suite
from umdbench.plugin import get_registries
from umdbench.results.store import ResultsStore
from umdbench.sweep.planning import fit_overrides, plan_sweep, topological


@pytest.fixture
def plugin_registries(tmp_path):
    path = write_plugin(tmp_path)
    yield path, get_registries((str(path),))
    get_registries(reload=True)


def _overrides(items):
    from umdbench.plan.config import parse_override

    return tuple(parse_override(o) for o in items)


def test_fit_overrides_expands_and_drops(plugin_registries):
    _, registries = plugin_registries
    cell = CellSpec(
        "none",
        ("tdcalib",),
        "medsynth",
        overrides=_overrides(["pretrain.train.max_iters=2", "tune.*.train.max_iters=3", "tune.2.train.lr=1"]),
    )
    fitted, dropped = fit_overrides(cell, registries)
    # tdcalib is unsupervised: the chain gets a direct stage appended, so tune.* covers two stages
    assert fitted.overrides == (("tune.0.train.max_iters", 3), ("tune.1.train.max_iters", 3))
    assert set(dropped) == {"pretrain.train.max_iters", "tune.2.train.lr"}


def test_tune_wildcard_skips_stages_without_the_key(plugin_registries):
    _, registries = plugin_registries
    cell = CellSpec(
        "none",
        ("tdcalib", "gmcoord"),
        "medsynth",
        overrides=_overrides(["tune.*.pooling=mean", "tune.*.train.lr=0.001"]),
    )
    fitted, _ = fit_overrides(cell, registries)
    # TD-Calib has no task head, so no pooling key: only gmcoord (stage 1) gets it; train is everywhere
    assert fitted.overrides == (("tune.1.pooling", "mean"), ("tune.0.train.lr", 0.001), ("tune.1.train.lr", 0.001))
    # a key no stage has still reaches every stage, so resolving names the typo
    typo = CellSpec("none", ("direct",), "medsynth", overrides=_overrides(["tune.*.poolin=mean"]))
    assert fit_overrides(typo, registries)[0].overrides == (("tune.0.poolin", "mean"),)


def test_pretrain_wildcard_reaches_only_strategies_with_the_key():
    registries = get_registries()
    overrides = _overrides(["pretrain.*.alpha=0.2", "pretrain.*.alhpa=0.3"])
    mr, _ = fit_overrides(CellSpec("mr", ("direct",), "medsynth", overrides=overrides), registries)
    mae, dropped = fit_overrides(CellSpec("mae", ("direct",), "medsynth", overrides=overrides), registries)
    assert mr.overrides == (("pretrain.alpha", 0.2), ("pretrain.alhpa", 0.3))
    # MAE has no alpha (MR-Pretrain does): skipped; a key no strategy has is kept so the typo is reported
    assert mae.overrides == (("pretrain.alhpa", 0.3),) and dropped == ("pretrain.*.alpha",)


def test_plan_dedupes_shared_stages(plugin_registries):
    _, registries = plugin_registries
    suite = get_suite(registries, "mini-ablation")
    specs = suite.cell_specs(seeds=2, user_overrides=_overrides(TINY))
    plan = plan_sweep(specs, registries, DataCatalog(registries), suite=suite.name)
    c = plan.counts()
    assert c["cells"] == c["pending"] == 10 and c["unavailable"] == 0
    # per seed: rows 2, 4, 5 share one MR pre-training; 5 has linear then direct
    assert c["pretrain_uses"] == 6 and c["unique_pretrains"] == 2
    assert c["stage_uses"] == 2 * (1 + 2 + 1 + 2 + 3) == 18
    assert c["unique_stages"] == 2 * 7 and c["saved"] == 4
    keys = [s.key for s in plan.stages]
    assert len(keys) == len(set(keys))
    position = {k: i for i, k in enumerate(keys)}
    for s in plan.stages:  # topological: a parent before its children
        if s.parent is not None:
            assert position[s.parent.key] < position[s.key]
    assert [s.key for s in topological(list(reversed(plan.stages)))] != []
    text = plan.describe()
    assert "14 unique (4 saved)" in text and "pre-trainings: 2 unique for 6 cells" in text


def test_duplicate_cells_run_once(plugin_registries):
    _, registries = plugin_registries
    a = CellSpec("none", ("direct",), "medsynth", overrides=_overrides(TINY), suite="s", cell_name="a")
    b = CellSpec("none", ("direct",), "medsynth", overrides=_overrides(TINY), suite="s", cell_name="b")
    plan = plan_sweep([a, b], registries, suite="s")
    assert [c.status for c in plan.cells] == ["pending", "duplicate"]
    assert plan.counts()["unique_stages"] == 1


def test_unavailable_data_is_listed_not_fatal(plugin_registries, tmp_path, monkeypatch, capsys):
    path, _ = plugin_registries
    monkeypatch.delenv("UMDBENCH_DATA_ROOT", raising=False)
    argv = [
        "sweep",
        "--suite",
        "mini-unavailable",
        "--plugin-path",
        str(path),
        "--work-dir",
        str(tmp_path / "w"),
        "--dry-run",
        "--cfg-options",
        *TINY,
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "2 cells (1 to run, 0 finished, 1 data unavailable)" in out
    assert "[data unavailable] 1 none: none / direct / vqa-rad" in out
    assert "no data root was given" in out
    assert not (tmp_path / "w").exists()  # a dry run writes nothing


def test_an_unavailable_cell_is_recorded_without_the_machines_path(plugin_registries, tmp_path):
    """The membership row of a cell whose data is missing says where it looked as <data-root>/...:
    the store and the board beside it never carry the path of the machine that planned them."""
    from umdbench.run.workspace import Workspace
    from umdbench.sweep.planning import membership_entries

    registries = plugin_registries[1]
    root = tmp_path / "no-data-here"
    spec = CellSpec("none", ("direct",), "vqa-rad", data_root=str(root), suite="s", cell_name="a")
    plan = plan_sweep([spec], registries, suite="s")
    assert plan.cells[0].status == "data unavailable" and str(root) in plan.cells[0].reason
    store = Workspace(tmp_path / "w").store
    store.record_membership(membership_entries(plan))
    (row,) = store.membership("s")
    assert row.status == "data unavailable" and "<data-root>" in row.detail and str(tmp_path) not in row.detail


@pytest.mark.realdata
def test_table4_dry_run_shares_stages(capsys, tmp_path):
    if not SHARED.is_dir():
        pytest.skip(f"real datasets not found at {SHARED}")
    get_registries(reload=True)
    assert (
        main(
            [
                "sweep",
                "--suite",
                "table4",
                "--dry-run",
                "--seeds",
                "1",
                "--data-root",
                str(SHARED),
                "--work-dir",
                str(tmp_path),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "sweep of suite table4: 24 cells" in out
    assert "inferred" in out
    line = next(x for x in out.splitlines() if x.startswith("sharing:"))
    planned = int(line.split(" over ")[1].split(" planned")[0])
    uses, unique = int(line.split()[1]), int(line.split("-> ")[1].split()[0])
    pre_unique = int(line.split("pre-trainings: ")[1].split()[0])
    pre_uses = int(line.split(" for ")[1].split()[0])
    assert unique < uses
    if planned:
        assert pre_unique < pre_uses or pre_uses == 0


# ---------------------------------------------------------------------------------------------
# real (tiny) sweeps in a subprocess: kill, resume, skip
# ---------------------------------------------------------------------------------------------
def _rows(work_dir):
    db = work_dir / "results.sqlite"
    if not db.is_file():
        return []
    con = sqlite3.connect(db, timeout=30)
    try:
        return con.execute("SELECT cell_key, cell_name, seed, suite, created_at FROM runs").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        con.close()


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    """Start a sweep, SIGKILL it after its first finished cell, start it again to the end."""
    tmp = tmp_path_factory.mktemp("resume")
    plugin, work = write_plugin(tmp), tmp / "work"
    argv = ["sweep", "--suite", "mini", "--plugin-path", str(plugin), "--work-dir", str(work), "--cfg-options", *TINY]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "umdbench.cli", *argv],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None and not _rows(work):
            time.sleep(0.5)
        killed = proc.poll() is None
        os.killpg(proc.pid, signal.SIGKILL)  # the whole session: the sweep and any data-loader workers
    finally:
        proc.wait()
    before = _rows(work)
    resumed = umdbench_here(argv)  # in this process: only the killed sweep's process is under test
    return {"argv": argv, "work": work, "killed": killed, "before": before, "resumed": resumed}


@pytest.mark.slow
def test_resume_after_sigkill_loses_and_duplicates_nothing(killed_and_resumed):
    r = killed_and_resumed
    assert r["killed"], "the sweep finished before it could be killed"
    assert r["resumed"].returncode == 0, r["resumed"].stdout[-3000:] + r["resumed"].stderr[-3000:]
    rows = _rows(r["work"])
    assert len(rows) == 3 and len({row[0] for row in rows}) == 3
    assert {row[1] for row in rows} == {"1 none", "2 mr", "4 mr+gm"}
    assert all(row[3] == "mini" and row[2] == 0 for row in rows)
    # rows finished before the kill are kept as they were (not re-run, not rewritten)
    assert set(r["before"]) <= set(rows)
    assert len(r["before"]) >= 1
    out = r["resumed"].stdout
    assert f"{len(r['before'])} finished" in out
    members = ResultsStore(r["work"] / "results.sqlite").membership("mini")
    assert {m.status for m in members} == {"done"} and len(members) == 3
    row = ResultsStore(r["work"] / "results.sqlite").get(rows[0][0])
    assert row["git_commit"] and row["device"] and row["packages"] and row["config"]["cell"]["suite"] == "mini"


@pytest.mark.slow
def test_finished_sweep_is_skipped(killed_and_resumed):
    r = killed_and_resumed
    before = _rows(r["work"])
    again = umdbench_here(r["argv"])
    assert again.returncode == 0, again.stderr[-2000:]
    assert "nothing to run: every available cell is finished" in again.stdout
    assert "(0 to run, 3 finished" in again.stdout
    assert _rows(r["work"]) == before


def test_cells_whose_images_are_missing_are_unavailable_before_training(tmp_path):
    # the test split names images that are not there: the cell is reported, not trained for nothing
    from types import SimpleNamespace

    from umdbench.api import DatasetPlugin, Record
    from umdbench.data.catalog import missing_data

    class HalfThere(DatasetPlugin):
        def __init__(self, root=None, on_error="raise", **options):
            super().__init__(tmp_path, on_error, **options)

        def records(self, split):
            return [Record(uid=f"{split}/{i}", image=str(self.root / f"{split}{i}.png"), text="q") for i in range(3)]

    for i in range(3):
        (tmp_path / f"train{i}.png").write_bytes(b"")
    from umdbench.plugin import Registries

    registries = Registries()
    registries.dataset.register("half", HalfThere)
    catalog = DataCatalog(registries)
    data = {"type": "half", "root": str(tmp_path), "options": {}, "on_error": "raise"}
    train, test = (SimpleNamespace(data={**data, "split": s}) for s in ("train", "test"))
    assert missing_data([train], catalog) is None
    reason = missing_data([train, test], catalog)
    assert "3 image file(s) of half:test (3 records) do not exist" in reason and "test0.png" in reason
    assert "umdbench data check half" in reason
    # on_error "skip" drops such records instead, so nothing is missing
    assert missing_data([SimpleNamespace(data={**data, "on_error": "skip", "split": "test"})], catalog) is None

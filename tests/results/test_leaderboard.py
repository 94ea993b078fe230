"""Suite leaderboards from a small hand-made results store: ours beside the paper, plots, index."""

import subprocess
import sys

import pytest

from umdbench.plan.suites import all_suites, get_suite
from umdbench.plugin import get_registries
from umdbench.results.leaderboard import write_leaderboards
from umdbench.results.store import Membership, ResultsStore


def boards(store, out, suite=None, reference_points=None):
    """What `umdbench leaderboard [--suite NAME]` writes: the suites resolved from the registries
    (the results package never loads them itself)."""
    registries = get_registries()
    suites = [get_suite(registries, suite)] if suite else all_suites(registries)
    return write_leaderboards(store, out, suites, named=suite is not None, reference_points=reference_points)


def _row(suite, cell_name, dataset, seed, metrics, pretrain="mr", tune="direct", preset="tiny", key=None):
    return {
        "cell_key": key or f"{suite}-{cell_name}-{dataset}-{seed}-{preset}",
        "suite": suite,
        "cell_name": cell_name,
        "pretrain": pretrain,
        "tune": tune,
        "dataset": dataset,
        "preset": preset,
        "seed": seed,
        "metrics": metrics,
        "config": {"dataset": {"root": f"/data/{dataset}"}},
        "config_hash": "h",
        "stage_keys": [],
        "git_commit": "0123456789abcdef-dirty",
        "packages": {"torch": "2"},
        "data_fingerprint": "fp" + dataset,
        "wall_time_s": 36.0,
        "device": "cpu: test, 2 threads",
    }


@pytest.fixture
def store(tmp_path):
    get_registries(reload=True)
    s = ResultsStore(tmp_path / "results.sqlite")
    # table4 on vqa-rad: rows 1 and 8 with two seeds, row 5 with one
    for seed, (o, c, a) in enumerate([(60.0, 70.0, 66.0), (62.0, 72.0, 68.0)]):
        s.add(_row("table4", "1 none", "vqa-rad", seed, {"open": o, "closed": c, "overall": a}, pretrain="none"))
        s.add(
            _row(
                "table4",
                "8 all",
                "vqa-rad",
                seed,
                {"open": o + 5, "closed": c + 5, "overall": a + 5},
                tune="tdcalib+gmcoord",
            )
        )
    s.add(_row("table4", "5 TD-Calib+GM-Coord", "vqa-rad", 0, {"open": 1.0, "closed": 2.0, "overall": 3.0}))
    # a cell of table1 that table4 shares (same key): membership points table4 "2 MR-Pretrain" at it
    s.add(_row("table1", "UMD", "vqa-rad", 0, {"open": 50.0, "closed": 50.0, "overall": 50.0}, key="shared"))
    s.record_membership(
        [
            Membership("table4", "2 MR-Pretrain", "vqa-rad", "tiny", 0, "shared", "done"),
            Membership(
                "table4",
                "1 none",
                "slake",
                "tiny",
                0,
                None,
                "data unavailable",
                "slake: the folder /x/slake does not exist",
            ),
            Membership("table1", "UMD", "vqa-rad", "tiny", 0, "shared", "done", overrides=["tune.*.train.max_iters=4"]),
        ]
    )
    # fig5: alpha sweep on two datasets
    for alpha, base in ((0.2, 40.0), (0.5, 45.0), (0.8, 42.0)):
        for dataset in ("vqa-rad", "slake"):
            s.add(_row("fig5", f"UMD alpha={alpha}", dataset, 0, {"open": base, "closed": base, "overall": base}))
    return s


def test_table4_markdown(store, tmp_path):
    out = tmp_path / "results"
    written = boards(store, out, suite="table4")
    assert {p.name for p in written} >= {"table4.md", "table4.png", "README.md"}
    md = (out / "table4.md").read_text()
    assert md.startswith("# Table 4: ablation on medical VQA")
    assert "61.00 ± 1.41" in md  # open of row 1 over two seeds
    assert "**66.00 ± 1.41**" in md  # best open (row 8) in bold
    assert "| 65.36 " in md and "-4.36" in md  # paper value of row 1 open and the difference
    assert "**69.27**" in md  # best paper open (rows 2 and 7)
    assert "5 TD-Calib+GM-Coord †" in md and "inferred" in md
    assert "3 TD-Calib ‡" in md and "appends a direct stage" in md
    assert "| 50.00 " in md  # row 2 found through membership (cell stored under table1)
    assert "data unavailable" in md and "/x/slake does not exist" in md
    assert "not run" in md  # rows without any result
    for item in (
        "**preset**: `tiny`",
        "**data**:",
        "fingerprint fpvqa-rad",
        "**compute**: cpu: test",
        "**seeds**: 0, 1",
        "**commits**: `0123456789ab-dirty`",
    ):
        assert item in md, item
    assert (out / "table4.png").read_bytes()[:4] == b"\x89PNG"
    assert "[table4.md](table4.md)" in (out / "README.md").read_text()
    # the stored rows behind the board travel with it, one JSON object per run
    import json

    runs = [json.loads(line) for line in (out / "table4-runs.jsonl").read_text().splitlines()]
    assert len(runs) == 6 and "[table4-runs.jsonl](table4-runs.jsonl)" in md
    assert {(r["cell_name"], r["seed"]) for r in runs} >= {("1 none", 0), ("1 none", 1), ("8 all", 1)}
    assert all(r["git_commit"] and r["config_hash"] for r in runs)
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


def test_reported_only_rows_and_index(store, tmp_path):
    out = tmp_path / "results"
    boards(store, out)  # every suite with results, plus runs.md
    t1 = (out / "table1.md").read_text()
    assert "MFB (reported, not run)" in t1 and "CPRD-BAN (reported, not run)" in t1
    assert "UMD" in t1 and "**68.16**" in t1 and "| 14.50 " in t1 and "`tune.*.train.max_iters=4`" in t1
    assert "vqa-med-2019" in t1
    index = (out / "README.md").read_text()
    for name in ("table1.md", "table4.md", "fig5.md", "runs.md"):
        assert f"[{name}]({name})" in index
    assert "table2.md" not in index  # a suite with nothing in the store is not written
    assert (out / "fig5.png").is_file()
    fig5 = (out / "fig5.md").read_text()
    assert "UMD alpha=0.5" in fig5 and "**45.00**" in fig5 and "plot only" in fig5
    # boards of another preset rendered into a sub-folder are indexed one level up
    boards(store, out / "other", suite="table4")
    boards(store, out, suite="fig5")
    assert "- [other/](other/README.md): table4.md" in (out / "README.md").read_text()


def test_explicit_suite_without_results_still_shows_paper(store, tmp_path):
    out = tmp_path / "results"
    boards(store, out, suite="table3")
    md = (out / "table3.md").read_text()
    assert "ResNet-101 [image-only] (reported, not run)" in md and "79.58" in md and "not run" in md


def test_leaderboard_command_imports_no_torch_and_no_plugin_module(store, tmp_path):
    code = (
        "import sys\nfrom umdbench.cli import main\n"
        f"rc = main(['leaderboard', '--store', {str(store.path)!r}, '--out', {str(tmp_path / 'out')!r}])\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'plugins'))\n"
        "print(rc, heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout.strip().splitlines()[-1] == "0 []"
    assert (tmp_path / "out" / "table4.md").is_file()


def test_lower_is_better_columns_bold_their_smallest_value(tmp_path):
    registries = get_registries(reload=True)
    registries.suite.register(
        "distances",
        {
            "title": "Distances",
            "datasets": ["medsynth"],
            "metrics": ["dice", "hd95"],
            "lower_is_better": ["hd95"],
            "rows": [
                {"name": "a", "pretrain": "none", "tune": "direct"},
                {"name": "b", "pretrain": "none", "tune": "direct"},
            ],
        },
    )
    s = ResultsStore(tmp_path / "results.sqlite")
    s.add(_row("distances", "a", "medsynth", 0, {"dice": 80.0, "hd95": 3.0}, pretrain="none"))
    s.add(_row("distances", "b", "medsynth", 0, {"dice": 70.0, "hd95": 9.0}, pretrain="none"))
    md = (boards(s, tmp_path / "out", suite="distances") and (tmp_path / "out" / "distances.md")).read_text()
    assert "**80.00**" in md and "**3.00**" in md and "**9.00**" not in md
    get_registries(reload=True)


def test_reference_points_are_printed_under_their_split(store, tmp_path):
    """Stored no-image baselines appear under the table of the split (and data) they were computed on."""
    from umdbench.results.reference_points import reference_key

    points = {
        reference_key("vqa-rad", "test", "fpvqa-rad"): {
            "question only": {"overall": 52.77, "open": 27.37, "closed": 69.49},
            "majority answer": {"overall": 31.93, "open": 6.15, "closed": 48.9},
        },
        reference_key("vqa-rad", "test", "other-data"): {
            "question only": {"overall": 1.0},
            "majority answer": {"overall": 1.0},
        },
    }
    boards(store, tmp_path / "a", suite="table4", reference_points=points)
    md = (tmp_path / "a" / "table4.md").read_text()
    assert "question only 52.77 overall (open 27.37, closed 69.49)" in md
    assert "majority answer 31.93 overall (open 6.15, closed 48.90)" in md
    # row 1 (mean overall 67.0), row 2 (50.0) and row 8 (72.0) against 52.77: only row 2 is below
    assert "Rows whose mean overall is below question-only: 2 MR-Pretrain, 5 TD-Calib+GM-Coord." in md
    boards(store, tmp_path / "b", suite="table4")  # none stored: the command that adds them
    assert "`umdbench baselines --work-dir WORK_DIR`" in (tmp_path / "b" / "table4.md").read_text()


def test_a_metric_undefined_on_a_split_is_dropped_not_averaged(tmp_path):
    # VQA-Med-2019 has no closed question: its runs report closed = NaN, which statistics.stdev cannot
    # take (it raised AttributeError on the real sweep); the column goes and a note says why.
    get_registries(reload=True)
    s = ResultsStore(tmp_path / "results.sqlite")
    for seed, acc in enumerate((40.0, 44.0)):
        s.add(
            _row(
                "table4",
                "1 none",
                "vqa-med-2019",
                seed,
                {"open": acc, "closed": float("nan"), "overall": acc},
                pretrain="none",
            )
        )
    s.add(_row("table4", "1 none", "vqa-rad", 0, {"open": 30.0, "closed": 60.0, "overall": 50.0}, pretrain="none"))
    boards(s, tmp_path / "out", suite="table4")
    md = (tmp_path / "out" / "table4.md").read_text()
    med = md.split("## vqa-med-2019")[1].split("\n## ")[0]
    assert "42.00 ± 2.83" in med and "nan" not in med.lower()
    assert "| closed" not in med and "not shown: closed" in med
    rad = md.split("## vqa-rad")[1].split("\n## ")[0]
    assert "| closed" in rad and "60.00" in rad


def test_an_extra_dataset_is_shown_beyond_the_paper_once_stored(store, tmp_path):
    boards(store, tmp_path / "a", suite="fig5")
    assert "vqa-med-2019" not in (tmp_path / "a" / "fig5.md").read_text()  # nothing stored: not shown
    for alpha in (0.2, 0.5, 0.8):
        store.add(_row("fig5", f"UMD alpha={alpha}", "vqa-med-2019", 0, {"open": 30.0, "overall": 30.0}))
    boards(store, tmp_path / "b", suite="fig5")
    md = (tmp_path / "b" / "fig5.md").read_text()
    sections = [line for line in md.splitlines() if line.startswith("## ")]
    assert sections[-1] == "## vqa-med-2019" and "## vqa-rad" in sections
    med = md.split("## vqa-med-2019")[1]
    assert "Beyond the paper" in med and "`--datasets vqa-med-2019`" in med and "30.00" in med


def test_a_board_shows_the_compute_its_rows_recorded_and_counts_shared_stages_once(tmp_path):
    """Rows that record their stages' wall time (row schedule) get a compute column (the stages a
    cell used, mean over seeds) and a footer total that counts a shared stage once."""
    from umdbench.plan.suites import Suite
    from umdbench.results.board_data import collect_suite_results
    from umdbench.results.board_markdown import render_suite

    store = ResultsStore(tmp_path / "results.sqlite")
    shared = {"world_size": 1, "micro_batches": 1, "threads": 2, "device": "cpu", "wall_time_s": 1800.0}
    for seed in (0, 1):
        none = _row("mini", "none", "medsynth", seed, {"overall": 50.0 + seed}, pretrain="none")
        none["schedule"] = {f"direct-{seed}": {**shared, "wall_time_s": 360.0}}
        mr = _row("mini", "mr", "medsynth", seed, {"overall": 55.0 + seed})
        mr["schedule"] = {"pretrain-shared": shared, f"direct-mr-{seed}": {**shared, "wall_time_s": 360.0}}
        store.add(none)
        store.add(mr)
    suite = Suite.from_spec(
        "mini",
        {
            "datasets": ["medsynth"],
            "metrics": ["overall"],
            "rows": [
                {"name": "none", "pretrain": "none", "tune": "direct"},
                {"name": "mr", "pretrain": "mr", "tune": "direct"},
            ],
        },
    )
    results = collect_suite_results(store, suite)["tiny"]
    text = render_suite(suite, results, "tiny")
    header = next(line for line in text.splitlines() if line.startswith("| method"))
    assert "compute" in header
    assert "0.2 core-h" in text and "1.2 core-h" in text  # none: 360 s x 2 threads; mr: + the 1800 s pre-training
    # footer: 4 tuning stages of 0.2 core-h + the shared pre-training once (1.0) = 1.8
    assert "training compute** (each trained stage once, however many cells share it): 1.8 core-h over 5 stages" in text


def test_compute_column_adds_flops_only_where_every_stage_counted_them():
    """A cell shows FLOPs beside its hours when each stage it used has ``train_flops``; a row with
    one stage from older code (no count) shows hours only; the board's total counts a stage once."""
    from umdbench.results.board_compute import board_flops, cell_compute_text, flops_text

    counted = {
        "a": {"wall_time_s": 3600, "threads": 1, "train_flops": 2 * 10**15},
        "b": {"wall_time_s": 1800, "threads": 1, "train_flops": 10**15},
    }
    assert cell_compute_text([{"schedule": counted}]) == "1.5 core-h, 3 PFLOP"
    partial = {"a": counted["a"], "c": {"wall_time_s": 1800, "threads": 1}}
    assert cell_compute_text([{"schedule": partial}]) == "1.5 core-h"
    assert board_flops([{"schedule": counted}, {"schedule": partial}]) == (3 * 10**15, 2)
    assert flops_text(4.2e12) == "4.2 TFLOP" and flops_text(12) == "12 FLOP"

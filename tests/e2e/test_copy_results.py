"""Finished results travel between work dirs (`umdbench copy-results`): a copy renders the same
boards and a run into it reuses the copied cells, so a sweep goes on after its machine is gone."""

import numpy as np
import pytest

from tests.results.test_intervals import SPEC, _add  # the toy suite and its row writer
from umdbench.cli import main
from umdbench.plan.suites import Suite
from umdbench.results.board_data import collect_suite_results
from umdbench.results.board_markdown import render_suite
from umdbench.results.reference_points import load_reference_points, store_reference_points
from umdbench.results.store import Membership
from umdbench.run.workspace import Workspace

SMALL_RUN = [
    "model.image_size=64",
    "data.num_workers=0",
    "data.eval_batch_size=30",
    "dataset.options.n_train=60",
    "dataset.options.n_val=10",
    "dataset.options.n_test=30",
    "tune.0.train.max_iters=2",
    "tune.0.train.batch_size=8",
]


def _toy_work_dir(path):
    ws = Workspace(path)
    rng = np.random.default_rng(1)
    answer_type = (np.arange(120) % 2).astype(int)
    for seed in (0, 1):
        _add(ws, "A", seed, (rng.random(120) < 0.5).astype(int), answer_type)
        _add(ws, "B", seed, (rng.random(120) < 0.8).astype(int), answer_type)
    ws.store.record_membership([Membership("toy", "C", "toy", "tiny", 0, None, "planned", overrides=["x=1"])])
    store_reference_points(
        ws.reference_points_path,
        "toy|test|f",
        {"majority answer": {"overall": 50.0}, "question only": {"overall": 60.0, "open": 40.0}},
    )
    return ws


def _board(ws):
    suite = Suite.from_spec("toy", SPEC)
    text = render_suite(
        suite, collect_suite_results(ws.store, suite)["tiny"], "tiny", load_reference_points(ws.reference_points_path)
    )
    return text.split("- generated")[0]


def test_a_copy_renders_the_same_board_and_copying_again_changes_nothing(tmp_path):
    src = _toy_work_dir(tmp_path / "src")
    dst = Workspace(tmp_path / "dst")
    assert dst.copy_results_from(src) == {"rows": 4, "kept": 0, "predictions": 4, "unverified": 0}
    board = _board(dst)
    assert board == _board(src)
    assert "* = differs" in board and "pending" in board and "`x=1`" in board  # membership came along
    assert "question only 60.00 overall (open 40.00)" in board  # and the reference points
    assert "no interval for" not in board  # every copied row kept its predictions
    assert not (dst.work_dir / "stages").exists()  # results only, never trained weights
    assert load_reference_points(dst.reference_points_path) == load_reference_points(src.reference_points_path)
    assert dst.copy_results_from(src) == {"rows": 0, "kept": 4, "predictions": 0, "unverified": 0}
    assert _board(dst) == board


def test_a_predictions_file_that_fails_its_checksum_is_not_copied(tmp_path):
    src = _toy_work_dir(tmp_path / "src")
    row = next(r for r in src.store.rows() if r["cell_name"] == "B")
    src.predictions_path(row["cell_key"]).write_bytes(b"replaced after the run")
    dst = Workspace(tmp_path / "dst")
    counts = dst.copy_results_from(src)
    assert counts["unverified"] == 1 and counts["predictions"] == 3 and counts["rows"] == 4
    assert not dst.predictions_path(row["cell_key"]).exists()
    assert "no interval for B" in _board(dst)  # the board says why, as it does for the source


def test_copy_results_command_and_its_error(tmp_path, capsys):
    _toy_work_dir(tmp_path / "src")
    assert main(["copy-results", "--from", str(tmp_path / "src"), "--to", str(tmp_path / "dst")]) == 0
    assert "copied 4 result rows and 4 predictions files" in capsys.readouterr().out
    assert main(["copy-results", "--from", str(tmp_path / "nothing"), "--to", str(tmp_path / "dst")]) == 2
    err = capsys.readouterr().err
    assert "nothing/results.sqlite: no results store to copy from" in err and "fix:" in err
    assert not (tmp_path / "nothing").exists()  # a wrong --from creates nothing


@pytest.mark.slow
def test_a_run_into_a_copy_reuses_the_copied_result(tmp_path, capsys):
    args = ["run", "--pretrain", "none", "--tune", "direct", "--dataset", "medsynth", "--cfg-options", *SMALL_RUN]
    assert main([*args, "--work-dir", str(tmp_path / "a")]) == 0
    assert main(["copy-results", "--from", str(tmp_path / "a"), "--to", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    assert main([*args, "--work-dir", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "result already in the store" in out and not (tmp_path / "b" / "stages").exists()

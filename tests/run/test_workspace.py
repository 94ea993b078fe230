"""Workspace (umdbench.run.workspace): every path under a work dir, the stage artifacts kept there
(weights written before the marker, checked against it when loaded), resumable checkpoints, the
results files of a cell, and the locks two processes share. A tmp dir and stand-in stages; nothing
trains."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch

from umdbench.errors import CheckpointError
from umdbench.run import layout
from umdbench.run.workspace import Workspace

KEY = "0123456789abcdef" * 4


def stage(key: str = KEY, name: str = "direct") -> SimpleNamespace:
    """What a Workspace reads of a planned stage (umdbench.plan.stages.Stage)."""
    return SimpleNamespace(
        key=key, dirname=f"tune-{name}-{key[:16]}", key_inputs={"x": 1}, data={"fingerprint": "fp"}, title=name
    )


@pytest.fixture
def ws(tmp_path) -> Workspace:
    return Workspace(tmp_path / "wd")


def test_every_path_is_built_from_the_layout(ws):
    wd, s, cell = ws.work_dir, stage(), "fedcba9876543210" * 4
    assert ws.store_path == layout.store_path(wd) == wd / layout.STORE_FILE
    assert ws.stages_dir == layout.stages_dir(wd)
    assert ws.stage_dir(s) == wd / layout.STAGES_DIR / s.dirname
    assert ws.train_dir(s) == ws.stage_dir(s) / layout.TRAIN_DIR
    assert ws.weights_path(s) == ws.stage_dir(s) / layout.WEIGHTS_FILE
    assert ws.ddp_request_path(s) == ws.stage_dir(s) / layout.DDP_REQUEST_FILE
    assert ws.evidence_path(s) == ws.train_dir(s) / layout.EVIDENCE_FILE
    assert ws.run_dir(cell) == wd / layout.RUNS_DIR / cell[:16]
    assert ws.eval_dir(cell) == ws.run_dir(cell) / layout.EVAL_DIR
    assert ws.result_path(cell) == ws.run_dir(cell) / layout.RESULT_FILE
    assert ws.predictions_path(cell) == ws.run_dir(cell) / layout.PREDICTIONS_FILE
    assert ws.image_cache_dir == wd / layout.IMAGE_CACHE_DIR
    assert ws.reference_points_path == layout.reference_points_path(wd)
    assert ws.overlap_path == layout.overlap_report_path(wd)
    assert ws.plan_cache_path == layout.plan_cache_path(wd)
    assert ws.planning_cache_path == layout.planning_cache_path(wd)
    assert not wd.exists()  # naming a path creates nothing


def test_a_saved_stage_is_trained_and_loads_back_checked(ws):
    s = stage()
    assert not ws.is_trained(s) and ws.stage_wall_time(s) == 0.0
    state = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    sha = ws.save_stage(s, state, wall_time_s=12.5, world_size=1)
    assert ws.is_trained(s) and ws.weights_path(s).is_file()
    assert ws.marker(s)["key"] == KEY and ws.marker(s)["sha256"] == sha and ws.marker(s)["world_size"] == 1
    assert ws.stage_wall_time(s) == 12.5
    assert torch.equal(ws.load_stage(s)["w"], state["w"])
    ws.weights_path(s).write_bytes(ws.weights_path(s).read_bytes()[:-1] + b"!")  # bit rot
    with pytest.raises(CheckpointError):
        ws.load_stage(s)


@pytest.mark.parametrize("marker", ['{"key": "k"}', "{not json", '{"sha256": "abc"}'])
def test_a_marker_without_a_valid_sha256_is_corrupt(ws, marker):
    s = stage()
    ws.stage_dir(s).mkdir(parents=True)
    (ws.stage_dir(s) / layout.MARKER_FILE).write_text(marker)
    assert ws.is_trained(s)  # finished, but its weights cannot be verified: never loaded
    with pytest.raises(CheckpointError, match="Delete the folder"):
        ws.marker(s)
    assert ws.stage_wall_time(s) == 0.0


def test_stage_inputs_and_finished_stages(ws):
    old, new, unfinished = stage("a" * 64), stage("b" * 64), stage("c" * 64)
    for s in (old, new, unfinished):
        ws.write_stage_inputs(s)
    assert ws.stage_inputs(ws.stage_dir(old)) == {
        "key": "a" * 64,
        "key_inputs": {"x": 1},
        "data": {"fingerprint": "fp"},
    }
    assert ws.stage_inputs(ws.stage_dir(old) / "nowhere") is None
    ws.save_stage(old, {"w": torch.zeros(1)})
    ws.save_stage(new, {"w": torch.ones(1)})
    os.utime(ws.stage_dir(old) / layout.MARKER_FILE, (1, 1))
    (ws.stages_dir / "tune-direct-notakey").mkdir()  # not a stage folder name
    assert ws.finished_stages("tune", "direct") == [ws.stage_dir(new), ws.stage_dir(old)]
    assert ws.finished_stages("pretrain", "direct") == []
    assert ws.folder_marker(ws.stage_dir(new))["key"] == "b" * 64


def test_adopt_artifact_links_checked_weights_under_the_new_key(ws):
    source, target = stage("a" * 64), stage("b" * 64)
    ws.save_stage(source, {"w": torch.ones(3)}, wall_time_s=4.0)
    ws.adopt_artifact(target, ws.stage_dir(source), adopted_from="a" * 64)
    meta = ws.marker(target)
    assert (meta["key"], meta["sha256"], meta["wall_time_s"], meta["adopted_from"]) == (
        "b" * 64,
        ws.marker(source)["sha256"],
        4.0,
        "a" * 64,
    )
    assert torch.equal(ws.load_stage(target)["w"], torch.ones(3))
    assert ws.stage_inputs(ws.stage_dir(target))["key"] == "b" * 64
    ws.weights_path(source).unlink()
    with pytest.raises(CheckpointError, match="cannot be adopted"):
        ws.adopt_artifact(stage("c" * 64), ws.stage_dir(source))


def test_resume_checkpoint_is_found_by_name_in_the_stage_folder(ws):
    s = stage()
    assert ws.resume_checkpoint(s) is None
    train = ws.train_dir(s)
    train.mkdir(parents=True)
    (train / "iter_4.pth").write_bytes(b"x")
    (train / "last_checkpoint").write_text("/elsewhere/moved/work/dir/iter_4.pth")  # an absolute path of another mount
    assert ws.resume_checkpoint(s) == train / "iter_4.pth"
    (train / "last_checkpoint").write_text("iter_9.pth")
    with pytest.raises(CheckpointError, match="restart the stage from scratch"):
        ws.resume_checkpoint(s)


def test_prune_checkpoints_keeps_the_newest(ws):
    s = stage()
    train = ws.train_dir(s)
    train.mkdir(parents=True)
    for i in (1, 2, 10, 3):
        (train / f"iter_{i}.pth").write_bytes(b"x")
    (train / "last_checkpoint").write_text("iter_10.pth")
    deleted = ws.prune_checkpoints(s, keep=2)
    assert sorted(p.name for p in deleted) == ["iter_1.pth", "iter_2.pth"]  # by iteration, not by name
    assert sorted(p.name for p in train.iterdir()) == ["iter_10.pth", "iter_3.pth", "last_checkpoint"]
    ws.prune_checkpoints(s, keep=0)
    assert list(train.iterdir()) == []  # no pointer left naming a deleted file


def test_results_files_of_a_cell(ws):
    cell = "fedcba9876543210" * 4
    row = {
        "cell_key": cell,
        "config": {"pretrain": {"type": "mr"}, "tune": [{"type": "direct"}]},
        "config_hash": "h",
        "stage_keys": ["a" * 64, "b" * 64],
        "metrics": {"overall": 0.5},
    }
    path = ws.ensure_result(row)  # missing: written from the row, config.json beside it
    assert json.loads(path.read_text()) == {k: v for k, v in row.items() if k != "config"}
    config = json.loads((ws.run_dir(cell) / layout.RUN_CONFIG_FILE).read_text())
    assert config["config_hash"] == "h" and [p["dir"] for p in config["plan"]] == [
        "pretrain-mr-" + "a" * 16,
        "tune-direct-" + "b" * 16,
        "eval-eval-" + cell[:16],
    ]
    assert ws.predictions_ref(cell) is None
    ws.predictions_path(cell).write_bytes(b"stale")
    assert ws.write_predictions(cell, None) is None and not ws.predictions_path(cell).exists()


def test_a_lock_is_reentered_by_its_holder_and_waited_for_by_another_process(ws):
    s = stage()
    with ws.stage_lock(s), ws.stage_lock(s):  # run_cell -> store_result holds the cell lock twice
        pass
    waiter = textwrap.dedent(f"""
        import sys
        from umdbench.run.workspace import Workspace
        with Workspace({str(ws.work_dir)!r}).cell_lock({KEY!r}, on_wait=lambda p: print("waiting", p.name, flush=True)):
            print("got it", flush=True)
    """)
    with ws.cell_lock(KEY):
        proc = subprocess.Popen([sys.executable, "-c", waiter], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().split() == ["waiting", layout.CELL_LOCK_FILE]
        except BaseException:
            proc.kill()
            raise
    out, _ = proc.communicate(timeout=60)
    assert out.strip() == "got it" and proc.returncode == 0

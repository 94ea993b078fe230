"""The dry-run plan cache (umdbench.cli.plancache): a repeated dry run replays its output without
importing torch, and any change to an input it depends on (code, data, work dir, command line)
recomputes it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from umdbench.cli import plancache
from umdbench.plan import codekey
from umdbench.run import layout


def _bump(path: Path, text: str | None = None) -> None:
    """Change a file the way an edit does: new content (or the same size), a later mtime."""
    if text is not None:
        path.write_text(text)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))


def _dry(tmp_path, argv, noted_root=None, printed="plan A"):
    calls = []

    def compute():
        calls.append(1)
        if noted_root is not None:
            plancache.note_config({"dataset": {"root": str(noted_root)}})
        print(printed)
        print("a warning", file=sys.stderr)
        return 0

    rc = plancache.cached_dry_run(argv, tmp_path / "wd", (), compute)
    return rc, len(calls)


def test_replay_and_invalidation_by_data_and_work_dir(tmp_path, capsys):
    (tmp_path / "wd").mkdir()
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    ann = data / "train.json"
    ann.write_text("[1, 2]")
    argv = ["run", "--dataset", "x", "--dry-run"]

    assert _dry(tmp_path, argv, data) == (0, 1)
    first = capsys.readouterr()
    assert _dry(tmp_path, argv, data) == (0, 0)  # replayed: the command did not run
    again = capsys.readouterr()
    assert (again.out, again.err) == (first.out, first.err) == ("plan A\n", "a warning\n")

    _bump(ann, "[1, 3]")  # same size, new content and mtime
    assert _dry(tmp_path, argv, data) == (0, 1)
    assert _dry(tmp_path, argv, data) == (0, 0)
    (data / "images" / "new.png").write_bytes(b"x")  # an added image
    assert _dry(tmp_path, argv, data) == (0, 1)

    # a stage finishing in the work dir changes the printed [cached] markers
    stage = layout.stages_dir(tmp_path / "wd") / "pretrain-mr-abc"
    stage.mkdir(parents=True)
    assert _dry(tmp_path, argv, data) == (0, 0)  # a folder without a marker is not finished
    (stage / layout.MARKER_FILE).write_text("{}")
    assert _dry(tmp_path, argv, data) == (0, 1)
    layout.store_path(tmp_path / "wd").write_bytes(b"rows")
    assert _dry(tmp_path, argv, data) == (0, 1)
    assert _dry(tmp_path, argv, data) == (0, 0)

    # another command line is another entry
    assert _dry(tmp_path, argv + ["--seed", "1"], data) == (0, 1)
    assert _dry(tmp_path, argv, data) == (0, 0)


def test_environment_and_failures_are_not_replayed(tmp_path, monkeypatch):
    (tmp_path / "wd").mkdir()
    argv = ["sweep", "--suite", "s", "--dry-run"]
    assert _dry(tmp_path, argv) == (0, 1)
    monkeypatch.setenv("UMDBENCH_DATA_ROOT", str(tmp_path))
    assert _dry(tmp_path, argv) == (0, 1)
    assert _dry(tmp_path, argv) == (0, 0)

    def failing():
        print("partial")
        return 2

    assert plancache.cached_dry_run(["other"], tmp_path / "wd", (), failing) == 2
    assert plancache.cached_dry_run(["other"], tmp_path / "wd", (), failing) == 2  # ran again


def test_nothing_written_without_a_work_dir(tmp_path):
    assert _dry(tmp_path, ["run", "--dry-run"]) == (0, 1)
    assert _dry(tmp_path, ["run", "--dry-run"]) == (0, 1)
    assert not (tmp_path / "wd").exists()


def test_code_stamp_covers_plugin_files_and_umdbench(tmp_path):
    plugin = tmp_path / "myplugin.py"
    plugin.write_text("X = 1\n")
    helper = tmp_path / "helper.py"
    helper.write_text("Y = 1\n")
    before = codekey.code_stamp([str(plugin)])
    assert codekey.code_stamp([str(plugin)]) == before
    _bump(plugin, "X = 2\n")
    after = codekey.code_stamp([str(plugin)])
    assert after != before
    _bump(helper, "Y = 2\n")  # a module beside the plugin file it may import
    assert codekey.code_stamp([str(plugin)]) != after
    # umdbench's own sources, and the built-in plugins' package, are in it
    assert "umdbench" in codekey.plugin_tops() and "umdbench_plugins" in codekey.plugin_tops()


def test_replay_states_the_paths_the_workspace_builds(tmp_path):
    from umdbench.run.workspace import Workspace

    ws = Workspace(tmp_path / "wd")
    assert ws.store_path == layout.store_path(ws.work_dir) == ws.work_dir / layout.STORE_FILE
    assert ws.stages_dir == layout.stages_dir(ws.work_dir) == ws.work_dir / layout.STAGES_DIR
    assert ws.plan_cache_path == layout.plan_cache_path(ws.work_dir)


def test_note_config_records_paths_and_roots(tmp_path):
    plancache._noted = {}
    try:
        plancache.note_config(
            {
                "dataset": {"root": str(tmp_path)},
                "model": {"vision": {"checkpoint": "ckpt/v.pt"}},
                "deviations": ["a/b c"],
                "name": "plain",
            }
        )
        noted = dict(plancache._noted)
    finally:
        plancache._noted = None
    assert noted == {str(tmp_path): True, os.path.abspath("ckpt/v.pt"): False}


def test_cli_dry_run_replays_without_torch(tmp_path):
    """End to end: the second `umdbench run --dry-run` prints the same plan and imports no torch."""
    wd = tmp_path / "wd"
    wd.mkdir()
    args = [
        "run",
        "--pretrain",
        "mr",
        "--tune",
        "tdcalib+gmcoord",
        "--dataset",
        "medsynth",
        "--dry-run",
        "--work-dir",
        str(wd),
    ]
    script = (
        "import sys; from umdbench.cli import main; rc = main(sys.argv[1:]); "
        "print('TORCH', 'torch' in sys.modules, 'umdbench_plugins' in sys.modules); sys.exit(rc)"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    runs = [
        subprocess.run(
            [sys.executable, "-c", script, *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600
        )
        for _ in range(2)
    ]
    assert [r.returncode for r in runs] == [0, 0], runs[0].stderr[-2000:]
    assert runs[0].stdout.splitlines()[-1] == "TORCH True True"
    assert runs[1].stdout.splitlines()[-1] == "TORCH False False"
    assert runs[0].stdout == runs[1].stdout.replace("TORCH False False", "TORCH True True")
    assert "stage plan (4 stages)" in runs[1].stdout

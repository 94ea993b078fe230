"""End-to-end runs on the embedded dataset: cache reuse, kill + resume, third-party plugins.

Budgets are cut to a few iterations with --cfg-options; what is tested is the machinery.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from umdbench.cli import main
from umdbench.results.store import ResultsStore
from umdbench.run.host_memory import mimalloc_library

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

SMALL = [
    "model.image_size=64",
    "data.num_workers=0",
    "data.eval_batch_size=50",
    "dataset.options.n_train=160",
    "dataset.options.n_val=40",
    "dataset.options.n_test=100",
]


def small_budget(n_tune: int, pretrain: bool = True, iters: int = 4) -> list[str]:
    opts = list(SMALL)
    if pretrain:
        opts += [f"pretrain.train.max_iters={iters}", "pretrain.train.batch_size=8", "pretrain.corpus.options.n=64"]
    for i in range(n_tune):
        opts += [f"tune.{i}.train.max_iters={iters}", f"tune.{i}.train.batch_size=8"]
    return opts


def run_cli(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_run_twice_reuses_cache_and_shares_pretraining(tmp_path, capsys):
    base = ["run", "--pretrain", "mr", "--dataset", "medsynth", "--work-dir", str(tmp_path)]
    t0 = time.time()
    code, out = run_cli(base + ["--tune", "direct", "--cfg-options", *small_budget(1)], capsys)
    first = time.time() - t0
    assert code == 0, out
    assert "pretrain mr: training" in out and re.search(r"result: .*overall=", out)

    t0 = time.time()
    code, out = run_cli(base + ["--tune", "direct", "--cfg-options", *small_budget(1)], capsys)
    second = time.time() - t0
    assert code == 0, out
    assert "pretrain mr: reusing cached artifact" in out and "already in the store" in out
    assert second < first / 2

    # a different tuning chain shares the pre-training stage but trains its own stages
    code, out = run_cli(base + ["--tune", "tdcalib+direct", "--cfg-options", *small_budget(2)], capsys)
    assert code == 0, out
    assert "pretrain mr: reusing cached artifact" in out
    assert "tune tdcalib: training" in out and "tune direct: training" in out
    rows = ResultsStore(tmp_path / "results.sqlite").rows()
    assert len(rows) == 2
    assert {r["tune"] for r in rows} == {"direct", "tdcalib+direct"}
    row = rows[0]
    for key in ("config_hash", "git_commit", "packages", "data_fingerprint", "device"):
        assert row[key]
    assert row["config"]["cell"]["pretrain"] == "mr" and 0 <= row["metrics"]["overall"] <= 100
    assert len(row["stage_keys"]) == 2


def test_corrupt_cached_artifact_is_reported_and_nothing_is_damaged(tmp_path, capsys):
    args = [
        "run",
        "--pretrain",
        "mr",
        "--tune",
        "direct",
        "--dataset",
        "medsynth",
        "--work-dir",
        str(tmp_path),
        "--cfg-options",
        *small_budget(1, iters=2),
    ]
    assert run_cli(args, capsys)[0] == 0
    (artifact,) = (tmp_path / "stages").glob("pretrain-mr-*/model.safetensors")
    artifact.write_bytes(artifact.read_bytes()[:1000])
    store_before = (tmp_path / "results.sqlite").read_bytes()
    # a new cell that needs the corrupt pre-training
    args2 = [
        "run",
        "--pretrain",
        "mr",
        "--tune",
        "gmcoord",
        "--dataset",
        "medsynth",
        "--work-dir",
        str(tmp_path),
        "--cfg-options",
        *small_budget(1, iters=2),
    ]
    code, out = run_cli(args2, capsys)
    assert code == 2
    assert str(artifact) in out and "Delete the folder" in out
    assert len(ResultsStore(tmp_path / "results.sqlite").rows()) == 1
    assert ResultsStore(tmp_path / "results.sqlite").rows()[0]["tune"] == "direct"
    assert store_before[:100] == (tmp_path / "results.sqlite").read_bytes()[:100]


def test_sigkill_mid_stage_then_resume(tmp_path):
    opts = small_budget(1, pretrain=False, iters=20) + ["tune.0.train.checkpoint_interval=5"]
    cmd = [
        sys.executable,
        "-m",
        "umdbench.cli",
        "run",
        "--pretrain",
        "none",
        "--tune",
        "direct",
        "--dataset",
        "medsynth",
        "--work-dir",
        str(tmp_path),
        "--cfg-options",
        *opts,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    pointer = None
    while time.time() < deadline and proc.poll() is None:
        found = list((tmp_path / "stages").glob("tune-direct-*/train/last_checkpoint"))
        if found:
            pointer = found[0]
            break
        time.sleep(0.2)
    assert pointer is not None, "no checkpoint was written before the deadline"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (pointer.parent.parent / "artifact.json").exists()  # the stage did not finish
    assert not (tmp_path / "results.sqlite").exists() or not ResultsStore(tmp_path / "results.sqlite").rows()

    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "tune direct: resuming" in out.stdout
    rows = ResultsStore(tmp_path / "results.sqlite").rows()
    assert len(rows) == 1 and "overall" in rows[0]["metrics"]
    # the command trained on mimalloc (re-executed with it preloaded), and the row says so
    expected = "mimalloc allocator" if mimalloc_library() else "system allocator"
    assert expected in rows[0]["device"], rows[0]["device"]
    log = "\n".join(p.read_text() for p in pointer.parent.rglob("*.log"))
    assert "Resumed" in log or "resumed" in log


def _readme_plugin_source() -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(r"```python\n# bias_only.py\n(.*?)```", text, re.S)
    assert match, "README lost its worked plugin example"
    return match.group(1)


def test_readme_plugin_file_runs(tmp_path):
    """The README's one-file plugin, loaded with --plugin-path (the package form is
    tests/e2e/test_example_package.py)."""
    plugin = tmp_path / "bias_only.py"
    plugin.write_text(_readme_plugin_source())
    code = main(
        [
            "run",
            "--plugin-path",
            str(plugin),
            "--pretrain",
            "none",
            "--tune",
            "bias-only",
            "--dataset",
            "medsynth",
            "--work-dir",
            str(tmp_path / "wd"),
            "--cfg-options",
            "tune.0.train.max_iters=3",
            "data.num_workers=0",
        ]
    )
    assert code == 0
    row = ResultsStore(tmp_path / "wd" / "results.sqlite").rows()[0]
    assert row["tune"] == "bias-only" and row["plugins"]["tune:bias-only"] == f"local file {plugin}"


def test_broken_entry_point_plugin_is_skipped(tmp_path):
    site = tmp_path / "site"
    dist = site / "broken_plugin-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[umdbench]\nbroken = broken_plugin_mod\n")
    (site / "broken_plugin_mod.py").write_text("raise ImportError('this plugin is broken on purpose')\n")
    env = dict(os.environ, PYTHONPATH=str(site))
    out = subprocess.run([sys.executable, "-m", "umdbench.cli", "plugins"], env=env, capture_output=True, text=True)
    assert out.returncode == 0
    assert "broken 1.0" in out.stdout and "broken on purpose" in out.stdout
    listed = subprocess.run([sys.executable, "-m", "umdbench.cli", "list"], env=env, capture_output=True, text=True)
    assert listed.returncode == 0 and "mr" in listed.stdout


@pytest.mark.parametrize("strategy", ["mae", "clip", "flip", "m3ae"])
def test_every_pretraining_strategy_runs_through_direct_tuning(strategy, tmp_path, capsys):
    args = [
        "run",
        "--pretrain",
        strategy,
        "--tune",
        "direct",
        "--dataset",
        "medsynth",
        "--work-dir",
        str(tmp_path),
        "--cfg-options",
        *small_budget(1, iters=3),
    ]
    code, out = run_cli(args, capsys)
    assert code == 0, out
    assert f"pretrain {strategy}: done" in out and "overall=" in out


def test_tuning_chain_runs_in_the_given_order(tmp_path, capsys):
    args = [
        "run",
        "--pretrain",
        "none",
        "--tune",
        "tdcalib+gmcoord",
        "--dataset",
        "medsynth",
        "--work-dir",
        str(tmp_path),
        "--cfg-options",
        *small_budget(2, pretrain=False, iters=3),
    ]
    code, out = run_cli(args, capsys)
    assert code == 0, out
    order = [line.split()[1:3] for line in out.splitlines() if re.match(r"\[\d/\d\] tune \w+: training", line)]
    assert order == [["tune", "tdcalib:"], ["tune", "gmcoord:"]]
    row = ResultsStore(tmp_path / "results.sqlite").rows()[0]
    assert row["tune"] == "tdcalib+gmcoord" and [s["type"] for s in row["config"]["tune"]] == ["tdcalib", "gmcoord"]
    # GM-Coord's stage starts from TD-Calib's artifact: its key depends on TD-Calib's key
    tdcalib_key, gmcoord_key = row["stage_keys"]
    stage = json.loads(next((tmp_path / "stages").glob(f"tune-gmcoord-{gmcoord_key[:16]}/stage.json")).read_text())
    assert stage["key_inputs"]["parent"] == tdcalib_key


@pytest.mark.slow
def test_track_tensorboard_logs_every_stage(tmp_path):
    pytest.importorskip("tensorboard")
    code = main(
        [
            "run",
            "--pretrain",
            "none",
            "--tune",
            "direct",
            "--dataset",
            "medsynth",
            "--work-dir",
            str(tmp_path),
            "--track",
            "tensorboard",
            "--cfg-options",
            "tune.0.train.max_iters=3",
            "tune.0.train.log_interval=1",
            "data.num_workers=0",
        ]
    )
    assert code == 0
    (stage_dir,) = (tmp_path / "stages").glob("tune-direct-*")
    events = list((stage_dir / "train").rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    row = ResultsStore(tmp_path / "results.sqlite").rows()[0]
    assert row["config"]["tracking"]["backends"] == ["tensorboard"]


def test_track_with_an_unknown_backend_is_a_config_error(tmp_path, capsys):
    code = main(
        [
            "run",
            "--pretrain",
            "none",
            "--tune",
            "direct",
            "--dataset",
            "medsynth",
            "--work-dir",
            str(tmp_path),
            "--track",
            "wandb",
            "--dry-run",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown backend 'wandb'" in err and "tensorboard" in err and "\n" not in err.strip()

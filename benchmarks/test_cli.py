"""CLI start-up (``umdbench --help``, ``umdbench list``) and suite planning
(``umdbench sweep --suite NAME --dry-run``), each a fresh subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

EXE = shutil.which("umdbench") or os.path.join(os.path.dirname(sys.executable), "umdbench")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def _run(*args, check=True):
    r = subprocess.run([EXE, *args], capture_output=True, text=True, env=ENV, timeout=300)
    if check and r.returncode:
        raise RuntimeError(f"umdbench {' '.join(args)} exited {r.returncode}: {r.stderr[-500:]}")
    return r


def _info(benchmark, what):
    benchmark.group = "cli"
    benchmark.extra_info.update({"kind": "cli", "command": what, "load_avg_1m": os.getloadavg()[0]})


@pytest.mark.parametrize("args", [("--help",), ("list",)], ids=["help", "list"])
def test_cli_startup(benchmark, args):
    benchmark.pedantic(_run, args=args, rounds=5, iterations=1, warmup_rounds=1)
    _info(benchmark, "umdbench " + " ".join(args))


def _suites():
    try:
        r = _run("list", "--kind", "suite")
    except Exception:
        return []
    return [line.split()[0] for line in r.stdout.splitlines() if line.startswith("  ")]


@pytest.mark.parametrize("suite", _suites() or ["<none>"])
def test_sweep_plan(benchmark, suite, tmp_path):
    if suite == "<none>":
        pytest.skip("no suites registered")
    probe = _run("sweep", "--help", check=False)
    if probe.returncode:
        pytest.skip("`umdbench sweep` is not available")
    # an existing work dir keeps the plan cache (a dry run on a new one writes nothing)
    (tmp_path / "wd").mkdir()
    args = ("sweep", "--suite", suite, "--dry-run", "--work-dir", str(tmp_path / "wd"))
    first = _run(*args, check=False)
    if first.returncode:
        pytest.skip(f"`umdbench {' '.join(args)}` failed: {first.stderr.strip()[-300:]}")
    # the probe run above warmed the caches (plan cache, fingerprints)
    benchmark.pedantic(_run, args=args, rounds=5, iterations=1)
    _info(benchmark, f"umdbench sweep --suite {suite} --dry-run (warm)")


def test_run_plan(benchmark, tmp_path):
    """`umdbench run --dry-run` of the UMD chain with a warm plan cache."""
    (tmp_path / "wd").mkdir()
    args = (
        "run",
        "--pretrain",
        "mr",
        "--tune",
        "tdcalib+gmcoord",
        "--dataset",
        "medsynth",
        "--dry-run",
        "--work-dir",
        str(tmp_path / "wd"),
    )
    _run(*args)
    benchmark.pedantic(_run, args=args, rounds=5, iterations=1)
    _info(benchmark, "umdbench run --pretrain mr --tune tdcalib+gmcoord --dataset medsynth --dry-run (warm)")

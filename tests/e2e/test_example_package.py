"""The worked example package (examples/umdbench-example) installed from a copy outside the
repository: it imports only public modules, runs, sweeps its own suite, and is named in results."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "umdbench-example"
PUBLIC = {"umdbench.api", "umdbench.kit", "umdbench.hookspecs"}
THIRD_PARTY = {"numpy", "torch"}


def test_example_imports_only_public_modules():
    for path in (EXAMPLE / "umdbench_example").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top == "umdbench":
                    assert name in PUBLIC, (
                        f"{path.name}: imports {name}, which is not a public module ({sorted(PUBLIC)})"
                    )
                else:
                    assert top in THIRD_PARTY or top in sys.stdlib_module_names or top == "umdbench_example", (
                        f"{path.name}: imports {name}"
                    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory, install_package) -> dict:
    tmp = tmp_path_factory.mktemp("example")
    return {"cli": install_package(EXAMPLE, tmp), "tmp": tmp}


def cli(args, installed, check=True) -> subprocess.CompletedProcess:
    """``umdbench <args>`` with the package on the path, in this process (the package's discovery
    through its entry point is what is under test, not a process start-up)."""
    return installed["cli"](args, check)


def test_plugins_lists_the_package_with_its_version(installed):
    out = cli(["plugins", "--strict"], installed)
    assert "example 0.1.0  [entry point umdbench_example (package umdbench-example)]" in out.stdout
    assert "pretrain: mlm-only, tune: bias-only, dataset: shapes-vqa, suite: example" in out.stdout


@pytest.mark.slow
def test_example_runs_and_sweeps_its_suite(installed):
    work = installed["tmp"] / "wd"
    fast = ["--cfg-options", "pretrain.train.max_iters=4", "tune.*.train.max_iters=8", "data.num_workers=0"]
    out = cli(["sweep", "--suite", "example", "--work-dir", str(work), *fast], installed)
    assert "3 cells run" in out.stdout
    board = installed["tmp"] / "results"
    cli(["leaderboard", "--suite", "example", "--work-dir", str(work), "--out", str(board)], installed)
    text = (board / "example.md").read_text()
    assert "MLM-only + bias-only" in text and "scratch + direct" in text
    assert "umdbench-example 0.1.0" in text  # the plugin package is named with its version

"""Shared helpers of the tests (no tests here): a plugin of small suites, the tiny budget, the CLI as
a process (:func:`umdbench`) or in the test process (:func:`umdbench_here`), and an extra case for
the world-size equivalence harness, and a package installed into a site of its own
(:func:`install_package`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("UMDBENCH_SHARED_DATASETS", Path(__file__).resolve().parents[2] / "shared" / "datasets"))

# A local plugin: small suites over the embedded medsynth data (no data root needed).
PLUGIN = """
from umdbench.hookspecs import hookimpl

ROWS = [
    {"name": "1 none", "pretrain": "none", "tune": "direct"},
    {"name": "2 mr", "pretrain": "mr", "tune": "direct"},
    {"name": "3 gm", "pretrain": "none", "tune": "gmcoord"},
    {"name": "4 mr+gm", "pretrain": "mr", "tune": "gmcoord"},
    {"name": "5 mr+lin+direct", "pretrain": "mr", "tune": "linear+direct"},
]

@hookimpl
def umdbench_register(registries):
    registries.suite.register("mini-ablation", {
        "title": "mini ablation on medsynth", "datasets": ["medsynth"], "metrics": ["overall", "open", "closed"],
        "plot": "rows", "rows": ROWS})
    registries.suite.register("mini", {
        "title": "mini sweep on medsynth", "datasets": ["medsynth"], "metrics": ["overall"],
        "rows": [ROWS[0], ROWS[1], ROWS[3]]})
    registries.suite.register("mini-unavailable", {
        "title": "needs real data", "datasets": ["medsynth", "vqa-rad"], "metrics": ["overall"],
        "rows": [ROWS[0]]})
"""

# Real training kept tiny: a few iterations of batch 4 on a few dozen generated samples.
TINY = [
    "pretrain.train.max_iters=2",
    "pretrain.train.batch_size=4",
    "pretrain.corpus.options.n=16",
    "tune.*.train.max_iters=2",
    "tune.*.train.batch_size=4",
    "dataset.options.n_train=16",
    "dataset.options.n_val=4",
    "dataset.options.n_test=8",
    "data.num_workers=0",
]


def write_plugin(folder: Path) -> Path:
    path = folder / "sweep_test_plugin.py"
    path.write_text(PLUGIN)
    return path


def umdbench(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "umdbench.cli", *args], capture_output=True, text=True, env=env, cwd=REPO, **kwargs
    )


def clip_with_per_rank_negatives():
    """Equivalence case (``umdbench.run.equivalence``): CLIP with ``global_negatives=false``, whose
    InfoNCE under torchrun sees only each rank's slice of the batch as negatives."""
    from umdbench.run.equivalence import builtin_case

    case = builtin_case("clip")
    case.strategy.global_negatives = False
    return case


def umdbench_here(args: list, *, cwd: Path | None = None, path: tuple = ()) -> subprocess.CompletedProcess:
    """``umdbench <args>`` in this process, stdout and stderr captured: what :func:`umdbench` does
    without a process start-up (~5 CPU-s of imports), for commands whose process itself is not under
    test (its allocator, its signals). ``cwd``: the folder it runs in; ``path``: folders put first on
    ``sys.path`` for the command only, as ``PYTHONPATH`` would (an installed ``--target`` site): the
    plugins, code fingerprints and modules loaded from them are forgotten afterwards, so the next
    test sees the installed plugins only."""
    import contextlib
    import importlib
    import io

    from umdbench.cli import main
    from umdbench.plan import codekey
    from umdbench.plugin import loading

    added = [str(p) for p in path]

    def forget():
        loading._LOADED = None
        codekey.clear_caches()
        importlib.invalidate_caches()

    if added:
        sys.path[:0] = added
        forget()
    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as exc:  # argparse
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        os.chdir(here)
        if added:
            for p in added:
                sys.path.remove(p)
            for name, module in list(sys.modules.items()):
                if str(getattr(module, "__file__", None) or "").startswith(tuple(added)):
                    del sys.modules[name]
            forget()
    return subprocess.CompletedProcess(["umdbench", *args], code, out.getvalue(), err.getvalue())


def install_package(source: Path, tmp: Path):
    """``pip install`` a copy of the package folder ``source`` into ``tmp/site`` (no dependencies, no
    build isolation) and return ``cli(args, check=True)``: ``umdbench <args>`` run in ``tmp`` with that
    site on the path, in this process (:func:`umdbench_here`); with ``check``, a non-zero exit fails."""
    import shutil

    copy = shutil.copytree(source, tmp / "src", ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__"))
    site = tmp / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(site)]
    subprocess.run([*pip, str(copy)], check=True, capture_output=True, text=True, timeout=300)

    def cli(args: list, check: bool = True) -> subprocess.CompletedProcess:
        out = umdbench_here(args, cwd=tmp, path=(site,))
        if check:
            assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        return out

    return cli

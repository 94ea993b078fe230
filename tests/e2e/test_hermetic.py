"""The suite does not depend on which other umdbench plugins are installed.

A throwaway "site" folder holds third-party plugin packages (``*.dist-info`` with an ``umdbench``
entry point, as pip would leave them): one that raises on import, one whose hook takes a built-in
name, one whose hook registers the wrong kind of object, and one that works. With that folder on
PYTHONPATH the CLI must report the broken ones and keep working, and a fast subset of the real test
suite must still pass.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# name -> (module source, what `umdbench plugins` must say about it; None = loads fine)
PLUGINS = {
    "hermetic_import_error": (
        "raise ImportError('hermetic test plugin: broken on purpose')\n",
        "import failed: ImportError: hermetic test plugin: broken on purpose",
    ),
    "hermetic_collision": (
        "from umdbench.hookspecs import hookimpl\n"
        "@hookimpl\n"
        "def umdbench_register(registries):\n"
        "    registries.metric.register_lazy('hermetic-rolled-back', 'collections:Counter')\n"
        "    registries.dataset.register_lazy('medsynth', 'hermetic_collision:Nothing')\n",
        "dataset 'medsynth' is registered twice",
    ),
    "hermetic_wrong_kind": (
        "from umdbench.hookspecs import hookimpl\n"
        "@hookimpl\n"
        "def umdbench_register(registries):\n"
        "    registries.tune.register('hermetic-wrong-kind', dict)\n",
        "RegistryTypeError",
    ),
    "hermetic_ok": (
        "from umdbench.hookspecs import hookimpl\n"
        "@hookimpl\n"
        "def umdbench_register(registries):\n"
        "    registries.suite.register('hermetic-suite', {'title': 'x', 'datasets': ['medsynth'],\n"
        "        'metrics': ['overall'], 'rows': [{'name': 'a', 'pretrain': 'none', 'tune': 'direct'}]})\n",
        None,
    ),
}

# Fast tests that load every installed plugin (directly or through get_registries). The built-in
# kind check is left out: it judges registry.toml only, whatever else is installed.
SUBSET = [
    "tests/plugin/test_registry.py",
    "tests/plan/test_config.py",
    "tests/plan/test_suites.py",
    "--deselect",
    "tests/plugin/test_registry.py::test_every_builtin_entry_has_the_kind_it_is_registered_under",
]


@pytest.fixture(scope="module")
def polluted_env(tmp_path_factory) -> dict:
    site = tmp_path_factory.mktemp("site")
    for name, (source, _) in PLUGINS.items():
        dist = site / f"{name}-0.1.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: 0.1\n")
        (dist / "entry_points.txt").write_text(f"[umdbench]\n{name} = {name}\n")
        (site / f"{name}.py").write_text(source)
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")


def cli(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "umdbench.cli", *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=300
    )


def test_plugins_command_reports_each_broken_plugin_and_exits_0(polluted_env):
    out = cli(["plugins"], polluted_env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    for name, (_, expected) in PLUGINS.items():
        header = next((i for i, line in enumerate(lines) if line.startswith(f"{name} 0.1 ")), None)
        assert header is not None, f"{name} missing from:\n{out.stdout}"
        status = lines[header + 1].strip()
        if expected is None:
            assert status == "suite: hermetic-suite", out.stdout
        else:
            assert status.startswith("FAILED:") and expected in status, out.stdout
    assert "3 plugin(s) failed to load and were skipped" in out.stdout
    assert "hermetic-rolled-back" not in out.stdout  # the collision's first registration was rolled back


def test_list_still_shows_the_builtins(polluted_env):
    out = cli(["list"], polluted_env)
    assert out.returncode == 0, out.stderr
    entries = {line.split()[0]: line for line in out.stdout.splitlines() if line.startswith("  ")}
    for name in ("mr", "tdcalib", "gmcoord", "vqa-rad", "table1", "coattn", "vqa"):
        assert name in entries, out.stdout
    assert "builtin" in entries["medsynth"]  # the colliding plugin did not take the name
    assert "hermetic-suite" in entries and "hermetic-wrong-kind" not in entries


def test_fast_test_subset_passes_with_broken_plugins_installed(polluted_env):
    check = subprocess.run(
        [sys.executable, "-c", "from umdbench.plugin import get_plugin_report as r; print(len(r().failures))"],
        env=polluted_env,
        capture_output=True,
        text=True,
    )
    assert check.stdout.strip() == "3", check.stdout + check.stderr  # the environment really is polluted
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SUBSET],
        env=polluted_env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and " failed" not in out.stdout

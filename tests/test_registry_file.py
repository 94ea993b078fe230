"""`registry.toml` is one real file at the repository root; the package reaches it through a link
that a wheel build resolves, so an installed (non-editable) umdbench still lists every built-in."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

LIST = (
    "import json, umdbench; from umdbench.plugin import get_registries; r = get_registries(()); "
    "print(json.dumps({'file': umdbench.__file__, 'names': {k: sorted(v.names()) for k, v in r.kinds().items()}}))"
)


def test_the_registry_is_a_file_at_the_root_and_the_package_links_to_it():
    root, link = REPO / "registry.toml", REPO / "umdbench" / "registry.toml"
    assert root.is_file() and not root.is_symlink()
    assert link.is_symlink() and link.resolve() == root.resolve()


def test_a_built_wheel_carries_the_registry_and_lists_every_builtin(tmp_path):
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(REPO),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("umdbench-*.whl")
    with zipfile.ZipFile(wheel) as z:
        assert z.read("umdbench/registry.toml") == (REPO / "registry.toml").read_bytes()
        z.extractall(tmp_path / "site")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    installed = subprocess.run(
        [sys.executable, "-c", LIST], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
    )
    in_tree = subprocess.run([sys.executable, "-c", LIST], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert installed.returncode == 0 and in_tree.returncode == 0, installed.stderr[-2000:] + in_tree.stderr[-2000:]
    got, ref = json.loads(installed.stdout), json.loads(in_tree.stdout)
    assert got["file"].startswith(str(tmp_path / "site"))  # the wheel's copy, not the checkout
    assert got["names"]["pretrain"] and got["names"] == ref["names"]

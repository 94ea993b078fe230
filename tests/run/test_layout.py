"""The work dir's layout (umdbench.run.layout) names every file and folder umdbench keeps there, the
Workspace builds its paths from those names, and the layout module stays import-light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from umdbench.run import layout
from umdbench.run.workspace import Workspace

ROOT = Path(__file__).resolve().parents[2]
NAMES = {getattr(layout, name) for name in layout.__all__ if name.isupper()}

# string constants equal to a registered file name that are allowed outside the layout module
ELSEWHERE = {
    # the boards (umdbench.results, below umdbench.run) read the overlap report through this layer
    ("umdbench/data/overlap.py", layout.OVERLAP_REPORT_FILE),
    # files of a Hugging Face snapshot, not of the work dir
    ("umdbench/models/availability.py", layout.WEIGHTS_FILE),
    ("umdbench/models/availability.py", layout.RUN_CONFIG_FILE),
}


def test_every_workspace_path_is_built_from_registered_names(tmp_path):
    ws = Workspace(tmp_path)
    stage = SimpleNamespace(dirname="tune-direct-0123456789abcdef", key="0123456789abcdef" * 4)
    cell = "fedcba9876543210" * 4
    paths = [
        ws.store_path,
        ws.stages_dir,
        ws.stage_dir(stage),
        ws.train_dir(stage),
        ws.ddp_request_path(stage),
        ws.weights_path(stage),
        ws._marker_path(stage),
        ws.evidence_path(stage),
        ws.run_dir(cell),
        ws.eval_dir(cell),
        ws.reference_points_path,
        ws.overlap_path,
        ws.predictions_path(cell),
        ws.result_path(cell),
        ws.image_cache_dir,
        ws.plan_cache_path,
        ws.planning_cache_path,
    ]
    variable = {stage.dirname, cell[:16]}
    for path in paths:
        parts = path.relative_to(tmp_path).parts
        assert all(p in NAMES or p in variable for p in parts), path
    # the light helpers name the same paths as the Workspace
    assert layout.store_path(tmp_path) == ws.store_path
    assert layout.stages_dir(tmp_path) == ws.stages_dir
    assert layout.reference_points_path(tmp_path) == ws.reference_points_path
    assert layout.overlap_report_path(tmp_path) == ws.overlap_path
    assert layout.plan_cache_path(tmp_path) == ws.plan_cache_path
    assert layout.planning_cache_path(tmp_path) == ws.planning_cache_path


def test_the_overlap_report_name_agrees_with_its_reader():
    from umdbench.data.overlap import REPORT_FILE

    assert REPORT_FILE == layout.OVERLAP_REPORT_FILE


def test_no_other_module_spells_a_work_dir_file_name():
    files = {n for n in NAMES if "." in n}  # folder names ("train", "eval") are ordinary words elsewhere
    found = []
    for path in sorted((ROOT / "umdbench").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel == "umdbench/run/layout.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in files and (rel, node.value) not in ELSEWHERE:
                found.append(f"{rel}:{node.lineno}: {node.value!r}")
    assert not found, "work-dir names spelled outside umdbench/run/layout.py:\n" + "\n".join(found)


def test_the_layout_module_imports_nothing_heavy():
    code = (
        "import sys, umdbench.run.layout\n"
        "print(sorted(m for m in ('numpy', 'torch', 'umdbench.run.workspace') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"

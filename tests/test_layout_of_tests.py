"""The test tree mirrors the package, so a module's tests are found by its name.

The map:

- ``umdbench/<sub>/<module>.py`` -> ``tests/<sub>/test_<module>.py`` (the module's unit tests);
  ``umdbench/<module>.py`` -> ``tests/test_<module>.py``; a package's ``__init__.py`` ->
  ``tests/<sub>/test_<sub>.py``. Further files beside it test one feature of that subpackage
  (``tests/run/test_accumulation.py``).
- ``tests/plugins/<kind>/`` the built-in plugins (``umdbench_plugins``), ``tests/benchmarks/`` the
  benchmark scripts, ``tests/e2e/`` whole runs through the CLI and tests of several subpackages at once.
- ``tests/test_*.py`` at the top: checks of the whole tree (import layers, the contract, this layout).
- Helpers are ``tests/support.py`` and ``conftest.py``; every ``test_*.py`` holds tests. Every folder
  is a package (``__init__.py``), so two test files may share a basename.

A core module without a test file at its mirrored path is listed in UNMIRRORED with the reason; the
list is checked both ways (a listed module that gained its file, or no longer exists, fails too).
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "umdbench"
TESTS = REPO / "tests"

# module (relative to the repository) -> why it has no test file at its mirrored path
UNMIRRORED = {
    "umdbench/__init__.py": "the package docstring and __version__ only",
    "umdbench/api.py": "the plugin contract: tests/test_contract.py, and every plugin test builds on it",
    "umdbench/draws.py": "keyed random draws: covered by tests/run/test_data_parallel.py (and the brain package's)",
    "umdbench/errors.py": "exception classes only; every error-path test raises them",
    "umdbench/hookspecs.py": "hook declarations; tests/plugin/test_registry.py and tests/plugin/test_calls.py",
    "umdbench/cli/__main__.py": "`python -m umdbench.cli`: run by every subprocess CLI test (tests/support.py)",
    "umdbench/cli/adopt.py": "`umdbench adopt`: covered by tests/run/test_stage_adoption.py",
    "umdbench/cli/launch.py": "torchrun and node options of run/sweep: covered by tests/e2e/test_multinode.py",
    "umdbench/cli/overlap_command.py": "`umdbench overlap`: covered by tests/data/test_overlap.py",
    "umdbench/cli/power_command.py": "`umdbench power`: covered by tests/results/test_power.py",
    "umdbench/cli/sweep.py": "`umdbench sweep`: covered by tests/sweep/test_sweep.py",
    "umdbench/data/__init__.py": "the package docstring only",
    "umdbench/data/answers.py": "VQA answer normalisation: exercised by tests/plugins/datasets/test_release_formats.py",
    "umdbench/data/catalog.py": "planning-time data checks: covered by tests/e2e/test_data_validation.py",
    "umdbench/data/check.py": "the data check loop: covered by tests/e2e/test_data_check.py",
    "umdbench/data/content.py": "content hashes: by tests/e2e/test_data_check.py and tests/data/test_overlap.py",
    "umdbench/data/download.py": "`umdbench data download`: covered by tests/cli/test_data.py (loopback server)",
    "umdbench/data/fingerprint.py": "data fingerprints: covered by tests/e2e/test_data_check.py",
    "umdbench/data/vqa_common.py": "release-format datasets: covered by tests/plugins/datasets/test_release_formats.py",
    "umdbench/kit/__init__.py": "re-exports for plugin authors: tests/e2e/test_extension_points.py builds on them",
    "umdbench/kit/imagetext.py": "the image-text strategy base: covered by tests/plugins/pretrain/test_strategies.py",
    "umdbench/kit/recipes.py": "preset values: tests/models/test_small_preset.py and tests/kit/test_tasks.py",
    "umdbench/kit/supervised.py": "the supervised strategy base: covered by tests/kit/test_tasks.py",
    "umdbench/kit/tasktypes.py": "built-in task types: covered by tests/kit/test_tasks.py",
    "umdbench/models/__init__.py": "re-exports only",
    "umdbench/models/availability.py": "weights availability: covered by tests/models/test_paper_init.py",
    "umdbench/models/ema.py": "the EMA update: covered by tests/models/test_objectives.py",
    "umdbench/models/fusion.py": "co-attention layers: covered by tests/models/test_attention_teacher_modes.py",
    "umdbench/models/heads.py": "strategy heads: covered by tests/plugins/pretrain/test_mr.py",
    "umdbench/models/masking.py": "masking: covered by tests/models/test_objectives.py",
    "umdbench/models/presets.py": "model presets: covered by tests/models/test_small_preset.py",
    "umdbench/models/reconstruction.py": "reconstruction terms: covered by tests/plugins/tune/test_tdcalib.py",
    "umdbench/models/reference.py": "the math references: covered by tests/models/test_attention_teacher_modes.py",
    "umdbench/models/tiny_fixtures.py": "a test helper itself; used by tests/models/test_encoder.py",
    "umdbench/models/text.py": "the text tower: covered by tests/models/test_encoder.py",
    "umdbench/models/vision.py": "the vision tower: covered by tests/models/test_encoder.py",
    "umdbench/models/weights.py": "weights loading: covered by tests/models/test_encoder.py",
    "umdbench/plan/__init__.py": "the package docstring only",
    "umdbench/plan/codekey.py": "code keys: covered by tests/plan/test_cache_keys.py",
    "umdbench/plan/options.py": "option checks: covered by tests/plugin/test_config_checks.py",
    "umdbench/plan/stage_plan.py": "stages and their keys: covered by tests/plan/test_cache_keys.py",
    "umdbench/plugin/__init__.py": "re-exports of loading and registry: tests/plugin/test_registry.py",
    "umdbench/plugin/loading.py": "plugin loading: covered by tests/plugin/test_registry.py",
    "umdbench/results/__init__.py": "the package docstring only",
    "umdbench/results/board_compute.py": "a board's compute column: covered by tests/results/test_leaderboard.py",
    "umdbench/results/board_data.py": "what a board reads: covered by tests/results/test_leaderboard.py",
    "umdbench/results/board_footer.py": "a board's provenance footer: covered by tests/results/test_leaderboard.py",
    "umdbench/results/board_markdown.py": "a board's markdown: covered by tests/results/test_leaderboard.py",
    "umdbench/results/board_notes.py": "a board's notes: covered by tests/results/test_leaderboard.py",
    "umdbench/results/board_plots.py": "a board's plots: covered by tests/results/test_leaderboard.py",
    "umdbench/results/paper_results.py": "the paper's numbers: covered by tests/plan/test_suites.py",
    "umdbench/results/provenance.py": "a row's provenance: covered by tests/run/test_cell.py",
    "umdbench/run/__init__.py": "the package docstring only",
    "umdbench/run/build_data.py": "a stage's data: covered by tests/run/test_label_fraction.py and every run",
    "umdbench/run/build_optim.py": "a stage's optimiser: covered by tests/run/test_perf_options.py",
    "umdbench/run/build_runner.py": "the mmengine Runner: exercised by every stage (tests/run/test_cell.py)",
    "umdbench/run/build_strategy.py": "a stage's strategy: covered by tests/run/test_perf_options.py",
    "umdbench/run/context.py": "the run's services: used by tests/run/test_cell.py",
    "umdbench/run/distributed.py": "torchrun stages: covered by tests/run/test_ddp_stages.py",
    "umdbench/run/equivalence.py": "world-size equivalence: covered by tests/run/test_world_size_invariance.py",
    "umdbench/run/evidence.py": "recorded first steps: covered by tests/run/test_stage_adoption.py",
    "umdbench/run/hooks.py": "the progress hook: exercised by every stage (tests/run/test_cell.py)",
    "umdbench/run/nodes.py": "several nodes: covered by tests/e2e/test_multinode.py",
    "umdbench/run/prediction_recorder.py": "per-example predictions: covered by tests/results/test_predictions.py",
    "umdbench/run/stage_model.py": "the trained model wrapper: covered by tests/run/test_step_in_backward.py",
    "umdbench/run/train_and_evaluate.py": "train/evaluate a stage: covered by tests/run/test_cell.py",
    "umdbench/run/train_settings.py": "train keys: covered by tests/run/test_amp.py and tests/run/test_perf_options.py",
    "umdbench/sweep/planning.py": "sweep planning: covered by tests/sweep/test_sweep.py",
}


def mirrored_test(module: Path) -> Path:
    """Where the unit tests of ``umdbench/<...>/<module>.py`` live."""
    rel = module.relative_to(PACKAGE)
    folder = TESTS.joinpath(*rel.parts[:-1])
    name = rel.parts[-2] if rel.name == "__init__.py" and len(rel.parts) > 1 else rel.stem
    return folder / f"test_{'umdbench' if name == '__init__' else name}.py"


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_core_module_has_its_test_file_or_a_reason():
    missing = [
        f"{m.relative_to(REPO)} -> {mirrored_test(m).relative_to(REPO)}"
        for m in _modules()
        if not mirrored_test(m).is_file() and m.relative_to(REPO).as_posix() not in UNMIRRORED
    ]
    assert not missing, (
        "modules without a test file at the mirrored path; add the file, or an entry with the reason "
        "to UNMIRRORED in tests/test_layout_of_tests.py:\n" + "\n".join(missing)
    )


def test_the_exception_list_is_current():
    modules = {m.relative_to(REPO).as_posix(): m for m in _modules()}
    gone = [name for name in UNMIRRORED if name not in modules]
    tested = [name for name in UNMIRRORED if name in modules and mirrored_test(modules[name]).is_file()]
    assert not gone, f"UNMIRRORED lists modules that no longer exist: {gone}"
    assert not tested, f"UNMIRRORED lists modules that now have their test file (drop the entry): {tested}"
    named = {path for reason in UNMIRRORED.values() for path in re.findall(r"tests/[\w/]+\.py", reason)}
    assert not [p for p in named if not (REPO / p).is_file()], "a reason names a test file that does not exist"
    assert all(reason.strip() for reason in UNMIRRORED.values())


def test_every_test_folder_is_a_package_and_every_test_file_holds_tests():
    folders = {p.parent for p in TESTS.rglob("*.py") if "__pycache__" not in p.parts}
    assert not [f for f in folders if not (f / "__init__.py").is_file()], "a tests folder without __init__.py"
    empty = [
        p.relative_to(REPO).as_posix()
        for p in TESTS.rglob("test_*.py")
        if not re.search(r"^\s*(async )?def test_|^class Test", p.read_text(), re.M)
    ]
    assert not empty, f"files named like tests that hold none (name a helper module otherwise): {empty}"

"""Stage keys cover every source file a stage runs and no setting that cannot change its numbers.

Files are never edited in the repository: a plugin package is copied to tmp_path, and the
umdbench package's file list is redirected to a tmp copy of the one file being "edited".
"""
import shutil
import sys
import textwrap
from pathlib import Path

import pytest

from umdbench.plan import stages as plan_stages
from umdbench.plan.config import CellSpec, resolve
from umdbench.plan.stages import DataCatalog, build_plan, package_code_version
from umdbench.plugin import load_plugins

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def fresh_code_hashes():
    # hashes are computed once per process; each test starts (and leaves) them uncomputed
    package_code_version.cache_clear()
    yield
    package_code_version.cache_clear()


def plan_keys(spec: CellSpec, registries=None) -> list[str]:
    registries = registries or load_plugins()[0]
    return [s.key for s in build_plan(resolve(spec, registries), registries, DataCatalog(registries))]


MR_CELL = CellSpec("mr", ("tdcalib", "direct"), "medsynth")


def edited_copy(monkeypatch, tmp_path, top: str, rel: str) -> None:
    """Make the hash of package ``top`` read ``rel`` from a tmp copy with one more line."""
    original = plan_stages._source_files

    def files(name):
        out = original(name)
        if name != top:
            return out
        swapped = []
        for r, path in out:
            if Path(r).as_posix() == rel:
                copy = tmp_path / "edited" / rel
                copy.parent.mkdir(parents=True, exist_ok=True)
                copy.write_bytes(path.read_bytes() + b"\n# an edit\n")
                path = copy
            swapped.append((r, path))
        assert any("edited" in p.parts for _, p in swapped), f"{rel} is not a file of {top}"
        return swapped

    monkeypatch.setattr(plan_stages, "_source_files", files)


@pytest.mark.parametrize("top, rel", [
    ("umdbench", "data/images.py"),  # the image loader
    ("umdbench", "data/answers.py"),  # the answer normaliser
    ("umdbench", "kit/gradmod.py"),  # gradient modulation
    ("umdbench", "run/stages.py"),  # the training loop
    ("umdbench", "registry.toml"),  # which class a built-in name means
    ("umdbench_plugins", "tune/tdcalib.py"),
    ("umdbench_plugins", "datasets/medsynth.py"),
])
def test_editing_a_source_file_changes_every_dependent_stage_key(monkeypatch, tmp_path, top, rel):
    before = plan_keys(MR_CELL)
    package_code_version.cache_clear()
    edited_copy(monkeypatch, tmp_path, top, rel)
    after = plan_keys(MR_CELL)
    assert len(before) == len(after) == 4
    assert all(b != a for b, a in zip(before, after)), (before, after)


def test_editing_a_third_party_plugin_package_changes_its_stage_keys(monkeypatch, tmp_path):
    # a copy of a plugin package on sys.path: the strategy's module imports a helper module
    pkg = tmp_path / "keytest_plugins"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "helpers.py").write_text("SCALE = 1.0\n")
    (pkg / "tune.py").write_text(textwrap.dedent("""
        from umdbench_plugins.tune.direct import DirectTune
        from keytest_plugins.helpers import SCALE

        class KeyTune(DirectTune):
            name = "keytune"
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "keytest_plugins", raising=False)
    try:
        from keytest_plugins.tune import KeyTune

        registries = load_plugins()[0]
        registries.tune.register("keytune", KeyTune)
        spec = CellSpec("mr", ("tdcalib", "keytune"), "medsynth")
        pre, calib, tuned, cell = plan_keys(spec, registries)
        (pkg / "helpers.py").write_text("SCALE = 2.0\n")
        package_code_version.cache_clear()  # as a new process would
        pre2, calib2, tuned2, cell2 = plan_keys(spec, registries)
    finally:
        for name in [m for m in sys.modules if m == "keytest_plugins" or m.startswith("keytest_plugins.")]:
            del sys.modules[name]
    assert (pre2, calib2) == (pre, calib)  # stages that do not use the package keep their cache
    assert tuned2 != tuned and cell2 != cell


@pytest.mark.parametrize("override", [
    ("data.num_workers", 0), ("data.num_workers", 3), ("data.image_cache", False),
    ("tune.0.train.log_interval", 1), ("tune.1.train.checkpoint_interval", 7),
    ("pretrain.train.checkpoint_interval", 3), ("tune.1.train.keep_checkpoints", 0),
])
def test_settings_that_cannot_change_numbers_keep_the_keys(override):
    assert plan_keys(CellSpec("mr", ("tdcalib", "direct"), "medsynth", overrides=(override,))) == plan_keys(MR_CELL)


@pytest.mark.parametrize("override, changed_from", [
    (("tune.1.train.fused", False), 2),  # another AdamW kernel rounds differently
    (("tune.0.train.lr", 1e-3), 1),
    (("data.eval_batch_size", 7), 3),
    (("pretrain.train.max_iters", 3), 0),
    (("tune.1.train.label_fraction", 0.5), 2),
])
def test_settings_that_change_numbers_change_the_keys_downstream(override, changed_from):
    base = plan_keys(MR_CELL)
    changed = plan_keys(CellSpec("mr", ("tdcalib", "direct"), "medsynth", overrides=(override,)))
    assert changed[:changed_from] == base[:changed_from]
    assert all(a != b for a, b in zip(changed[changed_from:], base[changed_from:]))


def test_package_files_are_read_once_per_process(monkeypatch):
    calls = []
    original = plan_stages._source_files
    monkeypatch.setattr(plan_stages, "_source_files", lambda top: calls.append(top) or original(top))
    plan_keys(MR_CELL)
    plan_keys(CellSpec("none", ("direct",), "medsynth"))
    assert sorted(calls) == ["umdbench", "umdbench_plugins"]


def test_the_metric_package_is_keyed_without_importing_it():
    # importing torchmetrics costs planning about a second; the hash needs only the files
    registries = load_plugins()[0]
    plan_keys(MR_CELL, registries)
    assert "vqa-accuracy" in registries.metric._lazy


def test_planning_cache_reuses_missing_images_and_follows_the_data(tmp_path):
    # the planner's on-disk cache answers missing_images without reading records; a change of
    # the data (fingerprint) or a new work dir recomputes; a missing work dir is never created
    registries = load_plugins()[0]
    data = {"type": "medsynth", "root": None, "options": {"n_train": 24, "n_test": 8}, "on_error": "raise"}
    absent = DataCatalog(registries, cache_dir=tmp_path / "absent")
    assert absent.missing_images(data, "train")[1] > 0 and not (tmp_path / "absent").exists()
    first = DataCatalog(registries, cache_dir=tmp_path)
    expected = first.missing_images(data, "train")
    assert (tmp_path / plan_stages.PLANNING_CACHE).is_file()
    warm = DataCatalog(registries, cache_dir=tmp_path)
    dataset = warm.get(data)
    dataset.records = lambda split: pytest.fail("records read despite a warm cache")
    assert warm.missing_images(data, "train") == expected
    other = {**data, "options": {"n_train": 12, "n_test": 8}}  # another fingerprint
    assert DataCatalog(registries, cache_dir=tmp_path).missing_images(other, "train")[1] != expected[1]

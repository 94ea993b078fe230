"""Stage keys cover the source a stage runs (its import closure, umdbench.plan.codekey) and no
setting that cannot change its numbers.

Files are never edited in the repository (other processes read the same tree): a plugin package is
copied to tmp_path, and codekey's one source reader is swapped for one that returns an edited copy
of the file being "edited".
"""

import json
import sys
import textwrap
from pathlib import Path

import pytest

from umdbench.api import DatasetPlugin, Record
from umdbench.data.catalog import DataCatalog
from umdbench.plan import codekey
from umdbench.plan.config import CellSpec, parse_override, resolve
from umdbench.plan.stage_plan import build_plan
from umdbench.plugin import load_plugins
from umdbench.run.layout import planning_cache_path

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def fresh_code_hashes():
    # sources are read once per process; each test starts (and leaves) them unread
    codekey.clear_caches()
    yield
    codekey.clear_caches()


def plan_stages_of(spec: CellSpec, registries=None) -> list:
    registries = registries or load_plugins()[0]
    return build_plan(resolve(spec, registries), registries, DataCatalog(registries))


def plan_keys(spec: CellSpec, registries=None) -> list[str]:
    return [s.key for s in plan_stages_of(spec, registries)]


MR_CELL = CellSpec("mr", ("tdcalib", "direct"), "medsynth")
# a 3-D cell of the umdbench-brain package (its own encoder, task types and strategies)
BRAIN_SMALL = (
    "model.roi_size=16",
    "dataset.options.canvas=32",
    "dataset.options.n_train=4",
    "dataset.options.n_val=2",
    "dataset.options.n_test=2",
)
BRAIN_CELL = CellSpec("mae3d", ("seg",), "brainsynth", overrides=tuple(parse_override(o) for o in BRAIN_SMALL))


def edited(monkeypatch, path: str) -> list:
    """Make codekey read the repo file ``path`` (relative to the repo) with one more line; returns
    the list of files read with the edit (empty: no key read it)."""
    original = codekey.read_source
    target = (REPO / path).resolve()
    assert target.is_file(), path
    hits = []

    def read(file):
        data = original(file)
        if Path(file).resolve() == target:
            hits.append(path)
            return data + b"\n# an edit\n"
        return data

    monkeypatch.setattr(codekey, "read_source", read)
    codekey.clear_caches()
    return hits


@pytest.mark.parametrize(
    "path",
    [
        "umdbench/data/images.py",  # the image loader
        "umdbench/run/train_and_evaluate.py",  # the training loop
        "umdbench/run/build_optim.py",  # optimiser, schedule
        "umdbench/api.py",  # the plugin contract
        "umdbench/kit/tasktypes.py",  # VQA batches and the shared head
        "umdbench/models/encoder.py",  # the co-attention encoder
        "plugins/datasets/medsynth.py",
    ],
)
def test_editing_a_module_every_stage_runs_changes_every_key(monkeypatch, path):
    before = plan_keys(MR_CELL)
    edited(monkeypatch, path)
    after = plan_keys(MR_CELL)
    assert len(before) == len(after) == 4
    assert all(b != a for b, a in zip(before, after)), (path, before, after)


UMD_CELL = CellSpec("mr", ("tdcalib", "gmcoord"), "medsynth")


@pytest.mark.parametrize(
    "path, changed",
    [
        ("plugins/tune/tdcalib.py", [False, True, True, True]),  # TD-Calib and what is downstream of it
        ("plugins/pretrain/mr.py", [True, True, True, True]),
        ("umdbench/kit/gradmod.py", [False, False, True, True]),  # imported by GM-Coord only
        ("plugins/tune/gmcoord.py", [False, False, True, True]),
    ],
)
def test_editing_a_plugin_module_changes_the_stages_that_import_it(monkeypatch, path, changed):
    before = plan_keys(UMD_CELL)
    edited(monkeypatch, path)
    after = plan_keys(UMD_CELL)
    assert [b != a for b, a in zip(before, after)] == changed


@pytest.mark.parametrize(
    "path",
    [
        "umdbench/results/leaderboard.py",  # renders rows
        "umdbench/results/provenance.py",  # imported by run.build_runner, cut: cannot change numbers
        "umdbench/results/auc.py",  # reached through the predictions format, cut: board statistics only
        "umdbench/cli/__init__.py",
        "umdbench/sweep/executors.py",
        "umdbench/registry.toml",  # suites; the class a name means is keyed as module:qualname
        "plugins/tune/gmcoord.py",  # a plugin this cell does not use
        "plugins/pretrain/mae.py",
        "plugins/datasets/vqa_rad.py",
    ],
)
def test_editing_code_a_stage_does_not_run_keeps_every_key(monkeypatch, path):
    cells = [MR_CELL, BRAIN_CELL]
    before = [plan_keys(c) for c in cells]
    hits = edited(monkeypatch, path)
    assert [plan_keys(c) for c in cells] == before
    assert not hits, f"{path} was read for a key"


def test_the_co_attention_fusion_keys_the_2d_stages_and_not_the_brain_ones(monkeypatch):
    two_d = [MR_CELL, CellSpec("none", ("direct",), "medsynth")]
    before_2d, before_brain = [plan_keys(c) for c in two_d], plan_keys(BRAIN_CELL)
    edited(monkeypatch, "umdbench/models/fusion.py")
    after_2d = [plan_keys(c) for c in two_d]
    for b, a in zip(before_2d, after_2d):
        assert all(x != y for x, y in zip(b, a)), (b, a)
    assert plan_keys(BRAIN_CELL) == before_brain


def test_the_key_inputs_name_each_module_and_library():
    # stage.json holds key_inputs: a changed key can be traced to the module whose sha changed
    stages = plan_stages_of(MR_CELL)
    code = stages[1].key_inputs["code"]
    assert "umdbench_plugins.tune.tdcalib" in code["modules"] and "umdbench.models.fusion" in code["modules"]
    assert "umdbench.results.leaderboard" not in code["modules"] and "umdbench.cli" not in code["modules"]
    assert "umdbench_plugins.tune.gmcoord" not in code["modules"]
    assert code["libraries"]["torch"] and "umdbench_plugins.tune.tdcalib:TDCalib" in code["classes"]
    assert all(len(sha) == 16 for sha in code["modules"].values())
    brain = plan_stages_of(BRAIN_CELL)
    modules = brain[0].key_inputs["code"]["modules"]
    assert "umdbench_brain.strategies" in modules and "umdbench.models.fusion" not in modules
    json.dumps(stages[-1].key_inputs)  # what Workspace.write_stage_inputs writes


def test_editing_a_third_party_plugin_package_changes_its_stage_keys(monkeypatch, tmp_path):
    # a copy of a plugin package on sys.path: the strategy's module imports a helper module
    pkg = tmp_path / "keytest_plugins"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "helpers.py").write_text("SCALE = 1.0\n")
    (pkg / "tune.py").write_text(
        textwrap.dedent("""
        from umdbench_plugins.tune.direct import DirectTune
        from keytest_plugins.helpers import SCALE

        class KeyTune(DirectTune):
            name = "keytune"
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "keytest_plugins", raising=False)
    try:
        from keytest_plugins.tune import KeyTune

        registries = load_plugins()[0]
        registries.tune.register("keytune", KeyTune)
        spec = CellSpec("mr", ("tdcalib", "keytune"), "medsynth")
        pre, calib, tuned, cell = plan_keys(spec, registries)
        (pkg / "helpers.py").write_text("SCALE = 2.0\n")
        codekey.clear_caches()  # as a new process would
        pre2, calib2, tuned2, cell2 = plan_keys(spec, registries)
    finally:
        for name in [m for m in sys.modules if m == "keytest_plugins" or m.startswith("keytest_plugins.")]:
            del sys.modules[name]
    assert (pre2, calib2) == (pre, calib)  # stages that do not use the package keep their cache
    assert tuned2 != tuned and cell2 != cell


@pytest.mark.parametrize(
    "override",
    [
        ("data.num_workers", 0),
        ("data.num_workers", 3),
        ("data.image_cache", False),
        ("tune.0.train.log_interval", 1),
        ("tune.1.train.checkpoint_interval", 7),
        ("pretrain.train.checkpoint_interval", 3),
        ("tune.1.train.keep_checkpoints", 0),
    ],
)
def test_settings_that_cannot_change_numbers_keep_the_keys(override):
    assert plan_keys(CellSpec("mr", ("tdcalib", "direct"), "medsynth", overrides=(override,))) == plan_keys(MR_CELL)


@pytest.mark.parametrize(
    "override, changed_from",
    [
        (("tune.1.train.fused", False), 2),  # another AdamW kernel rounds differently
        (("tune.0.train.lr", 1e-3), 1),
        (("data.eval_batch_size", 7), 3),
        (("pretrain.train.max_iters", 3), 0),
        (("tune.1.train.label_fraction", 0.5), 2),
    ],
)
def test_settings_that_change_numbers_change_the_keys_downstream(override, changed_from):
    base = plan_keys(MR_CELL)
    changed = plan_keys(CellSpec("mr", ("tdcalib", "direct"), "medsynth", overrides=(override,)))
    assert changed[:changed_from] == base[:changed_from]
    assert all(a != b for a, b in zip(changed[changed_from:], base[changed_from:]))


def test_source_files_are_read_once_per_process(monkeypatch):
    reads = []
    original = codekey.read_source
    monkeypatch.setattr(codekey, "read_source", lambda path: reads.append(path) or original(path))
    plan_keys(MR_CELL)
    plan_keys(CellSpec("none", ("direct",), "medsynth"))
    assert reads and len(reads) == len(set(reads))


def test_a_file_read_again_after_clear_caches_is_parsed_again_only_when_its_content_changed(monkeypatch):
    parsed = []
    original = codekey._imports
    monkeypatch.setattr(codekey, "_imports", lambda *a: parsed.append(a[0]) or original(*a))
    before = plan_keys(MR_CELL)
    codekey.clear_caches()
    assert plan_keys(MR_CELL) == before
    first = len(parsed)
    codekey.clear_caches()
    assert plan_keys(MR_CELL) == before and len(parsed) == first  # every file read again, none parsed again
    # content-addressed: an edit is parsed (and keyed) afresh, its imports included
    module = (REPO / "plugins" / "pretrain" / "mr.py").resolve()
    text = module.read_bytes() + b"\nimport umdbench_plugins.pretrain.mae  # a new import\n"
    monkeypatch.setattr(
        codekey, "read_source", lambda path: text if Path(path).resolve() == module else path.read_bytes()
    )
    codekey.clear_caches()
    assert plan_keys(MR_CELL) != before
    again = parsed[first:]  # the edited file, then only what its new import brought in
    assert again[0] == "umdbench_plugins.pretrain.mr" and not set(again[1:]) & set(parsed[:first])


def test_the_metric_package_is_keyed_without_importing_it():
    # importing torchmetrics costs planning about a second; the hash needs only the files
    registries = load_plugins()[0]
    plan_keys(MR_CELL, registries)
    assert "vqa-accuracy" in registries.metric._lazy


class ImageFiles(DatasetPlugin):
    """Records naming ``n`` image files under the root (the first ``present`` of them exist)."""

    name = "test-image-files"

    def records(self, split):
        return [
            Record(uid=f"{split}-{i}", image=str(self.root / f"{i}.png"), text="") for i in range(self.options["n"])
        ]

    def fingerprint(self):
        return f"test-image-files n={self.options['n']}"


def test_planning_cache_reuses_missing_images_and_follows_the_data(tmp_path):
    # the planner's on-disk cache answers missing_images without reading records; a change of
    # the data (fingerprint) or a new work dir recomputes; a missing work dir is never created
    registries = load_plugins()[0]
    registries.dataset.register("test-image-files", ImageFiles)
    root = tmp_path / "images"
    root.mkdir()
    for i in range(24):
        (root / f"{i}.png").write_bytes(b"")
    data = {"type": "test-image-files", "root": str(root), "options": {"n": 24}, "on_error": "raise"}

    def cached(work_dir):
        return DataCatalog(registries, cache_file=planning_cache_path(work_dir), code_digest=codekey.modules_digest)

    absent = cached(tmp_path / "absent")
    assert absent.missing_images(data, "train") == ([], 24) and not (tmp_path / "absent").exists()
    first = cached(tmp_path)
    expected = first.missing_images(data, "train")
    assert planning_cache_path(tmp_path).is_file()
    warm = cached(tmp_path)
    dataset = warm.get(data)
    dataset.records = lambda split: pytest.fail("records read despite a warm cache")
    assert warm.missing_images(data, "train") == expected
    other = {**data, "options": {"n": 30}}  # another fingerprint, and six files that do not exist
    assert cached(tmp_path).missing_images(other, "train") == ([str(root / f"{i}.png") for i in range(24, 30)], 30)


def test_generated_data_is_not_made_to_look_for_files(tmp_path):
    # a dataset that reads no files (needs_root = False) has none missing: planning does not make
    # its records (a brainsynth split is seconds of phantoms) only to find that out
    registries = load_plugins()[0]
    catalog = DataCatalog(registries, cache_file=planning_cache_path(tmp_path), code_digest=codekey.modules_digest)
    data = {"type": "medsynth", "root": None, "options": {"n_train": 24}, "on_error": "raise"}
    catalog.get(data).records = lambda split: pytest.fail("a generated split was made during planning")
    assert catalog.missing_images(data, "train") == ([], 0)


def test_the_planning_cache_refuses_a_digest_that_is_not_the_plugins_code(tmp_path):
    registries = load_plugins()[0]
    with pytest.raises(ValueError, match="code_digest"):  # a disk cache not keyed by the plugin's code
        DataCatalog(registries, cache_file=planning_cache_path(tmp_path))

"""Plugin authors off the paved path: a misspelt name in a plugin's presets, a --cfg-options typo, a
misspelt preset or suite entry, a --plugin-path file that does not load, and a strategy run on data
or an encoder it does not fit are each refused by `--dry-run`, in one paragraph that names the
plugin (and the option), with exit 2, before anything trains."""

from __future__ import annotations

import json
import textwrap

import pytest

from umdbench.cli import main

PLUGIN = textwrap.dedent("""
    from umdbench.api import Option
    from umdbench.hookspecs import hookimpl
    from umdbench.kit import FINETUNE_TRAIN_TINY, SupervisedTune

    NO_ITERS = {k: v for k, v in FINETUNE_TRAIN_TINY.items() if k != "max_iters"}


    class TrainTypo(SupervisedTune):
        name = "train-typo"
        presets = {"tiny": {"loss": "ce", "pooling": "pooler", "train": {**NO_ITERS, "max_itres": 20}}}


    class OptionTypo(SupervisedTune):
        name = "option-typo"
        presets = {"tiny": {"loss": "ce", "poolling": "mean", "train": dict(FINETUNE_TRAIN_TINY)}}


    class PerDatasetTypo(SupervisedTune):
        name = "per-dataset-typo"
        presets = {"tiny": {"loss": "ce", "pooling": "pooler", "train": dict(FINETUNE_TRAIN_TINY),
                            "per_dataset": {"medsynth": {"poolling": "mean"}}}}


    class DatasetNameTypo(SupervisedTune):
        name = "dataset-name-typo"
        presets = {"tiny": {"loss": "ce", "pooling": "pooler", "train": dict(FINETUNE_TRAIN_TINY),
                            "per_dataset": {"medsynht": {"train": {"batch_size": 8}}}}}


    class PresetTypo(SupervisedTune):
        name = "preset-typo"
        presets = {"tiny": {"loss": "ce", "pooling": "pooler", "train": dict(FINETUNE_TRAIN_TINY)},
                   "smal": {"loss": "ce", "pooling": "pooler", "train": dict(FINETUNE_TRAIN_TINY)}}


    class Widths(SupervisedTune):
        name = "widths"
        option_schema = {**SupervisedTune.option_schema, "width": Option(int, 4, "hidden width of an adapter")}
        presets = {"tiny": {"loss": "ce", "pooling": "pooler", "train": dict(FINETUNE_TRAIN_TINY)}}


    class Broken(SupervisedTune):
        name = "broken"
        presets = {"tiny": {"loss": "ce", "pooling": "pooler", "train": dict(FINETUNE_TRAIN_TINY), "depth": 2}}

        @classmethod
        def check_config(cls, cfg):
            if cfg["depth"] > 1:
                raise ValueError("depth must be 1 here, got 2")
            raise ValueError("internal lookup table is empty")


    SUITE = {"title": "typos", "datasets": ["medsynth"], "metrics": ["overall"],
             "rows": [{"name": "a", "pretrain": "none", "tune": "dirct"}]}
    DATASET_SUITE = {"title": "typos", "datasets": ["medsynht"], "metrics": ["overall"],
                     "rows": [{"name": "a", "pretrain": "none", "tune": "direct"}]}


    @hookimpl
    def umdbench_register(registries):
        for cls in (TrainTypo, OptionTypo, PerDatasetTypo, DatasetNameTypo, PresetTypo, Widths, Broken):
            registries.tune.register(cls.name, cls)
        registries.suite.register("strategy-typo-suite", SUITE)
        registries.suite.register("dataset-typo-suite", DATASET_SUITE)
""")


@pytest.fixture
def plugin_file(tmp_path):
    path = tmp_path / "author_plugin.py"
    path.write_text(PLUGIN)
    return str(path)


def one_paragraph_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("umdbench: error:") and "\n" not in err and "Traceback" not in err, err
    return err


def dry_run(tmp_path, plugin_file, *args: str) -> int:
    extra = ["--plugin-path", plugin_file] if plugin_file else []
    return main(["run", *extra, "--work-dir", str(tmp_path / "wd"), "--dry-run", *args])


def refused(tmp_path, capsys, plugin_file, *args: str) -> str:
    assert dry_run(tmp_path, plugin_file, *args) == 2
    assert not (tmp_path / "wd" / "stages").exists()
    return one_paragraph_error(capsys)


# -- part 1: declared, checked configuration ------------------------------------------------------------
def test_misspelt_train_key_in_an_authors_preset(tmp_path, capsys, plugin_file):
    err = refused(tmp_path, capsys, plugin_file, "--pretrain", "none", "--tune", "train-typo", "--dataset", "medsynth")
    assert "tuning strategy 'train-typo'" in err and "author_plugin" in err
    assert "train.max_itres" in err and "Did you mean 'max_iters'" in err and "'tiny' preset" in err


def test_misspelt_option_in_an_authors_preset(tmp_path, capsys, plugin_file):
    err = refused(tmp_path, capsys, plugin_file, "--pretrain", "none", "--tune", "option-typo", "--dataset", "medsynth")
    assert "tuning strategy 'option-typo'" in err and "author_plugin" in err
    assert "'poolling'" in err and "misspelling of 'pooling'" in err


def test_misspelt_option_in_a_per_dataset_entry(tmp_path, capsys, plugin_file):
    err = refused(
        tmp_path, capsys, plugin_file, "--pretrain", "none", "--tune", "per-dataset-typo", "--dataset", "medsynth"
    )
    assert "tuning strategy 'per-dataset-typo'" in err and "per_dataset entry 'medsynth'" in err
    assert "'poolling'" in err and "Did you mean 'pooling'" in err


def test_misspelt_dataset_name_in_a_per_dataset_entry(tmp_path, capsys, plugin_file):
    err = refused(
        tmp_path, capsys, plugin_file, "--pretrain", "none", "--tune", "dataset-name-typo", "--dataset", "medsynth"
    )
    assert "tuning strategy 'dataset-name-typo'" in err and "'medsynht'" in err and "misspelling of 'medsynth'" in err


def test_misspelt_cfg_option_names_the_strategy(tmp_path, capsys, plugin_file):
    err = refused(
        tmp_path,
        capsys,
        plugin_file,
        "--pretrain",
        "none",
        "--tune",
        "widths",
        "--dataset",
        "medsynth",
        "--cfg-options",
        "tune.0.widht=8",
    )
    assert "'widht'" in err and "Did you mean width" in err and "tuning strategy 'widths'" in err


def test_declared_option_gets_its_default_and_its_type_is_checked(tmp_path, capsys, plugin_file):
    assert dry_run(tmp_path, plugin_file, "--pretrain", "none", "--tune", "widths", "--dataset", "medsynth") == 0
    out = capsys.readouterr().out
    config = json.loads(out[: out.index("\n}\n") + 3])
    assert config["tune"][0]["width"] == 4  # the declared default, written out
    err = refused(
        tmp_path,
        capsys,
        plugin_file,
        "--pretrain",
        "none",
        "--tune",
        "widths",
        "--dataset",
        "medsynth",
        "--cfg-options",
        "tune.0.width=wide",
    )
    assert "tuning strategy 'widths'" in err and "option 'width'" in err and "a whole number" in err
    assert "tune.0.width=VALUE" in err


def test_misspelt_dataset_option(tmp_path, capsys):
    err = refused(
        tmp_path,
        capsys,
        None,
        "--pretrain",
        "mr",
        "--tune",
        "direct",
        "--dataset",
        "medsynth",
        "--cfg-options",
        "pretrain.corpus.options.n_vall=20",
    )
    assert "dataset 'medsynth-captions'" in err and "'n_vall'" in err and "Did you mean 'n_val'" in err
    err = refused(
        tmp_path,
        capsys,
        None,
        "--pretrain",
        "none",
        "--tune",
        "direct",
        "--dataset",
        "medsynth",
        "--cfg-options",
        "dataset.options.n_train=many",
    )
    assert "dataset 'medsynth'" in err and "option 'n_train'" in err and "dataset.options.n_train=VALUE" in err


def test_misspelt_quirk_of_a_builtin(tmp_path, capsys):
    err = refused(
        tmp_path,
        capsys,
        None,
        "--pretrain",
        "mr",
        "--tune",
        "direct",
        "--dataset",
        "medsynth",
        "--cfg-options",
        "pretrain.quirks={'fresh_teacherr': True}",
    )
    assert "pre-training strategy 'mr'" in err and "'fresh_teacherr'" in err and "Did you mean 'fresh_teacher'" in err


def test_misspelt_preset_name(tmp_path, capsys, plugin_file):
    err = refused(
        tmp_path,
        capsys,
        plugin_file,
        "--pretrain",
        "none",
        "--tune",
        "preset-typo",
        "--dataset",
        "medsynth",
        "--preset",
        "small",
    )
    assert "tuning strategy 'preset-typo'" in err and "author_plugin" in err and "no preset 'small'" in err
    assert "'smal' looks like a misspelling of 'small'" in err
    err = refused(
        tmp_path, capsys, None, "--pretrain", "none", "--tune", "direct", "--dataset", "medsynth", "--preset", "tinny"
    )
    assert "unknown preset 'tinny'" in err and "Did you mean 'tiny'" in err


def test_plugin_error_says_fix_the_option_only_when_it_names_one(tmp_path, capsys, plugin_file):
    err = refused(tmp_path, capsys, plugin_file, "--pretrain", "none", "--tune", "broken", "--dataset", "medsynth")
    assert "depth must be 1 here" in err and "Fix the option it names (depth)" in err and "tune.<i>.depth=" in err
    err = refused(
        tmp_path,
        capsys,
        plugin_file,
        "--pretrain",
        "none",
        "--tune",
        "broken",
        "--dataset",
        "medsynth",
        "--cfg-options",
        "tune.0.depth=1",
    )
    assert "internal lookup table is empty" in err and "Fix the option" not in err
    assert "fault is in the plugin" in err and "author_plugin" in err


@pytest.mark.parametrize(
    "suite, expected",
    [
        ("strategy-typo-suite", ["row 'a'", "tuning strategy 'dirct'", "Did you mean 'direct'"]),
        ("dataset-typo-suite", ["its datasets", "dataset 'medsynht'", "Did you mean 'medsynth'"]),
    ],
)
def test_misspelt_name_in_a_suite(tmp_path, capsys, plugin_file, suite, expected):
    code = main(
        ["sweep", "--plugin-path", plugin_file, "--suite", suite, "--work-dir", str(tmp_path / "wd"), "--dry-run"]
    )
    assert code == 2
    err = one_paragraph_error(capsys)
    assert f"suite {suite!r}" in err and "author_plugin" in err
    for text in expected:
        assert text in err


def test_builtin_presets_pass_their_own_checks():
    from umdbench.plan import options
    from umdbench.plan.config import _task_cls
    from umdbench.plugin import load_plugins

    registries, _ = load_plugins()  # the installed plugins only (no --plugin-path of an earlier test)
    for kind in ("pretrain", "tune"):
        registry = getattr(registries, kind)
        for name in registry.names():
            cls = registry.get(name)
            for preset in cls.presets:
                for dataset in registries.dataset.names():
                    task = _task_cls(registries, dataset, pretraining=kind == "pretrain")
                    options.check_preset(registry, name, cls, preset, task, registries)


# -- part 3: a --plugin-path that fails to load -----------------------------------------------------------
@pytest.mark.parametrize(
    "source, line, what",
    [
        (
            "import os\nraise RuntimeError('no weights here')\n",
            "line 2: raise RuntimeError('no weights here')",
            "RuntimeError: no weights here",
        ),
        (
            "from umdbench.hookspecs import hookimpl\n@hookimpl\ndef umdbench_register(registries):\n"
            "    registries.tune.register('not-a-strategy', dict)\n",
            "line 4: registries.tune.register('not-a-strategy', dict)",
            "RegistryTypeError",
        ),
        ("def oops(:\n", "line 1: def oops(:", "SyntaxError"),
    ],
)
def test_failing_plugin_path_is_an_error(tmp_path, capsys, source, line, what):
    broken = tmp_path / "broken_plugin.py"
    broken.write_text(source)
    err = refused(tmp_path, capsys, str(broken), "--pretrain", "none", "--tune", "direct", "--dataset", "medsynth")
    assert f"--plugin-path {str(broken)!r} failed to load" in err and f"{broken}, {line}" in err and what in err


# -- part 2: compatibility ----------------------------------------------------------------------------------
needs_brain = pytest.importorskip


def test_image_text_pretraining_on_a_3d_encoder_is_refused(tmp_path, capsys):
    needs_brain("umdbench_brain")
    err = refused(
        tmp_path,
        capsys,
        None,
        "--pretrain",
        "mr",
        "--tune",
        "direct",
        "--dataset",
        "medsynth",
        "--encoder",
        "resunet3d",
    )
    assert "pre-training strategy 'mr'" in err and "'coattn' encoders" in err and "'resunet3d'" in err
    assert "datasets 'mr' fits" in err and "vqa-rad" in err
    err = refused(tmp_path, capsys, None, "--pretrain", "mr", "--tune", "seg", "--dataset", "brainsynth")
    assert "pre-training strategy 'mr'" in err and "'volumes' data" in err
    assert "fit 'brainsynth'" in err and "brainmvp" in err and "mae3d" in err


def test_direct_on_a_segmentation_dataset_is_refused(tmp_path, capsys):
    needs_brain("umdbench_brain")
    err = refused(tmp_path, capsys, None, "--pretrain", "none", "--tune", "direct", "--dataset", "brainsynth")
    assert "tuning strategy 'direct'" in err and "task type 'segmentation'" in err
    assert "Tuning strategies that fit 'brainsynth' on encoder 'resunet3d': seg, seg-tmpl" in err
    assert "datasets 'direct' fits" in err and "medsynth" in err


def test_brainmvp_on_a_vqa_dataset_is_refused(tmp_path, capsys):
    needs_brain("umdbench_brain")
    err = refused(tmp_path, capsys, None, "--pretrain", "brainmvp", "--tune", "direct", "--dataset", "medsynth")
    assert "pre-training strategy 'brainmvp'" in err and "umdbench-brain" in err
    assert "corpus 'medsynth-captions' gives 'pretrain' data" in err and "'volumes' data" in err
    assert "fit 'medsynth' on encoder 'coattn': clip, flip, m3ae, mae, mr" in err
    assert "datasets 'brainmvp' fits" in err and "brainsynth" in err


def test_incompatible_suite_row_is_refused_before_planning(tmp_path, capsys):
    needs_brain("umdbench_brain")
    plugin = tmp_path / "suite_plugin.py"
    plugin.write_text(
        textwrap.dedent("""
        from umdbench.hookspecs import hookimpl

        @hookimpl
        def umdbench_register(registries):
            registries.suite.register("mixed-up", {"title": "x", "datasets": ["brainsynth"], "metrics": ["dice"],
                                                   "rows": [{"name": "vqa baseline", "pretrain": "none",
                                                             "tune": "direct"}]})
    """)
    )
    code = main(
        ["sweep", "--plugin-path", str(plugin), "--suite", "mixed-up", "--work-dir", str(tmp_path / "wd"), "--dry-run"]
    )
    assert code == 2
    err = one_paragraph_error(capsys)
    assert "suite 'mixed-up'" in err and "row 'vqa baseline' on 'brainsynth'" in err and "seg, seg-tmpl" in err

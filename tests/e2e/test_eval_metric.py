"""`eval.metric`: a registered metric scores an existing dataset (per run with --cfg-options, per
suite with its overrides); it enters the evaluation's key only, so cells that differ in it share
every trained stage. Also: an evaluation whose task records no per-example labels logs no
"got empty results" warning."""

from __future__ import annotations

import re

import pytest
import torch

from umdbench.cli import main
from umdbench.data.catalog import DataCatalog
from umdbench.errors import ConfigError
from umdbench.plan.config import CellSpec, resolve
from umdbench.plan.stage_plan import build_plan
from umdbench.plan.suites import Suite
from umdbench.plugin import load_plugins
from umdbench.results.store import ResultsStore
from umdbench.run.prediction_recorder import PredictionRecorder

SMALL = [
    "data.num_workers=0",
    "model.image_size=32",
    "data.eval_batch_size=50",
    "dataset.options.n_train=64",
    "dataset.options.n_val=20",
    "dataset.options.n_test=50",
    "tune.0.train.max_iters=3",
    "tune.0.train.batch_size=8",
]


@pytest.fixture(scope="module")
def registries():
    return load_plugins()[0]


def plan(registries, *overrides, pretrain="mr", tune=("tdcalib", "gmcoord")):
    run = resolve(CellSpec(pretrain, tune, "medsynth", overrides=tuple(overrides)), registries)
    return run, build_plan(run, registries, DataCatalog(registries))


def test_the_metric_enters_the_evaluation_key_only(registries):
    run, default = plan(registries)
    assert run.config["eval"] == {"split": "test", "metric": "vqa-accuracy"}  # the dataset's default, written out
    _, other = plan(registries, ("eval.metric", "classification"))
    assert [s.key for s in other[:-1]] == [s.key for s in default[:-1]]  # pre-training, TD-Calib, GM-Coord shared
    assert other[-1].key != default[-1].key and other[-1].cfg["metric"] == "classification"
    # the metric's module is hashed into the evaluation's code key
    assert other[-1].key_inputs["code"]["targets"] == [registries.metric.target("classification")]
    assert default[-1].key_inputs["code"]["targets"] == [registries.metric.target("vqa-accuracy")]
    # naming the default, or null, is the default cell
    for value in ("vqa-accuracy", None):
        assert plan(registries, ("eval.metric", value))[1][-1].key == default[-1].key


def test_a_misspelt_metric_is_refused_when_planned(registries):
    with pytest.raises(ConfigError) as err:
        resolve(CellSpec("none", ("direct",), "medsynth", overrides=(("eval.metric", "vqa-acuracy"),)), registries)
    message = str(err.value)
    assert "eval.metric='vqa-acuracy'" in message and "Did you mean 'vqa-accuracy'" in message
    assert "scores with 'vqa-accuracy' by default" in message


def test_dry_run_refuses_a_misspelt_metric_and_shows_the_chosen_one(capsys):
    base = ["run", "--pretrain", "none", "--tune", "direct", "--dataset", "medsynth", "--dry-run"]
    assert main(base + ["--cfg-options", "eval.metric=clasification"]) == 2
    assert "Did you mean 'classification'" in capsys.readouterr().err
    assert main(base + ["--cfg-options", "eval.metric=classification"]) == 0
    assert re.search(r"evaluate .* metric classification", capsys.readouterr().out)


def test_a_suite_chooses_the_metric_in_its_overrides(registries):
    spec = {
        "title": "t",
        "datasets": ["medsynth"],
        "metrics": ["accuracy"],
        "overrides": {"eval.metric": "classification"},
        "rows": [{"name": "scratch", "pretrain": "none", "tune": "direct"}],
    }
    (cell,) = Suite.from_spec("metric-suite", spec).cell_specs()
    run = resolve(cell, registries)
    assert run.config["eval"]["metric"] == "classification"
    stages = build_plan(run, registries, DataCatalog(registries))
    _, plain = plan(registries, pretrain="none", tune=("direct",))
    assert stages[0].key == plain[0].key and stages[-1].key != plain[-1].key


def test_an_evaluation_without_per_example_labels_logs_no_empty_results_warning(monkeypatch):
    import mmengine.evaluator.metric as base

    logged = []
    monkeypatch.setattr(base, "print_log", lambda msg, *a, **k: logged.append(msg))
    rec = PredictionRecorder()
    assert logged == []  # it has a prefix: no "prefix is not set" either
    # a segmentation batch: per-voxel logits, no [B] label
    rec.process(
        None, [{"seg_logits": torch.zeros(2, 3, 4, 4, 4), "seg": torch.zeros(2, 3, 4, 4, 4), "index": torch.arange(2)}]
    )
    assert rec.evaluate(2) == {} and rec.arrays is None
    assert not any("empty" in str(m) for m in logged), logged


@pytest.mark.slow
def test_two_runs_that_differ_only_in_the_metric_share_every_trained_stage(tmp_path, capsys):
    base = [
        "run",
        "--pretrain",
        "none",
        "--tune",
        "direct",
        "--dataset",
        "medsynth",
        "--work-dir",
        str(tmp_path),
        "--cfg-options",
        *SMALL,
    ]
    assert main(base) == 0
    first = capsys.readouterr().out
    assert "tune direct: training" in first
    assert main(base + ["eval.metric=classification"]) == 0
    second = capsys.readouterr().out
    assert not re.search(r": (training|resuming) ", second), second  # nothing trained
    assert "tune direct: reusing cached artifact" in second and "with metric classification" in second
    rows = {r["config"]["eval"]["metric"]: r for r in ResultsStore(tmp_path / "results.sqlite").rows()}
    assert set(rows) == {"vqa-accuracy", "classification"}
    assert set(rows["vqa-accuracy"]["metrics"]) >= {"open", "closed", "overall"}
    assert set(rows["classification"]["metrics"]) >= {"accuracy", "auc", "sensitivity", "specificity"}
    assert rows["vqa-accuracy"]["stage_keys"] == rows["classification"]["stage_keys"]
    assert rows["vqa-accuracy"]["cell_key"] != rows["classification"]["cell_key"]
    assert rows["classification"]["plugins"]["metric:classification"]
    assert len(list((tmp_path / "stages").glob("*/artifact.json"))) == 1

"""Planning of brain cells: test-only options share trained stages; the label-efficiency suite."""

import pytest

from umdbench.data.catalog import DataCatalog
from umdbench.plan.config import CellSpec, resolve
from umdbench.plan.stage_plan import build_plan
from umdbench.plan.suites import get_suite
from umdbench.plugin import load_plugins

# every plan generates the phantom splits it checks: once per test worker (conftest.py)
pytestmark = pytest.mark.usefixtures("memo_phantoms")


def plan(spec: CellSpec):
    registries = load_plugins()[0]
    return build_plan(resolve(spec, registries), registries, DataCatalog(registries))


def test_test_time_drops_reuse_the_trained_stages_and_change_only_the_evaluation():
    cells = [
        plan(CellSpec("mae3d", ("seg",), "brainsynth", overrides=(("dataset.options.test_drop", n),)))
        for n in (0, 1, 2)
    ]
    pretrain, tune, evaluation = zip(*cells)
    assert len({s.key for s in pretrain}) == 1 and len({s.key for s in tune}) == 1
    assert len({s.key for s in evaluation}) == 3
    assert "test_drop" not in tune[0].data["options"]  # the stage is built without it, too
    assert evaluation[2].data["options"]["test_drop"] == 2


def test_label_efficiency_suite_varies_the_share_of_the_tuning_stage_only():
    registries = load_plugins()[0]
    suite = get_suite(registries, "brain-label-efficiency")
    fractions = suite.vary_values
    assert fractions[-1] == 1.0 and all(0 < f < 1 for f in fractions[:-1])
    stages = [
        plan(CellSpec("brainmvp", ("seg-tmpl",), "brainsynth", overrides=(("tune.0.train.label_fraction", f),)))
        for f in fractions
    ]
    assert len({s[0].key for s in stages}) == 1  # one pre-training for every share
    assert len({s[1].key for s in stages}) == len(fractions)
    assert [s[1].cfg["train"]["label_fraction"] for s in stages] == list(fractions)

"""``train.label_fraction``: tuning stages train on a seeded share of the training split."""

import pytest

from umdbench.errors import ConfigError
from umdbench.plan.config import CellSpec, resolve
from umdbench.plan.stage_plan import build_plan
from umdbench.plugin import load_plugins
from umdbench.run.build_data import build_dataset, label_subset
from umdbench.run.context import RunContext


def test_a_share_is_seeded_nested_ordered_and_never_empty():
    records = [f"r{i:02d}" for i in range(40)]
    assert label_subset(records, 1.0, 0) is records
    tenth, quarter, half = (label_subset(records, f, 3) for f in (0.1, 0.25, 0.5))
    assert (len(tenth), len(quarter), len(half)) == (4, 10, 20)  # round(fraction x n)
    assert set(tenth) < set(quarter) < set(half)  # one permutation per seed, prefixes of it
    assert half == sorted(half)  # split order kept
    assert label_subset(records, 0.5, 3) == half  # the same seed draws the same share
    assert label_subset(records, 0.5, 4) != half  # another seed another one
    assert label_subset(records[:3], 0.01, 0) and len(label_subset(records[:3], 0.01, 0)) == 1


@pytest.mark.parametrize("where, value", [("tune.0", 0.0), ("tune.0", 1.5), ("tune.0", "half"), ("pretrain", 0.5)])
def test_a_bad_share_is_refused_when_the_run_is_planned(where, value):
    registries = load_plugins()[0]
    spec = CellSpec("mr", ("direct",), "medsynth", overrides=((f"{where}.train.label_fraction", value),))
    with pytest.raises(ConfigError, match="label_fraction"):
        resolve(spec, registries)


def test_the_tuning_stage_trains_on_the_share_and_evaluates_on_everything(tmp_path):
    registries = load_plugins()[0]
    run = resolve(
        CellSpec("none", ("direct",), "medsynth", overrides=(("tune.0.train.label_fraction", 0.25),)), registries
    )
    ctx = RunContext(tmp_path / "work", registries)
    tune, evaluation = build_plan(run, registries, ctx.catalog)
    whole = ctx.catalog.get(tune.data).records("train")
    train_set, _ = build_dataset(tune, run, ctx, "train", training=True)
    assert len(train_set) == round(0.25 * len(whole))
    test_set, _ = build_dataset(evaluation, run, ctx, evaluation.data["split"], training=False)
    assert len(test_set) == len(ctx.catalog.get(evaluation.data).records(evaluation.data["split"]))

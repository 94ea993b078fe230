"""run_cell (umdbench.run.cell): a planned cell trains its stages, is evaluated and stored as one row with
its provenance; a second call finds the row and neither trains nor evaluates; store_result keeps a row
stored before.

One tiny `none / direct / medsynth` cell (2 steps of batch 4 on the embedded data) is run once per module.
"""

from __future__ import annotations

import json

import pytest

from tests.support import TINY
from umdbench.plan.config import CellSpec, parse_override, resolve
from umdbench.plan.stage_plan import build_plan
from umdbench.plugin import get_registries
from umdbench.run.cell import run_cell, store_result
from umdbench.run.context import RunContext


def _never(*args):
    raise AssertionError("a stored cell trained a stage again")


@pytest.fixture(scope="module")
def cell(tmp_path_factory):
    """The cell, planned and run once: (run, stages, context, row)."""
    registries = get_registries(reload=True)
    overrides = tuple(parse_override(o) for o in TINY if not o.startswith("pretrain."))
    run = resolve(CellSpec("none", ("direct",), "medsynth", overrides=overrides), registries)
    ctx = RunContext(tmp_path_factory.mktemp("cell") / "work", registries)
    stages = build_plan(run, registries, ctx.catalog)
    return run, stages, ctx, run_cell(run, stages, ctx)


def test_a_cell_trains_its_stages_and_stores_one_row_with_provenance(cell):
    run, stages, ctx, row = cell
    tune, evaluation = stages
    assert ctx.ws.is_trained(tune) and ctx.ws.weights_path(tune).is_file()
    assert row["cell_key"] == evaluation.key and row["stage_keys"] == [tune.key]
    assert (row["pretrain"], row["tune"], row["dataset"], row["preset"], row["seed"]) == (
        "none",
        "direct",
        "medsynth",
        "tiny",
        0,
    )
    assert "overall" in row["metrics"]
    assert row["config_hash"] == run.hash and row["data_fingerprint"] == evaluation.data["fingerprint"]
    # provenance: the code, the packages and the plugins behind the number, and where it ran
    assert row["git_commit"] and row["device"] and "torch" in row["packages"]
    assert {"tune:direct", "dataset:medsynth", "encoder:" + run.config["model"]["type"]} <= set(row["plugins"])
    assert row["schedule"][tune.key]["world_size"] == 1 and row["wall_time_s"] > 0
    # the compute column's FLOPs: counted on the stage's first step, times its steps (umdbench.run.flops)
    assert row["schedule"][tune.key]["train_flops"] > 0
    stored = ctx.ws.store.get(evaluation.key)
    assert {k: v for k, v in stored.items() if k != "created_at"} == row
    result = json.loads(ctx.ws.result_path(evaluation.key).read_text())
    assert result["cell_key"] == evaluation.key and "config" not in result
    plan = json.loads((ctx.ws.run_dir(evaluation.key) / "config.json").read_text())["plan"]
    assert [p["key"] for p in plan] == [tune.key, evaluation.key]


def test_a_stored_cell_is_returned_without_training_or_evaluating(cell, capsys):
    run, stages, ctx, row = cell
    ctx.ws.result_path(row["cell_key"]).unlink()  # a work dir that lost its runs/ files
    again = run_cell(run, stages, RunContext(ctx.ws.work_dir, ctx.registries), train=_never)
    assert again == ctx.ws.store.get(row["cell_key"])
    assert "result already in the store" in capsys.readouterr().out
    assert json.loads(ctx.ws.result_path(row["cell_key"]).read_text())["cell_key"] == row["cell_key"]  # written again


def test_store_result_keeps_the_row_stored_before(cell):
    run, stages, ctx, row = cell
    kept = store_result(run, stages, {"overall": -1.0}, 0.0, ctx)
    assert kept["metrics"] == row["metrics"] and ctx.ws.store.get(row["cell_key"])["metrics"] == row["metrics"]
    assert json.loads(ctx.ws.result_path(row["cell_key"]).read_text())["metrics"] == row["metrics"]


def test_the_same_stage_started_twice_in_one_second_logs_to_each_work_dir(cell, tmp_path, monkeypatch):
    # mmengine keys a runner's logger and message hub by its experiment name and timestamp (to the
    # second); two runs of one stage in one process (two work dirs) must each log into their own
    import mmengine.runner.runner as runner_module

    from umdbench.run.train_and_evaluate import train_stage

    run, (tune, _), _, _ = cell
    monkeypatch.setattr(runner_module.time, "strftime", lambda fmt, *args: "20990101_000000")
    for name in ("a", "b"):
        ctx = RunContext(tmp_path / name, get_registries())
        train_stage(tune, run, ctx, "[test]")
        (log,) = ctx.ws.train_dir(tune).rglob("20990101_000000.log")
        assert str(ctx.ws.train_dir(tune)) in log.read_text(), name  # the runner logged its own work dir

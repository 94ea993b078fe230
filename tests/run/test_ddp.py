"""Two-process CPU data-parallel (gloo) training of one tiny stage through torchrun."""

import json

import pytest

from tests.support import TINY
from umdbench.plan.config import CellSpec, parse_override, resolve
from umdbench.plan.stage_plan import build_plan
from umdbench.plugin import get_registries
from umdbench.run.context import RunContext

pytestmark = pytest.mark.serial  # torchrun with two processes


@pytest.mark.slow
def test_two_process_ddp_stage(tmp_path):
    from umdbench.run.distributed import launch_stage

    registries = get_registries(reload=True)
    overrides = tuple(parse_override(o) for o in TINY if not o.startswith(("pretrain.", "tune.*")))
    overrides += (("tune.0.train.max_iters", 2), ("tune.0.train.batch_size", 4))
    run = resolve(CellSpec("none", ("direct",), "medsynth", overrides=overrides), registries)
    ctx = RunContext(tmp_path / "work", registries)
    stages = build_plan(run, registries, ctx.catalog)
    stage = stages[0]
    stage_dir = launch_stage(stage, run, ctx, nproc=2, timeout=400)
    meta = json.loads((stage_dir / "artifact.json").read_text())
    assert meta["key"] == stage.key and (stage_dir / "model.safetensors").is_file()
    assert meta["world_size"] == 2
    # the artifact is an ordinary cached stage: a single-process evaluation can use it
    from umdbench.run.cell import run_cell

    row = run_cell(run, stages, ctx)
    assert "overall" in row["metrics"]
    # the row says how each stage was trained, and what of it depends on that (nothing, here)
    schedule = row["schedule"][stage.key]
    assert {k: schedule[k] for k in ("world_size", "micro_batches", "exceptions", "device")} == {
        "world_size": 2,
        "micro_batches": 1,
        "exceptions": [],
        "device": "cpu",
    }
    assert schedule["threads"] >= 1 and schedule["wall_time_s"] > 0  # what a board's compute column counts
    assert ctx.ws.store.get(row["cell_key"])["schedule"] == row["schedule"]

"""Real torchrun stages (2 gloo processes) against the same stage trained by one process.

The equivalence cases (tests/run/test_world_size_invariance.py) drive the training step directly; these
go through everything a stage is: the keyed loader, the mmengine Runner, its model wrapper and
logging. Training here is fp32, where a parameter whose gradient is zero by construction (attention
key biases) is moved by AdamW on rounding noise, so whole-stage comparisons use the norm of the
change over all tensors together.
"""

import json

import pytest

from umdbench.plan.config import CellSpec, parse_override, resolve
from umdbench.plan.stage_plan import build_plan
from umdbench.plugin import get_registries
from umdbench.run.build_strategy import build_strategy
from umdbench.run.cell import run_cell
from umdbench.run.checkpoint import safe_torch_load
from umdbench.run.context import RunContext
from umdbench.run.distributed import launch_stage
from umdbench.run.train_and_evaluate import train_stage

pytestmark = pytest.mark.serial  # torchrun with two processes

COMMON = ["dataset.options.n_train=16", "dataset.options.n_val=4", "dataset.options.n_test=8", "data.num_workers=0"]


def _run(registries, pretrain, tune, stage_overrides):
    corpus = ["pretrain.corpus.options.n=16"] if pretrain != "none" else []
    overrides = tuple(parse_override(o) for o in COMMON + corpus + stage_overrides)
    return resolve(CellSpec(pretrain, (tune,), "medsynth", overrides=overrides), registries)


def _last_checkpoint_state(ctx, stage) -> dict:
    checkpoints = sorted(ctx.ws.train_dir(stage).rglob("iter_*.pth"), key=lambda p: int(p.stem.split("_")[1]))
    return safe_torch_load(checkpoints[-1])["state_dict"]


def _relative_change_difference(got: dict, ref: dict, start: dict) -> tuple[float, float]:
    """``(||(got - start) - (ref - start)|| / ||ref - start||, ||ref - start||)`` over all tensors."""
    diff = sum(float(((got[k].float() - ref[k].float()) ** 2).sum()) for k in ref)
    moved = sum(float(((ref[k].float() - start[k].float()) ** 2).sum()) for k in ref)
    return (diff / max(moved, 1e-30)) ** 0.5, moved**0.5


@pytest.mark.slow
def test_two_rank_mr_stage_moves_its_ema_teacher_as_one_process(tmp_path):
    registries = get_registries(reload=True)
    run = _run(
        registries,
        "mr",
        "direct",
        [
            "pretrain.train.max_iters=3",
            "pretrain.train.batch_size=8",
            "pretrain.train.amp=false",
            "pretrain.train.checkpoint_interval=3",
        ],
    )
    one, two = RunContext(tmp_path / "one", registries), RunContext(tmp_path / "two", registries)
    stage = build_plan(run, registries, one.catalog)[0]
    assert stage.kind == "pretrain"
    start = {f"strategy.teacher.{k}": v for k, v in build_strategy(stage, run, one).encoder.state_dict().items()}
    train_stage(stage, run, one, "[1 process]")
    launch_stage(stage, run, two, nproc=2, timeout=600)
    assert json.loads((two.ws.stage_dir(stage) / "artifact.json").read_text())["world_size"] == 2
    ref = {k: v for k, v in _last_checkpoint_state(one, stage).items() if k.startswith("strategy.teacher.")}
    got = _last_checkpoint_state(two, stage)
    assert ref.keys() == start.keys()
    difference, moved = _relative_change_difference(got, ref, start)
    assert moved > 0, "the one-process teacher moved"
    assert difference < 1e-3, f"the 2-rank teacher moved differently ({difference:.2e} of its move)"
    # and the student, stored as the artifact, ended in the same place
    a1, a2 = one.ws.load_stage(stage), two.ws.load_stage(stage)
    student_start = {k: v for k, v in build_strategy(stage, run, one).state_dict().items() if k in a1}
    difference, _ = _relative_change_difference(a2, a1, student_start)
    assert difference < 1e-3


@pytest.mark.slow
def test_two_rank_gmcoord_stage_logs_and_applies_k_and_rho_every_step_and_evaluates_in_one_process(tmp_path):
    registries = get_registries(reload=True)
    run = _run(
        registries,
        "none",
        "gmcoord",
        [
            "tune.0.train.max_iters=3",
            "tune.0.train.batch_size=8",
            "tune.0.train.amp=false",
            "tune.0.train.log_interval=1",
        ],
    )
    ctx = RunContext(tmp_path / "two", registries)
    stages = build_plan(run, registries, ctx.catalog)
    stage = stages[0]
    stage_dir = launch_stage(stage, run, ctx, nproc=2, timeout=600)
    meta = json.loads((stage_dir / "artifact.json").read_text())
    assert meta["key"] == stage.key and meta["world_size"] == 2 and (stage_dir / "model.safetensors").is_file()
    (scalars,) = ctx.ws.train_dir(stage).rglob("scalars.json")
    rows = [json.loads(line) for line in scalars.read_text().splitlines() if line.strip()]
    logged = [r for r in rows if "k_I" in r]
    assert [r["step"] for r in logged] == [1, 2, 3], rows
    for r in logged:
        assert {"k_T", "rho_I", "rho_T"} <= set(r)
        assert min(r["k_I"], r["k_T"]) < 1.0  # one modality is damped each step: the gradients were modulated
    # the artifact is an ordinary cached stage: a single-process evaluation uses it, and the row
    # says how each stage was trained and what of it depends on that (nothing, here)
    row = run_cell(run, stages, ctx)
    assert "overall" in row["metrics"]
    schedule = row["schedule"][stage.key]
    assert {k: schedule[k] for k in ("world_size", "micro_batches", "exceptions", "device")} == {
        "world_size": 2,
        "micro_batches": 1,
        "exceptions": [],
        "device": "cpu",
    }
    assert schedule["threads"] >= 1 and schedule["wall_time_s"] > 0  # what a board's compute column counts
    assert ctx.ws.store.get(row["cell_key"])["schedule"] == row["schedule"]

"""A BrainMVP pre-training stage as two torchrun ranks (gloo) computes what one process computes:
its step counter advances on every rank, so the contrastive term starts at the same step, with the
same global-batch value."""

import json
from pathlib import Path

import pytest
import torch

from umdbench.plan.config import CellSpec, parse_override, resolve
from umdbench.plan.stage_plan import build_plan
from umdbench.plugin import get_registries
from umdbench.run.context import RunContext

pytestmark = pytest.mark.serial  # torchrun with two processes

ITERS, CONTRAST_START = 4, 2
OVERRIDES = [
    "data.num_workers=0",
    "model.roi_size=16",
    f"pretrain.train.max_iters={ITERS}",
    "pretrain.train.batch_size=4",
    "pretrain.train.log_interval=1",
    "pretrain.corpus.options.canvas=32",
    "pretrain.corpus.options.n_train=8",
    f"pretrain.contrast_start_frac={CONTRAST_START / ITERS}",
    "pretrain.block_size=4",
]


def train(work_dir: Path, nproc: int) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """The stage's logged scalars per step and its artifact's state."""
    from safetensors.torch import load_file

    from umdbench.run.distributed import launch_stage
    from umdbench.run.train_and_evaluate import train_stage

    registries = get_registries(reload=True)
    cell = CellSpec(
        "brainmvp",
        ("seg",),
        "brainsynth",
        encoder="uniformer3d",  # the released backbone: BatchNorm
        overrides=tuple(parse_override(o) for o in OVERRIDES),
    )
    run = resolve(cell, registries)
    ctx = RunContext(work_dir, registries)
    stage = build_plan(run, registries, ctx.catalog)[0]
    stage_dir = (
        launch_stage(stage, run, ctx, nproc, timeout=400) if nproc > 1 else train_stage(stage, run, ctx, "pretrain")
    )
    (scalars,) = stage_dir.glob("train/*/vis_data/scalars.json")
    return [json.loads(line) for line in scalars.read_text().splitlines()], load_file(stage_dir / "model.safetensors")


@pytest.mark.slow
def test_two_ranks_start_the_contrastive_term_at_the_step_one_process_does(tmp_path):
    one_log, one = train(tmp_path / "one", 1)
    two_log, two = train(tmp_path / "two", 2)
    for log in (one_log, two_log):
        assert [row["step"] for row in log] == list(range(1, ITERS + 1))
        # row t is optimiser step t (0-based; mmengine's iter t + 1): the term is on from step CONTRAST_START
        assert [("loss_contrast" in row) for row in log] == [t >= CONTRAST_START for t in range(ITERS)]
    for a, b in zip(one_log[CONTRAST_START:], two_log[CONTRAST_START:]):
        # the global-batch InfoNCE: rank 0 logs the one-process value
        assert b["loss_contrast"] == pytest.approx(a["loss_contrast"], rel=1e-3)
    # the float32 weights are compared by the equivalence harness, in float64 (test_world_size_invariance):
    # here Adam's step on near-zero gradients (biases before an instance norm, the zero-initialised
    # templates) turns float32 rounding into visible differences
    assert int(one["steps_done"]) == int(two["steps_done"]) == ITERS

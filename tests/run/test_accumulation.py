"""Gradient accumulation (``train.accumulative_counts``): N micro-batches per optimiser step give
the update of the whole batch, the schedule counts optimiser steps, and a bad value is a one-
paragraph config error before anything trains."""

import pytest
import torch

from benchmarks.cases import build_case
from umdbench.errors import ConfigError
from umdbench.plan.config import check_accumulation
from umdbench.run.build_optim import build_optim_wrapper, lr_schedule


def _step_gradients(accum: int) -> dict[str, torch.Tensor]:
    """The gradients the optimiser steps with, after ``accum`` micro-batches of the same 8 samples."""
    case = build_case("direct", "tiny", batch_size=8, seed=3)
    case.model.eval()  # no dropout: the two paths compute the same function
    train = {**case.train, "accumulative_counts": accum, "step_in_backward": False, "grad_clip": None}
    optim = build_optim_wrapper(case.strategy, train)
    optim.initialize_count_status(case.model, 0, accum)  # as IterBasedTrainLoop does
    seen: list[dict] = []
    step = optim.step

    def recording_step(**kwargs):
        seen.append({n: p.grad.detach().clone() for n, p in case.strategy.named_parameters() if p.grad is not None})
        step(**kwargs)

    optim.step = recording_step
    micro = 8 // accum
    for i in range(accum):
        case.model.train_step({k: v[i * micro : (i + 1) * micro] for k, v in case.batch.items()}, optim)
    assert len(seen) == 1, "one optimiser step per accumulated batch"
    return seen[0]


def test_two_micro_batches_make_the_gradient_of_the_whole_batch():
    whole, accumulated = _step_gradients(1), _step_gradients(2)
    assert whole.keys() == accumulated.keys() and any(g.abs().sum() > 0 for g in whole.values())
    for name in whole:
        torch.testing.assert_close(accumulated[name], whole[name], atol=1e-6, rtol=1e-4, msg=name)


def test_schedule_bounds_count_optimiser_steps():
    plain = lr_schedule({"max_iters": 100, "warmup_ratio": 0.1})
    accum = lr_schedule({"max_iters": 100, "warmup_ratio": 0.1, "accumulative_counts": 4})
    assert [(s["begin"], s["end"]) for s in plain] == [(0, 10), (10, 100)]
    assert [(s["begin"], s["end"]) for s in accum] == [(0, 40), (40, 400)]


def _config(accum, batch=16):
    return {"pretrain": {"type": "mr", "train": {"batch_size": batch, "accumulative_counts": accum}}, "tune": []}


def test_accumulating_stage_records_a_deviation_and_bad_values_are_config_errors():
    (deviation,) = check_accumulation(_config(4))
    assert "micro-batches of 4" in deviation and "in-batch negatives" in deviation
    assert check_accumulation(_config(1)) == []
    with pytest.raises(ConfigError, match="multiple of 3"):
        check_accumulation(_config(3))
    with pytest.raises(ConfigError, match="whole number"):
        check_accumulation(_config(0))

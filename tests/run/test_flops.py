"""The FLOPs a training stage records for the compute column (umdbench.run.flops)."""

import torch

from umdbench.run.flops import FlopCountHook


def _step(model, batch):
    model(batch).sum().backward()


def test_one_step_counted_and_scaled_to_the_stage():
    """A linear layer's micro-batch is 2·B·I·O forward plus 2·B·I·O backward (the weight's gradient;
    the input needs none); the stage total is the step times steps and processes, and only the first
    step is counted."""
    model = torch.nn.Linear(16, 8, bias=False)
    hook = FlopCountHook(micro_batches=2, world_size=2, steps=10)
    for i in range(4):  # two optimiser steps of two micro-batches of 4
        hook.before_train_iter(None, i)
        _step(model, torch.randn(4, 16))
        hook.after_train_iter(None, i)
    assert hook.step_flops == 2 * (4 * 4 * 16 * 8)
    assert hook.total() == hook.step_flops * 10 * 2


def test_nothing_counted_is_none_and_a_cut_step_leaves_no_mode_open():
    hook = FlopCountHook(steps=3)
    assert hook.total() is None
    hook.before_train_iter(None, 0)
    hook.after_train(None)  # stopped inside the counted step
    assert hook.total() is None
    _step(torch.nn.Linear(2, 2), torch.randn(1, 2))  # no counter left active

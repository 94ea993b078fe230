"""A training stage's floating-point operations, counted while it trains, for the boards' compute
column.

The hook counts one optimiser step (forward and backward of each of its micro-batches, activation
recomputation included) with torch's :class:`~torch.utils.flop_counter.FlopCounterMode`, on the
first step this process trains, and multiplies it by the stage's optimiser steps and its processes:
every step of a stage has the same shapes, and every process runs the same step on its share of the
batch. The optimiser's own arithmetic and data loading are not counted (they are a small part of a
step and torch's counter does not see them), and neither is evaluation. A count is an estimate of
the work, not a measurement of time: the boards show it beside the measured core- or GPU-hours.
"""

from __future__ import annotations

from mmengine.hooks import Hook
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["FlopCountHook"]


class FlopCountHook(Hook):
    """Counts the FLOPs of the first optimiser step it sees; :meth:`total` is the stage's estimate."""

    priority = "VERY_HIGH"  # enter before, and leave after, every other hook's share of the iteration

    def __init__(self, micro_batches: int = 1, world_size: int = 1, steps: int = 0):
        self.micro_batches, self.world_size, self.steps = int(micro_batches), int(world_size), int(steps)
        self.step_flops: int | None = None
        self._mode: FlopCounterMode | None = None
        self._seen = 0

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        if self.step_flops is not None or self._mode is not None or batch_idx % self.micro_batches:
            return  # counting starts at a step's first micro-batch
        self._mode = FlopCounterMode(display=False)
        self._mode.__enter__()

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if self._mode is None:
            return
        self._seen += 1
        if self._seen < self.micro_batches:
            return
        self._mode.__exit__(None, None, None)
        self.step_flops, self._mode = int(self._mode.get_total_flops()), None

    def after_train(self, runner) -> None:
        self.close()

    def close(self) -> None:
        """Leave the counter if it is still on (training stopped, or raised, inside the counted step).
        mmengine calls no hook when training raises, so the caller closes it too: a counter left on
        stays on the thread's dispatch stack and slows every later torch call of the process."""
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            self._mode = None

    def total(self) -> int | None:
        """FLOPs of the whole stage (every optimiser step, every process); None when no step ran here."""
        if self.step_flops is None:
            return None
        return self.step_flops * self.steps * self.world_size

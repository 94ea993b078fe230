"""Random draws and batch-wide reductions that give the same numbers at any world size.

A training step's batch (``train.batch_size``, the *global* batch) may be split over data-parallel
processes and over accumulated micro-batches. What a strategy computes from it must not depend on
that split, so:

* a random draw made for one sample (an image or token mask, a crop, a modality choice) comes from a
  generator keyed by ``(seed, step, the sample's position in the global batch, stream)``:
  :func:`rand`, :func:`randn`, :func:`randint`, :func:`sample_generator`; a dataset item's draws come
  from :func:`item_rng`;
* a draw made once for the whole step (which samples get an ITM negative, gradient noise) is keyed
  by ``(seed, step, stream)``, the same on every rank: :func:`step_generator`;
* a comparison across samples (in-batch negatives) runs over the global batch: :func:`gather`
  (with gradients), :func:`gather_nograd`, :func:`global_positions`;
* a loss averaged over a count that varies per sample (masked tokens, real tokens, labelled rows)
  divides by the count of the whole global batch: :func:`global_mean`; a sum the strategy logs or
  uses (GM-Coord's contributions) is summed over ranks: :func:`all_sum`.

The core sets the step's context around each training forward (the stage's sampler knows every
sample's step and position). Outside a context (a unit test calling a strategy directly, an
evaluation) every function falls back to the process's RNG and the local batch, as plain torch
code would. Processes of one data-parallel group run the same step, so the rank-wide functions
are collective calls: every rank must make them, in the same order.

Gradient accumulation splits a step into micro-batches that run one after another, so a gather
or a global count there covers one micro-batch only; strategies say which of their terms couple
the samples of a batch (:meth:`umdbench.api.Strategy.batch_coupled_terms`), and an accumulating
stage records them as a deviation.
"""
from __future__ import annotations

import contextlib
import contextvars
import zlib
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["StepContext", "all_sum", "current", "gather", "gather_nograd", "global_mean", "global_positions",
           "item_context", "item_rng", "rand", "randint", "randn", "sample_generator", "step_context",
           "step_generator", "world"]


@dataclass(frozen=True)
class StepContext:
    """The training step being computed: its seed, optimiser step and, for each local sample, its
    position in the step's global batch (0 .. batch_size - 1, the one-process batch order)."""

    seed: int
    step: int
    positions: tuple[int, ...]


_STEP: contextvars.ContextVar[StepContext | None] = contextvars.ContextVar("umdbench_step", default=None)
_ITEM: contextvars.ContextVar[tuple[int, int, int] | None] = contextvars.ContextVar("umdbench_item", default=None)


@contextlib.contextmanager
def step_context(seed: int, step: int, positions):
    """Draws inside are keyed by ``(seed, step, position)`` (set by the core around a training forward)."""
    token = _STEP.set(StepContext(int(seed), int(step), tuple(int(p) for p in positions)))
    try:
        yield _STEP.get()
    finally:
        _STEP.reset(token)


def current() -> StepContext | None:
    return _STEP.get()


def _stream(name: str | int) -> int:
    return name if isinstance(name, int) else zlib.crc32(str(name).encode())


def _key(*parts: int) -> int:
    """A 63-bit generator seed from integers (SeedSequence mixes them; neighbours are unrelated)."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFFFFFFFFFF for p in parts]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def _generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(_key(*parts))


def _positions(n: int) -> tuple[int, ...] | None:
    ctx = _STEP.get()
    if ctx is None:
        return None
    if len(ctx.positions) != n:
        raise ValueError(f"a per-sample draw for {n} samples inside a step of {len(ctx.positions)} local samples: "
                         f"draw one row per sample of the batch")
    return ctx.positions


def sample_generator(i: int, stream: str | int) -> torch.Generator | None:
    """The CPU generator of local sample ``i`` for ``stream`` in this step (None outside a step)."""
    ctx = _STEP.get()
    if ctx is None:
        return None
    return _generator(ctx.seed, ctx.step, ctx.positions[i], _stream(stream))


def _per_sample(fn, n: int, shape: tuple, stream, device, dtype) -> torch.Tensor:
    positions = _positions(n)
    if positions is None:
        return fn((n, *shape), generator=None, device=device, dtype=dtype)
    ctx = _STEP.get()
    rows = [fn(shape, generator=_generator(ctx.seed, ctx.step, p, _stream(stream)), device="cpu", dtype=dtype)
            for p in positions]
    out = torch.stack(rows) if rows else fn((0, *shape), generator=None, device="cpu", dtype=dtype)
    return out.to(device) if device is not None else out


def rand(n: int, *shape: int, stream: str | int, device=None, dtype=torch.float32) -> torch.Tensor:
    """``[n, *shape]`` uniform [0, 1): row ``i`` drawn for local sample ``i``."""
    return _per_sample(lambda s, generator, device, dtype: torch.rand(s, generator=generator, device=device, dtype=dtype),
                       n, shape, stream, device, dtype)


def randn(n: int, *shape: int, stream: str | int, device=None, dtype=torch.float32) -> torch.Tensor:
    """``[n, *shape]`` standard normal: row ``i`` drawn for local sample ``i``."""
    return _per_sample(lambda s, generator, device, dtype: torch.randn(s, generator=generator, device=device, dtype=dtype),
                       n, shape, stream, device, dtype)


def randint(low: int, high: int, n: int, *shape: int, stream: str | int, device=None) -> torch.Tensor:
    """``[n, *shape]`` integers in [low, high): row ``i`` drawn for local sample ``i``."""
    return _per_sample(lambda s, generator, device, dtype: torch.randint(low, high, s, generator=generator,
                                                                          device=device, dtype=dtype),
                       n, shape, stream, device, torch.long)


def step_generator(stream: str | int) -> torch.Generator | None:
    """A CPU generator for a draw made once per step, the same on every rank (None outside a step:
    the caller then uses the process RNG)."""
    ctx = _STEP.get()
    if ctx is None:
        return None
    return _generator(ctx.seed, ctx.step, -1, _stream(stream))


# -- dataset items --------------------------------------------------------------------------------
@contextlib.contextmanager
def item_context(seed: int, step: int, position: int):
    """Set by the stage's data loader around loading one training item."""
    token = _ITEM.set((int(seed), int(step), int(position)))
    try:
        yield
    finally:
        _ITEM.reset(token)


def item_rng(stream: str | int = "item") -> np.random.Generator | None:
    """The numpy generator of the training item being loaded (crops, flips, intensity jitter),
    keyed by ``(seed, step, position, stream)``; None when the item is loaded outside a keyed
    training loader (the dataset then uses its own generator)."""
    key = _ITEM.get()
    if key is None:
        return None
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([key[0], key[1] & 0xFFFFFFFF, key[2],
                                                                       _stream(stream)])))


# -- reductions over the data-parallel group -------------------------------------------------------
def world() -> tuple[int, int]:
    """``(rank, world size)`` of the data-parallel group; ``(0, 1)`` without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather(x: torch.Tensor) -> torch.Tensor:
    """``x`` ([b, ...]) of every rank, concatenated in rank order, with gradients: the backward
    pass hands each rank the gradient of every rank's loss for its slice. Same shape on every rank."""
    if world()[1] < 2:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


def gather_nograd(x: torch.Tensor) -> torch.Tensor:
    """``x`` of every rank, concatenated in rank order, without gradients."""
    if world()[1] < 2:
        return x
    import torch.distributed as dist

    x = x.detach().contiguous()
    parts = [torch.empty_like(x) for _ in range(world()[1])]
    dist.all_gather(parts, x)
    return torch.cat(parts, dim=0)


def global_positions(n: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(positions of the gathered batch [n x world], index of this rank's samples in it [n])``.

    Outside a step the ranks' local orders, one after another, stand in for the positions."""
    positions = _positions(n)
    rank, size = world()
    local = torch.arange(rank * n, (rank + 1) * n, device=device) if positions is None else \
        torch.tensor(positions, device=device)
    every = gather_nograd(local)
    return every, torch.arange(rank * n, (rank + 1) * n, device=every.device)


def all_sum(x: torch.Tensor) -> torch.Tensor:
    """``x`` summed over ranks (no gradient); ``x`` itself without a group."""
    if world()[1] < 2:
        return x
    import torch.distributed as dist

    x = x.detach().clone()
    dist.all_reduce(x)
    return x


def global_mean(total: torch.Tensor, count: torch.Tensor | float) -> torch.Tensor:
    """``total / count`` where ``count`` is summed over the data-parallel group, scaled by the world
    size: DDP averages the ranks' gradients, so the average is the gradient of the global-batch mean
    (the loss one process computes on the whole batch). The value on one rank is its share
    (x world size), not the global mean."""
    count = torch.as_tensor(count, dtype=torch.float32, device=total.device)
    size = world()[1]
    if size < 2:
        return total / count.clamp_min(1.0)
    return total * size / all_sum(count).clamp_min(1.0)

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

__all__ = [
    "StepContext",
    "all_sum",
    "current",
    "gather",
    "gather_nograd",
    "global_mean",
    "global_positions",
    "item_context",
    "item_rng",
    "rand",
    "randint",
    "randn",
    "sample_generator",
    "step_context",
    "step_generator",
    "world",
]


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


# -- counter-based draws -------------------------------------------------------------------------------
# A draw is a hash of (seed, step, position, stream, element index): SplitMix64's finaliser, computed on
# int64 tensors wherever the batch lives (CPU or GPU), so a batch of 256 samples costs a few kernels,
# not 256 generators. int64 arithmetic wraps around (two's complement) in torch, as the hash needs.
_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _signed(value: int) -> int:
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


_M1, _M2, _G = _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB), _signed(_GOLDEN)


def _mix_int(x: int) -> int:
    """SplitMix64's finaliser on a Python int (the reference the tensor version must equal)."""
    x &= _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _mix(x: torch.Tensor) -> torch.Tensor:
    """:func:`_mix_int` elementwise on int64 (logical shifts by masking the sign extension)."""
    x = x ^ ((x >> 30) & ((1 << 34) - 1))
    x = x * _M1
    x = x ^ ((x >> 27) & ((1 << 37) - 1))
    x = x * _M2
    return x ^ ((x >> 31) & ((1 << 33) - 1))


def _key(*parts: int) -> int:
    """A 64-bit key from integers: each part is mixed into the running hash."""
    h = 0
    for p in parts:
        h = _mix_int(h ^ ((int(p) + _GOLDEN) & _MASK64))
    return h


def _bits(n: int, count: int, stream, device) -> torch.Tensor:
    """``[n, count]`` 64-bit hashes: row ``i`` of local sample ``i``, column ``j`` its j-th draw."""
    ctx = _STEP.get()
    keys = torch.tensor(
        [_signed(_key(ctx.seed, ctx.step, p, _stream(stream))) for p in ctx.positions], dtype=torch.long, device=device
    )
    counters = torch.arange(1, count + 1, dtype=torch.long, device=device) * _G
    return _mix(keys[:, None] ^ counters[None, :])


def _uniform(bits: torch.Tensor, dtype) -> torch.Tensor:
    """Uniform [0, 1) from hashes: 24 bits for float32 and below (exactly representable), 53 for float64."""
    if dtype == torch.float64:
        return ((bits >> 11) & ((1 << 53) - 1)).to(torch.float64) * 2.0**-53
    return (((bits >> 40) & ((1 << 24) - 1)).to(torch.float32) * 2.0**-24).to(dtype)


def _positions(n: int) -> tuple[int, ...] | None:
    ctx = _STEP.get()
    if ctx is None:
        return None
    if len(ctx.positions) != n:
        raise ValueError(
            f"a per-sample draw for {n} samples inside a step of {len(ctx.positions)} local samples: "
            f"draw one row per sample of the batch"
        )
    return ctx.positions


def _numel(shape: tuple) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out


def sample_generator(i: int, stream: str | int) -> torch.Generator | None:
    """A CPU generator of local sample ``i`` for ``stream`` in this step (None outside a step), for
    draws the tensor functions below do not cover (a per-sample Python decision)."""
    ctx = _STEP.get()
    if ctx is None:
        return None
    return torch.Generator().manual_seed(_key(ctx.seed, ctx.step, ctx.positions[i], _stream(stream)) >> 1)


def rand(n: int, *shape: int, stream: str | int, device=None, dtype=torch.float32) -> torch.Tensor:
    """``[n, *shape]`` uniform [0, 1): row ``i`` drawn for local sample ``i``."""
    if _positions(n) is None:
        return torch.rand((n, *shape), device=device, dtype=dtype)
    return _uniform(_bits(n, _numel(shape), stream, device), dtype).view(n, *shape)


def randn(n: int, *shape: int, stream: str | int, device=None, dtype=torch.float32) -> torch.Tensor:
    """``[n, *shape]`` standard normal (Box-Muller on two uniforms): row ``i`` drawn for sample ``i``."""
    if _positions(n) is None:
        return torch.randn((n, *shape), device=device, dtype=dtype)
    m = _numel(shape)
    u = _uniform(_bits(n, 2 * m, stream, device), torch.float64)
    z = torch.sqrt(-2.0 * torch.log1p(-u[:, :m])) * torch.cos(2.0 * torch.pi * u[:, m:])
    return z.to(dtype).view(n, *shape)


def randint(low: int, high: int, n: int, *shape: int, stream: str | int, device=None) -> torch.Tensor:
    """``[n, *shape]`` integers in [low, high): row ``i`` drawn for local sample ``i``."""
    if _positions(n) is None:
        return torch.randint(low, high, (n, *shape), device=device)
    bits = (_bits(n, _numel(shape), stream, device) >> 11) & ((1 << 53) - 1)
    return (bits % (int(high) - int(low)) + int(low)).view(n, *shape)


def step_generator(stream: str | int) -> torch.Generator | None:
    """A CPU generator for a draw made once per step, the same on every rank (None outside a step:
    the caller then uses the process RNG)."""
    ctx = _STEP.get()
    if ctx is None:
        return None
    return torch.Generator().manual_seed(_key(ctx.seed, ctx.step, -1, _stream(stream)) >> 1)


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
    return np.random.Generator(
        np.random.PCG64(np.random.SeedSequence([key[0], key[1] & 0xFFFFFFFF, key[2], _stream(stream)]))
    )


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
    local = (
        torch.arange(rank * n, (rank + 1) * n, device=device)
        if positions is None
        else torch.tensor(positions, device=device)
    )
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

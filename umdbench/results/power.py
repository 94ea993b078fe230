"""How many seeds and test examples a difference needs: a power planner from stored predictions.

A board compares each row with its reference on the same test examples. The paired difference of
two rows' mean scores over ``S`` seeds and ``n`` examples varies for three reasons, each estimated
from the per-example predictions of the stored rows (every row paired with the reference):

* ``fixed``: how much the two rows' expected scores differ from example to example (the part more
  seeds cannot average away);
* ``noise``: how much one example's score moves from seed to seed (averaged away by seeds);
* ``run``: how much a whole seed moves a row's overall score beyond its examples' noise (a seed
  that trained worse everywhere; averaged away by seeds only).

Var(difference) = fixed / n + noise / (S n) + 2 run / S. A true difference Δ is resolved (the 95 %
interval excludes 0) in 80 % of repeats when Δ >= 2.80 x its standard error (1.96 + 0.84). The
planner says, for each seed count, the smallest Δ the split's n resolves and the n a given Δ needs.
With 1 stored seed the seed terms cannot be estimated and are left out (so the answer is optimistic,
and says so).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Components", "POWER_FACTOR", "components", "plan_text", "resolvable", "examples_needed"]

POWER_FACTOR = 1.96 + 0.84  # two-sided 5 %, 80 % power


@dataclass(frozen=True)
class Components:
    fixed: float  # per-example variance of the expected paired difference (fraction^2)
    noise: float  # per-example seed-to-seed variance, both rows together
    run: float  # one row's seed-level variance beyond its examples' noise
    n: int  # test examples of the split
    seeds: int  # seeds stored per row (the smallest)
    pairs: int  # row pairs the estimate pools


def _pair(row: np.ndarray, ref: np.ndarray) -> tuple[float, float, float]:
    row, ref = np.atleast_2d(row).astype(float), np.atleast_2d(ref).astype(float)
    n = row.shape[1]
    d = row.mean(0) - ref.mean(0)
    seeds = min(len(row), len(ref))
    if seeds < 2:
        return float(d.var(ddof=1)), 0.0, 0.0
    noise = float(row.var(0, ddof=1).mean() + ref.var(0, ddof=1).mean())  # per example, both rows
    # var of the per-example mean difference = fixed + noise / S  (S = the seeds each row averaged)
    fixed = max(
        0.0, float(d.var(ddof=1)) - (row.var(0, ddof=1).mean() / len(row) + ref.var(0, ddof=1).mean() / len(ref))
    )
    run = 0.0
    for m in (row, ref):
        seed_means = m.mean(1)
        run += max(0.0, float(seed_means.var(ddof=1)) - float(m.var(0, ddof=1).mean()) / n) / 2
    return fixed, noise, run


def components(pairs: list[tuple[np.ndarray, np.ndarray]]) -> Components | None:
    """Pooled (median over the pairs) variance components of row-vs-reference pairs."""
    if not pairs:
        return None
    parts = np.array([_pair(a, b) for a, b in pairs])
    seeds = min(min(len(np.atleast_2d(a)), len(np.atleast_2d(b))) for a, b in pairs)
    n = np.atleast_2d(pairs[0][0]).shape[1]
    fixed, noise, run = (float(np.median(parts[:, k])) for k in range(3))
    return Components(fixed, noise, run, n, seeds, len(pairs))


def standard_error(c: Components, seeds: int, n: int) -> float:
    return math.sqrt(c.fixed / n + c.noise / (seeds * n) + 2 * c.run / seeds)


def resolvable(c: Components, seeds: int, n: int | None = None) -> float:
    """The smallest true difference (points) resolved in 80 % of repeats."""
    return 100 * POWER_FACTOR * standard_error(c, seeds, n or c.n)


def examples_needed(c: Components, seeds: int, difference: float) -> int | None:
    """Test examples a ``difference`` (points) needs with ``seeds`` seeds; None when the seed terms
    alone already exceed it (more seeds, not more examples, are needed)."""
    target = (difference / 100 / POWER_FACTOR) ** 2 - 2 * c.run / seeds
    if target <= 0:
        return None
    return int(math.ceil((c.fixed + c.noise / seeds) / target))


def plan_text(label: str, c: Components, difference: float, seed_counts=(1, 3, 5, 10)) -> str:
    lines = [f"{label}: n = {c.n} test examples, {c.seeds} seed(s) stored, {c.pairs} row pairs pooled"]
    if c.seeds < 2:
        lines.append("  (one seed stored: seed-to-seed variation cannot be estimated and is left out; optimistic)")
    for s in seed_counts:
        need = examples_needed(c, s, difference)
        need_text = (
            f"needs {need} examples"
            if need is not None
            else "is out of reach by examples alone (seed-to-seed variation; more seeds)"
        )
        lines.append(
            f"  {s:>2} seeds: resolves {resolvable(c, s):.2f} points with these {c.n} examples; "
            f"a {difference:g}-point difference {need_text}"
        )
    return "\n".join(lines)

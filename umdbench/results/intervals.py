"""Uncertainty of a leaderboard cell from its stored per-example predictions.

A cell is a matrix ``C[s, i]`` (1 if seed ``s`` got test question ``i`` right). Its number is the
mean over seeds of the per-seed accuracy; two things make it uncertain: which seeds were run and
which questions the finite test split happens to hold. Both are resampled together:

* **cell interval**: each bootstrap replicate draws the questions with replacement (one draw,
  shared by every seed: the seeds answered the same questions, so a hard question is hard for all
  of them) and, when there is more than one seed, the seeds with replacement; the 95 % interval
  is the 2.5th/97.5th percentile of the replicates' mean accuracy.
* **difference from the reference row**: on the per-question differences
  ``d_i = mean_s C_row[s, i] - mean_s C_ref[s, i]`` (seeds combined per question; the seeds'
  disagreement enters through ``d_i``, and the cell intervals resample seeds too). The 95 %
  interval bootstraps the questions (paired: one draw for both rows); its half-width is the
  smallest difference the test split resolves at these accuracies. Significance: a paired
  sign-flip permutation test, under "no difference" each ``d_i`` is as likely to have the other
  sign: ``p = (1 + #{|mean(flipped d)| >= |mean(d)|}) / (1 + permutations)``, significant when
  ``p < 0.05``.

A cell whose metric is AUC has no per-question values to average: its evidence is the seeds'
class probabilities (:class:`umdbench.results.auc.ClassScores`), and every replicate, permuted
pair and observed value recomputes the AUC (:mod:`umdbench.results.auc`); the draws, percentiles
and seed resampling are the ones above.

Every random draw comes from ``numpy.random.default_rng(SEED)``, so a table is reproducible.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from umdbench.results import auc
from umdbench.results.auc import ClassScores

SEED = 20240406  # fixed: the same store renders the same intervals
BOOTSTRAP = 2000
PERMUTATIONS = 10000
ALPHA = 0.05


@dataclass(frozen=True)
class Interval:
    mean: float  # percent
    low: float
    high: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


@dataclass(frozen=True)
class Comparison:
    diff: Interval  # row - reference, percent
    p: float
    p_holm: float | None = None  # Holm-adjusted over the family of rows compared with one reference

    @property
    def significant(self) -> bool:
        """Significant at ALPHA, family-wise when the Holm-adjusted p is known."""
        return (self.p if self.p_holm is None else self.p_holm) < ALPHA


def holm(p_values: dict) -> dict:
    """Holm's step-down adjustment of a family of p-values (``{name: p}`` -> ``{name: adjusted}``):
    the i-th smallest is multiplied by (m - i + 1), made monotone, capped at 1. Rejecting where the
    adjusted value is below ALPHA keeps the family-wise error rate at ALPHA for any dependence."""
    order = sorted(p_values, key=p_values.get)
    m, running, out = len(order), 0.0, {}
    for i, name in enumerate(order):
        running = max(running, min(1.0, (m - i) * p_values[name]))
        out[name] = running
    return out


@dataclass(frozen=True)
class RankInterval:
    rank: float  # of the observed means, 1 = best
    low: float
    high: float


def rank_intervals(corrects: dict, draws: int = BOOTSTRAP, seed: int = SEED, higher_is_better: bool = True) -> dict:
    """Each row's rank among ``corrects`` (``{name: correct [S, n]}``, the same n examples) with a
    95 % bootstrap interval: every replicate draws the examples once for all rows (the rows were
    scored on the same examples) and each row's seeds, ranks the replicate means (ties share the
    mean rank), and the interval is the 2.5 and 97.5 percentiles of each row's ranks."""
    names = list(corrects)
    mats = [_evidence(corrects[n]) for n in names]
    picks, weights, rng = _question_draws(mats[0].shape[1], seed, draws)
    reps = np.stack([_replicates(m, picks, weights, rng) for m in mats], axis=1)  # [draws, rows]
    sign = -1.0 if higher_is_better else 1.0

    def ranks(values: np.ndarray) -> np.ndarray:
        key = sign * values
        less = (key[..., :, None] > key[..., None, :]).sum(-1)
        equal = (key[..., :, None] == key[..., None, :]).sum(-1)
        return less + (equal + 1) / 2.0

    observed = ranks(np.array([m.mean() for m in mats]))
    rep_ranks = ranks(reps)
    out = {}
    for j, name in enumerate(names):
        low = np.percentile(rep_ranks[:, j], 100 * ALPHA / 2, method="lower")  # ranks are discrete
        high = np.percentile(rep_ranks[:, j], 100 * (1 - ALPHA / 2), method="higher")
        out[name] = RankInterval(float(observed[j]), float(low), float(high))
    return out


def _evidence(cell):
    """A cell's evidence as the functions here take it: ``ClassScores`` as is, else ``[S, n]`` floats."""
    return cell if isinstance(cell, ClassScores) else np.atleast_2d(np.asarray(cell, dtype=np.float64))


def _per_seed(cell, picks: np.ndarray, question_weights: np.ndarray) -> np.ndarray:
    """Each seed's value on every resample, [B, S]."""
    if isinstance(cell, ClassScores):
        return auc.replicates(cell, picks)
    return question_weights @ cell.T.astype(np.float64) / cell.shape[1]  # [B, S]: each seed's accuracy


def _replicates(cell, picks: np.ndarray, question_weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The cell's value per replicate: ``picks [B, n]`` are the drawn questions, ``question_weights
    [B, n]`` how often each was drawn (sum n); the seeds are drawn here (counts [B, S])."""
    per_seed = _per_seed(cell, picks, question_weights)
    seeds = per_seed.shape[1]
    if seeds == 1:
        return per_seed[:, 0]
    chosen = rng.integers(0, seeds, size=(len(question_weights), seeds))
    return np.take_along_axis(per_seed, chosen, axis=1).mean(axis=1)


def _question_draws(n: int, seed: int, draws: int) -> tuple[np.ndarray, np.ndarray, np.random.Generator]:
    """``(picks [draws, n], weights [draws, n], rng)``: the questions each of ``draws`` resamples of
    ``default_rng(seed)`` drew, how often each of the ``n`` questions was drawn in it, and the
    generator where those draws left it (the seeds are drawn from it next)."""
    picks, weights, state = _draws_of(seed, n, draws)
    rng = np.random.default_rng(seed)
    rng.bit_generator.state = state
    return picks, weights, rng


@functools.lru_cache(maxsize=4)
def _draws_of(seed: int, n: int, draws: int) -> tuple[np.ndarray, np.ndarray, dict]:
    # the same (seed, n) draws every time: a board's cells share a test split, so they are drawn once
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n, size=(draws, n))
    flat = picks + (np.arange(draws) * n)[:, None]
    weights = np.bincount(flat.ravel(), minlength=draws * n).reshape(draws, n).astype(np.float64)
    picks.setflags(write=False), weights.setflags(write=False)
    return picks, weights, rng.bit_generator.state


@functools.lru_cache(maxsize=2)
def _signs_of(seed: int, n: int, permutations: int) -> np.ndarray:
    """The sign patterns of :func:`sign_flip_p` ([permutations, n], 0/1 as int8), drawn once per split."""
    rng = np.random.default_rng(seed)
    chunks = [
        rng.integers(0, 2, size=(min(1000, permutations - start), n)).astype(np.int8)
        for start in range(0, permutations, 1000)
    ]
    out = np.concatenate(chunks)
    out.setflags(write=False)
    return out


def _percentiles(values: np.ndarray) -> tuple[float, float]:
    # nan-aware: an AUC replicate that drew no positive (or no negative) example has no value
    low, high = np.nanpercentile(values, [100 * ALPHA / 2, 100 * (1 - ALPHA / 2)])
    return float(low), float(high)


def cell_interval(correct, draws: int = BOOTSTRAP, seed: int = SEED) -> Interval:
    """Mean over seeds (percent) of ``correct [S, n]`` (or of a ``ClassScores``' AUC) with its 95 %
    bootstrap interval."""
    cell = _evidence(correct)
    picks, weights, rng = _question_draws(cell.shape[1], seed, draws)
    reps = _replicates(cell, picks, weights, rng)
    low, high = _percentiles(reps)
    return Interval(100 * float(cell.mean()), 100 * low, 100 * high)


def sign_flip_p(diffs: np.ndarray, permutations: int = PERMUTATIONS, seed: int = SEED) -> float:
    """Two-sided p of a paired sign-flip permutation test on per-question differences."""
    diffs = np.asarray(diffs, dtype=np.float64)
    observed = abs(diffs.mean())
    patterns = _signs_of(seed, len(diffs), permutations)
    # a question both rows score alike (most of them) adds 0 whatever its sign: only the others are
    # flipped, the same statistic at a fraction of the cost (a board makes hundreds of these tests)
    moving = np.flatnonzero(diffs)
    patterns, values = patterns[:, moving], diffs[moving]
    hits = 0
    for start in range(0, permutations, 1000):  # chunks keep memory at 1000 x n
        signs = patterns[start : start + 1000] * 2.0 - 1.0
        # a tolerance, so ties that differ only by rounding count as ties
        hits += int((np.abs(signs @ values / len(diffs)) >= observed - 1e-12).sum())
    return (1 + hits) / (1 + permutations)


def compare(
    row: np.ndarray, reference: np.ndarray, draws: int = BOOTSTRAP, seed: int = SEED, permutations: int = PERMUTATIONS
) -> Comparison:
    """``row - reference`` (percent) over the same questions, seeds averaged per question: paired
    bootstrap interval and sign-flip p. ``row [S1, n]``, ``reference [S2, n]`` (seed counts may differ)."""
    row, reference = _evidence(row), _evidence(reference)
    if row.shape[1] != reference.shape[1]:
        raise ValueError(f"rows scored different numbers of questions ({row.shape[1]} vs {reference.shape[1]})")
    if isinstance(row, ClassScores) or isinstance(reference, ClassScores):
        return _compare_auc(row, reference, draws, seed, permutations)
    diffs = row.mean(axis=0) - reference.mean(axis=0)
    reps = _question_draws(len(diffs), seed, draws)[1] @ diffs / len(diffs)
    low, high = _percentiles(reps)
    diff = Interval(100 * float(diffs.mean()), 100 * low, 100 * high)
    return Comparison(diff, sign_flip_p(diffs, permutations, seed))


def _compare_auc(row: ClassScores, reference: ClassScores, draws: int, seed: int, permutations: int) -> Comparison:
    """``compare`` for AUC: the difference of the rows' mean-over-seeds AUC, a paired bootstrap
    (one draw of the examples for both rows, seeds averaged as observed) and the swap test."""
    if not (isinstance(row, ClassScores) and isinstance(reference, ClassScores)):
        raise TypeError("an AUC can only be compared with another AUC")
    if not np.array_equal(row.label, reference.label):
        raise ValueError("rows scored the same examples with different labels")
    picks = _question_draws(row.shape[1], seed, draws)[0]
    reps = np.nanmean(auc.replicates(row, picks), axis=1) - np.nanmean(auc.replicates(reference, picks), axis=1)
    low, high = _percentiles(reps)
    diff = Interval(100 * (row.mean() - reference.mean()), 100 * low, 100 * high)
    return Comparison(diff, auc.permutation_p(row, reference, permutations, np.random.default_rng(seed)))

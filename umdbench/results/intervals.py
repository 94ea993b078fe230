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

Every random draw comes from ``numpy.random.default_rng(SEED)``, so a table is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
    mats = [np.atleast_2d(np.asarray(corrects[n], dtype=np.float64)) for n in names]
    rng = np.random.default_rng(seed)
    weights = _question_weights(mats[0].shape[1], rng, draws)
    reps = np.stack([_replicates(m, weights, rng) for m in mats], axis=1)  # [draws, rows]
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


def _replicates(correct: np.ndarray, question_weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mean accuracy per replicate: ``question_weights [B, n]`` are multinomial counts of each
    question (sum n); the seeds are drawn here (counts [B, S])."""
    seeds, n = correct.shape
    per_seed = question_weights @ correct.T.astype(np.float64) / n  # [B, S]: each seed's accuracy
    if seeds == 1:
        return per_seed[:, 0]
    picks = rng.integers(0, seeds, size=(len(question_weights), seeds))
    return np.take_along_axis(per_seed, picks, axis=1).mean(axis=1)


def _question_weights(n: int, rng: np.random.Generator, draws: int) -> np.ndarray:
    """How often each of ``n`` questions is drawn in each of ``draws`` resamples ([draws, n])."""
    picks = rng.integers(0, n, size=(draws, n)) + (np.arange(draws) * n)[:, None]
    return np.bincount(picks.ravel(), minlength=draws * n).reshape(draws, n).astype(np.float64)


def _percentiles(values: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(values, [100 * ALPHA / 2, 100 * (1 - ALPHA / 2)])
    return float(low), float(high)


def cell_interval(correct: np.ndarray, draws: int = BOOTSTRAP, seed: int = SEED) -> Interval:
    """Mean accuracy (percent) over seeds of ``correct [S, n]`` with its 95 % bootstrap interval."""
    correct = np.atleast_2d(np.asarray(correct))
    rng = np.random.default_rng(seed)
    reps = _replicates(correct, _question_weights(correct.shape[1], rng, draws), rng)
    low, high = _percentiles(reps)
    return Interval(100 * float(correct.mean()), 100 * low, 100 * high)


def sign_flip_p(diffs: np.ndarray, permutations: int = PERMUTATIONS, seed: int = SEED) -> float:
    """Two-sided p of a paired sign-flip permutation test on per-question differences."""
    diffs = np.asarray(diffs, dtype=np.float64)
    observed = abs(diffs.mean())
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, permutations, 1000):  # chunks keep memory at 1000 x n
        signs = rng.integers(0, 2, size=(min(1000, permutations - start), len(diffs))) * 2.0 - 1.0
        # a tolerance, so ties that differ only by rounding count as ties
        hits += int((np.abs(signs @ diffs / len(diffs)) >= observed - 1e-12).sum())
    return (1 + hits) / (1 + permutations)


def compare(
    row: np.ndarray, reference: np.ndarray, draws: int = BOOTSTRAP, seed: int = SEED, permutations: int = PERMUTATIONS
) -> Comparison:
    """``row - reference`` (percent) over the same questions, seeds averaged per question: paired
    bootstrap interval and sign-flip p. ``row [S1, n]``, ``reference [S2, n]`` (seed counts may differ)."""
    row, reference = np.atleast_2d(np.asarray(row)), np.atleast_2d(np.asarray(reference))
    if row.shape[1] != reference.shape[1]:
        raise ValueError(f"rows scored different numbers of questions ({row.shape[1]} vs {reference.shape[1]})")
    diffs = row.mean(axis=0) - reference.mean(axis=0)
    rng = np.random.default_rng(seed)
    reps = _question_weights(len(diffs), rng, draws) @ diffs / len(diffs)
    low, high = _percentiles(reps)
    diff = Interval(100 * float(diffs.mean()), 100 * low, 100 * high)
    return Comparison(diff, sign_flip_p(diffs, permutations, seed))

"""AUC of a leaderboard cell from its stored class probabilities, for intervals and paired tests.

Accuracy and Dice are means over test examples, so resampling examples and averaging is all their
intervals need (:mod:`umdbench.results.intervals`). AUC is not a mean: it ranks every positive
example against every negative one. A cell's evidence is therefore :class:`ClassScores`, each seed's
class probabilities and the labels, and every statistic here recomputes the AUC itself:

* the AUC is the classification metric's: one-vs-rest on the class probabilities, the
  Mann-Whitney form (a tie counts one half), averaged over the classes that have both positives
  and negatives among the examples (macro);
* a bootstrap replicate recomputes it on the resampled examples (a drawn example counts as often
  as it was drawn; a class that loses all its positives or negatives in a draw is left out of
  that replicate's average, as the metric leaves it out);
* the paired test between two rows swaps, per test example, the two rows' probabilities (all
  seeds together, seed k of one row with seed k of the other) and recomputes the difference of
  their mean AUCs: under "no difference" the two rows' scores of one example are exchangeable.
  Rows with different seed counts are swapped on their seed-averaged probabilities.

Numpy only; the random draws come from the caller's generator, so the board stays reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ClassScores", "auc_per_seed", "permutation_p", "replicates"]


@dataclass(frozen=True, eq=False)
class ClassScores:
    """One cell's evidence for its AUC: ``prob`` [seeds, n, classes] and ``label`` [n]."""

    prob: np.ndarray
    label: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        """(seeds, examples), as a correctness matrix's shape reads."""
        return self.prob.shape[0], self.prob.shape[1]

    def mean(self) -> float:
        """The cell's number as a fraction: the mean over seeds of each seed's AUC."""
        return float(np.mean(auc_per_seed(self)))


def _midranks(x: np.ndarray) -> np.ndarray:
    """Ranks (1-based) along the last axis, ties sharing the mean of their ranks."""
    n = x.shape[-1]
    order = np.argsort(x, axis=-1, kind="stable")
    s = np.take_along_axis(x, order, axis=-1)
    position = np.broadcast_to(np.arange(n), s.shape)
    starts = np.ones(s.shape, dtype=bool)
    starts[..., 1:] = s[..., 1:] != s[..., :-1]
    ends = np.ones(s.shape, dtype=bool)
    ends[..., :-1] = s[..., :-1] != s[..., 1:]
    first = np.maximum.accumulate(np.where(starts, position, 0), axis=-1)
    last = np.flip(np.minimum.accumulate(np.flip(np.where(ends, position, n - 1), -1), axis=-1), -1)
    ranks = np.empty(s.shape, dtype=np.float64)
    np.put_along_axis(ranks, order, (first + last) / 2.0 + 1.0, axis=-1)
    return ranks


def _macro_auc(prob: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Macro one-vs-rest AUC over the last two axes: ``prob`` [..., n, C], ``label`` [..., n]
    (broadcast against prob's leading axes); NaN where no class has both positives and negatives."""
    total = np.zeros(prob.shape[:-2])
    counted = np.zeros(prob.shape[:-2])
    n = prob.shape[-2]
    for c in range(prob.shape[-1]):
        positive = np.broadcast_to(label == c, prob.shape[:-1])
        pos = positive.sum(-1)
        neg = n - pos
        rank_sum = np.where(positive, _midranks(prob[..., c]), 0.0).sum(-1)
        usable = (pos > 0) & (neg > 0)
        value = (rank_sum - pos * (pos + 1) / 2.0) / np.where(usable, pos * neg, 1)
        total += np.where(usable, value, 0.0)
        counted += usable
    return np.where(counted > 0, total / np.maximum(counted, 1), np.nan)


def auc_per_seed(scores: ClassScores) -> np.ndarray:
    """Each seed's AUC (fraction), [seeds]."""
    return _macro_auc(scores.prob, scores.label)


def replicates(scores: ClassScores, picks: np.ndarray) -> np.ndarray:
    """Each seed's AUC on resampled examples: ``picks`` [draws, n] are the drawn example positions;
    returns [draws, seeds] (NaN in a draw where no class keeps both positives and negatives)."""
    label = scores.label[picks]  # [draws, n]
    return np.stack([_macro_auc(p[picks], label) for p in scores.prob], axis=1)


def permutation_p(row: ClassScores, reference: ClassScores, permutations: int, rng: np.random.Generator) -> float:
    """Two-sided p of the paired swap test of ``mean AUC(row) - mean AUC(reference)`` (module doc)."""
    a, b = row.prob, reference.prob
    if a.shape != b.shape:  # different seed counts: swap the seed-averaged probabilities
        a, b = a.mean(axis=0, keepdims=True), b.mean(axis=0, keepdims=True)
    label = row.label
    observed = abs(float(np.mean(_macro_auc(a, label)) - np.mean(_macro_auc(b, label))))
    hits = 0
    for start in range(0, permutations, 1000):  # chunks keep memory at 1000 x seeds x n x C
        swap = rng.integers(0, 2, size=(min(1000, permutations - start), a.shape[1])).astype(bool)
        mask = swap[:, None, :, None]  # [chunk, 1, n, 1] against [seeds, n, C]
        first = _macro_auc(np.where(mask, b, a), label).mean(axis=1)
        second = _macro_auc(np.where(mask, a, b), label).mean(axis=1)
        # a tolerance, so ties that differ only by rounding count as ties
        hits += int((np.abs(first - second) >= observed - 1e-12).sum())
    return (1 + hits) / (1 + permutations)

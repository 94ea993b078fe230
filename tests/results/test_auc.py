"""AUC intervals and paired tests from stored class probabilities (issue 32)."""

import itertools

import numpy as np
import pytest
import torch

from umdbench.results import auc, intervals
from umdbench.results.auc import ClassScores
from umdbench_plugins.metrics.classification import ClassificationMetric, classification_scores


def _scores(seeds: int, n: int, classes: int, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    label = rng.integers(0, classes, size=n)
    logits = rng.normal(size=(seeds, n, classes)).round(1)  # rounding makes ties
    logits[..., 0] += 0.8 * (label == 0)
    # the softmax the metric takes, so the stored probabilities are the ones it ranked
    return torch.softmax(torch.from_numpy(logits), dim=-1).numpy(), label, logits


@pytest.mark.parametrize("classes", [2, 3])
def test_auc_per_seed_is_the_classification_metrics_auc(classes):
    rng = np.random.default_rng(3)
    prob, label, logits = _scores(3, 30, classes, rng)
    ours = auc.auc_per_seed(ClassScores(prob, label))
    for s in range(3):
        metric = classification_scores(torch.from_numpy(logits[s]), torch.from_numpy(label))["auc"]
        assert 100 * ours[s] == pytest.approx(metric, abs=1e-4)  # torchmetrics returns float32


def test_replicates_equal_the_auc_of_each_resampled_set():
    rng = np.random.default_rng(4)
    prob, label, _ = _scores(2, 12, 2, rng)
    picks = rng.integers(0, 12, size=(5, 12))
    reps = auc.replicates(ClassScores(prob, label), picks)
    for b in range(5):
        for s in range(2):
            resampled = ClassScores(prob[s][picks[b]][None], label[picks[b]])
            assert reps[b, s] == pytest.approx(auc.auc_per_seed(resampled)[0])


def test_swap_test_matches_exact_enumeration():
    # 8 examples, one seed each: every one of the 2^8 swap patterns, counted by hand
    label = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    good = np.array([0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.2, 0.1])
    poor = np.array([0.5, 0.2, 0.6, 0.3, 0.4, 0.7, 0.1, 0.8])

    def as_scores(p0):
        return ClassScores(np.stack([p0, 1 - p0], -1)[None], label)

    row, ref = as_scores(good), as_scores(poor)
    observed = row.mean() - ref.mean()
    stats = []
    for swap in itertools.product((False, True), repeat=8):
        m = np.array(swap)
        stats.append(as_scores(np.where(m, poor, good)).mean() - as_scores(np.where(m, good, poor)).mean())
    exact = np.mean(np.abs(stats) >= abs(observed) - 1e-12)
    cmp = intervals.compare(row, ref)
    assert cmp.diff.mean == pytest.approx(100 * observed)
    assert cmp.p == pytest.approx(exact, abs=0.015)
    assert cmp.diff.low <= cmp.diff.mean <= cmp.diff.high


def test_identical_rows_differ_by_nothing_and_a_perfect_row_has_a_point_interval():
    rng = np.random.default_rng(5)
    prob, label, _ = _scores(3, 20, 2, rng)
    cell = ClassScores(prob, label)
    same = intervals.compare(cell, cell)
    assert same.p == 1.0 and same.diff.mean == 0 and same.diff.half_width == 0
    perfect = ClassScores(np.stack([label == 0, label != 0], -1)[None].astype(float), label)
    ci = intervals.cell_interval(perfect)
    assert (ci.mean, ci.low, ci.high) == (100.0, 100.0, 100.0)
    ci = intervals.cell_interval(cell)
    assert ci.low < ci.mean < ci.high
    ranks = intervals.rank_intervals({"perfect": ClassScores(np.repeat(perfect.prob, 3, 0), label), "cell": cell})
    assert ranks["perfect"].rank == 1 and ranks["cell"].rank == 2


def test_an_auc_is_compared_only_with_an_auc():
    cell = ClassScores(np.full((1, 4, 2), 0.5), np.array([0, 1, 0, 1]))
    with pytest.raises(TypeError):
        intervals.compare(cell, np.ones((1, 4)))


def test_the_metric_keeps_each_examples_probabilities_by_index():
    metric = ClassificationMetric()
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    metric.process(None, [{"logits": logits[:2], "label": torch.tensor([0, 1]), "index": torch.tensor([5, 2])}])
    metric.process(None, [{"logits": logits[2:], "label": torch.tensor([0]), "index": torch.tensor([7])}])
    out = metric.compute_metrics(metric.results)
    assert out["auc"] == pytest.approx(100.0)  # each class ranks all its examples above the others
    kept = metric.per_example
    assert kept["index"].tolist() == [5, 2, 7]
    assert kept["prob"] == pytest.approx(torch.softmax(logits.double(), -1).numpy())

"""Leaderboard uncertainty (issue 17, part 2): intervals and significance checked against exact
enumeration of the same resampling schemes on tiny arrays."""

import itertools
import math

import numpy as np
import pytest

from umdbench.errors import ConfigError
from umdbench.plan.suites import Suite
from umdbench.results import intervals
from umdbench.results.board_data import collect_suite_results
from umdbench.results.board_markdown import render_suite
from umdbench.run.workspace import Workspace


def exact_quantile_bracket(values, probs, lo_q, hi_q):
    """Values of an exact discrete distribution at cumulative probabilities lo_q and hi_q."""
    order = np.argsort(values)
    v, cdf = np.asarray(values)[order], np.cumsum(np.asarray(probs)[order])
    return v[np.searchsorted(cdf, lo_q)], v[np.searchsorted(cdf, hi_q)]


def test_one_seed_interval_matches_the_exact_bootstrap_distribution():
    # 14 of 20 right: a bootstrap resample's accuracy is Binomial(20, 0.7) / 20, exactly
    correct = np.array([1] * 14 + [0] * 6)
    values = [k / 20 * 100 for k in range(21)]
    probs = [math.comb(20, k) * 0.7**k * 0.3 ** (20 - k) for k in range(21)]
    ci = intervals.cell_interval(correct)
    assert ci.mean == pytest.approx(70.0)
    # the Monte Carlo percentile lies where the exact CDF passes 2.5 % (97.5 %), give or take 1 %
    lo_a, lo_b = exact_quantile_bracket(values, probs, 0.015, 0.035)
    hi_a, hi_b = exact_quantile_bracket(values, probs, 0.965, 0.985)
    assert lo_a <= ci.low <= lo_b and hi_a <= ci.high <= hi_b
    assert (ci.low, ci.high) == (50.0, 90.0)  # Binomial(20, .7): P(X <= 9) = 1.7 %, P(X <= 17) = 96.5 %


def test_two_seed_interval_matches_exact_enumeration_of_seeds_and_questions():
    # seeds drawn with replacement (4 equally likely pairs) x one shared draw of 4 questions (256)
    correct = np.array([[1, 1, 0, 1], [0, 1, 0, 0]])
    values = []
    for s1, s2 in itertools.product(range(2), repeat=2):
        for q in itertools.product(range(4), repeat=4):
            values.append(100 * (correct[s1, list(q)].mean() + correct[s2, list(q)].mean()) / 2)
    probs = np.full(len(values), 1 / len(values))
    ci = intervals.cell_interval(correct)
    assert ci.mean == pytest.approx(100 * 4 / 8)
    lo_a, lo_b = exact_quantile_bracket(values, probs, 0.015, 0.035)
    hi_a, hi_b = exact_quantile_bracket(values, probs, 0.965, 0.985)
    assert lo_a <= ci.low <= lo_b and hi_a <= ci.high <= hi_b
    # the seeds' disagreement widens the interval beyond the questions' alone
    assert ci.high - ci.low > intervals.cell_interval(correct.mean(axis=0, keepdims=True) > 0.5).half_width


def test_significance_matches_the_exact_sign_flip_test():
    row = np.array([[1, 1, 1, 1, 1, 1, 0, 1, 1, 0]])
    ref = np.array([[0, 0, 1, 0, 0, 0, 0, 0, 1, 0]])
    d = (row - ref).mean(axis=0)
    # exact: every one of the 2^10 sign patterns
    flips = [abs(np.dot(signs, d)) / len(d) for signs in itertools.product((-1, 1), repeat=len(d))]
    exact_p = np.mean(np.array(flips) >= abs(d.mean()) - 1e-12)
    cmp = intervals.compare(row, ref)
    # by hand: d has six +1s and four 0s; |mean| reaches 0.6 only when all six signs agree: 2 of 2^6
    assert exact_p == pytest.approx(2 / 64)
    assert cmp.p == pytest.approx(exact_p, abs=0.01)
    assert cmp.significant and cmp.diff.mean == pytest.approx(60.0)
    # the paired interval is the bootstrap of mean(d): exact over 10^10 is too many; its bounds
    # must be attainable means (multiples of 10 %) bracketing the observed difference
    assert cmp.diff.low < 60 < cmp.diff.high and cmp.diff.low > 0
    assert not intervals.compare(row[:, :5] * 0 + [[1, 1, 1, 1, 1]], ref[:, :5]).significant  # 2/32: p = .0625
    same = intervals.compare(ref, ref)
    assert same.p == 1.0 and not same.significant and same.diff.half_width == 0


def test_paired_difference_interval_matches_exact_enumeration():
    row = np.array([[1, 1, 0, 1], [1, 0, 0, 1]])
    ref = np.array([[0, 1, 0, 0]])
    d = row.mean(axis=0) - ref.mean(axis=0)
    values = [100 * d[list(q)].mean() for q in itertools.product(range(4), repeat=4)]
    probs = np.full(len(values), 1 / len(values))
    cmp = intervals.compare(row, ref)
    lo_a, lo_b = exact_quantile_bracket(values, probs, 0.015, 0.035)
    hi_a, hi_b = exact_quantile_bracket(values, probs, 0.965, 0.985)
    assert lo_a <= cmp.diff.low <= lo_b and hi_a <= cmp.diff.high <= hi_b
    # by hand: d = (1, -.5, 0, 1), sum 1.5; the signed sums of (1, .5, 1) are +-2.5, +-1.5, and
    # +-.5 twice, so |sum| >= 1.5 in 4 of 8 sign patterns: p = .5
    assert cmp.p == pytest.approx(0.5, abs=0.015) and not cmp.significant


def test_intervals_are_reproducible():
    rng = np.random.default_rng(1)
    c = (rng.random((3, 300)) < 0.6).astype(int)
    assert intervals.cell_interval(c) == intervals.cell_interval(c)
    assert intervals.compare(c, c[::-1]) == intervals.compare(c, c[::-1])


# -- the leaderboard -----------------------------------------------------------------------------
SPEC = {
    "title": "toy",
    "datasets": ["toy"],
    "metrics": ["open", "closed", "overall"],
    "rows": [
        {"name": "A", "pretrain": "none", "tune": "direct"},
        {"name": "B", "pretrain": "mr", "tune": "direct"},
        {"name": "C", "pretrain": "mr", "tune": "tdcalib+direct"},
    ],
}


def _add(ws, name, seed, correct, answer_type, with_predictions=True):
    key = f"{name}{seed}".ljust(32, "0")
    n = len(correct)
    ref = None
    if with_predictions:
        arrays = {
            "index": np.arange(n, dtype=np.int32),
            "pred": np.zeros(n, np.int32),
            "label": np.where(correct == 1, 0, 1).astype(np.int32),
            "correct": correct.astype(np.uint8),
            "answer_type": answer_type.astype(np.int8),
        }
        ws.write_predictions(key, arrays)
        ref = ws.predictions_ref(key)
    metrics = {
        "overall": 100 * correct.mean(),
        "open": 100 * correct[answer_type == 1].mean(),
        "closed": 100 * correct[answer_type == 0].mean(),
    }
    ws.store.add(
        {
            "cell_key": key,
            "suite": "toy",
            "cell_name": name,
            "pretrain": "none",
            "tune": "direct",
            "dataset": "toy",
            "preset": "tiny",
            "seed": seed,
            "metrics": metrics,
            "config": {},
            "config_hash": "h",
            "stage_keys": [],
            "git_commit": "c",
            "packages": {},
            "data_fingerprint": "f",
            "wall_time_s": 1.0,
            "device": "cpu",
            "predictions": ref,
        }
    )


def test_leaderboard_shows_intervals_markers_and_rows_without_predictions(tmp_path):
    ws = Workspace(tmp_path)
    rng = np.random.default_rng(0)
    answer_type = (np.arange(200) % 2).astype(int)
    for seed in (0, 1):
        _add(ws, "A", seed, (rng.random(200) < 0.5).astype(int), answer_type)
        _add(ws, "B", seed, (rng.random(200) < 0.9).astype(int), answer_type)  # clearly better
        _add(ws, "C", seed, (rng.random(200) < 0.5).astype(int), answer_type, with_predictions=False)  # an old row
    suite = Suite.from_spec("toy", SPEC)
    results = collect_suite_results(ws.store, suite)["tiny"]
    text = render_suite(suite, results, "tiny")
    a, b = (results.correct(n, "toy", "overall")[0] for n in ("A", "B"))
    ci_b = intervals.cell_interval(b)
    cmp = intervals.compare(b, a)
    assert f"[{ci_b.low:.2f}, {ci_b.high:.2f}] *" in text
    assert cmp.significant and f"{cmp.diff.mean:+.2f} [{cmp.diff.low:+.2f}, {cmp.diff.high:+.2f}]" in text
    assert "A (ref)" in text and "Smallest difference this test split resolves" in text
    assert "no interval for C: no per-example predictions stored" in text
    # the same store renders the same table (the footer's timestamp aside)
    again = render_suite(suite, collect_suite_results(ws.store, suite)["tiny"], "tiny")
    assert again.split("generated")[0] == text.split("generated")[0]


def test_reference_row_is_configurable(tmp_path):
    suite = Suite.from_spec("toy", {**SPEC, "reference": "B"})
    assert suite.reference_cell == "B"
    assert Suite.from_spec("toy", SPEC).reference_cell == "A"
    # a vary key must exist in every row's stages: the rows that pre-train
    vary = Suite.from_spec(
        "v",
        {**SPEC, "rows": SPEC["rows"][1:], "reference": "B", "vary": {"key": "pretrain.alpha", "values": [0.2, 0.5]}},
    )
    assert vary.reference_cell == "B alpha=0.2"
    with pytest.raises(ConfigError, match="'reference' 'Z' is not one of its rows"):
        Suite.from_spec("toy", {**SPEC, "reference": "Z"})

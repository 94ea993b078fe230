"""The boards' multiple-comparison control and rank intervals, checked by simulation."""

import numpy as np
import pytest

from umdbench.results import intervals


def test_holm_adjusts_step_down_and_stays_monotone():
    adjusted = intervals.holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.5})
    assert adjusted == pytest.approx({"a": 0.04, "b": 0.09, "c": 0.09, "d": 0.5})
    assert intervals.holm({}) == {}
    cmp = intervals.Comparison(intervals.Interval(1.0, 0.5, 1.5), p=0.01, p_holm=0.06)
    assert not cmp.significant and intervals.Comparison(cmp.diff, p=0.01).significant


def _table(rng, n, shifts, seeds):
    difficulty = rng.uniform(0.2, 0.9, n)  # per-example, shared by every row: the rows are paired
    return {
        f"r{i}": (rng.random((seeds, n)) < np.clip(difficulty + s, 0, 1)).astype(float) for i, s in enumerate(shifts)
    }


def test_over_null_tables_the_family_wise_false_positive_rate_stays_at_five_percent():
    rng = np.random.default_rng(0)
    any_holm = any_raw = 0
    tables = 300
    for t in range(tables):
        rows = _table(rng, 150, [0.0] * 6, 1)  # six rows of one true accuracy
        ref = rows.pop("r0")
        p = {k: intervals.sign_flip_p(v.mean(0) - ref.mean(0), permutations=400, seed=t) for k, v in rows.items()}
        any_holm += any(v < intervals.ALPHA for v in intervals.holm(p).values())
        any_raw += any(v < intervals.ALPHA for v in p.values())
    assert any_holm / tables <= 0.08  # about 5 % (binomial spread over 300 tables)
    assert any_raw / tables >= 0.10  # five raw tests at 5 % each star something far more often


def test_rank_intervals_cover_the_true_rank_and_narrow_as_rows_separate():
    rng = np.random.default_rng(1)
    covered = total = 0
    widths = {}
    for step in (0.005, 0.04):
        w = []
        for t in range(60):
            rows = _table(rng, 300, [step * (i - 2) for i in range(5)], 3)
            ranks = intervals.rank_intervals(rows, draws=300, seed=t)
            for i in range(5):
                r, true = ranks[f"r{i}"], 5 - i  # r4 has the highest accuracy: rank 1
                covered += r.low <= true <= r.high
                total += 1
                w.append(r.high - r.low)
        widths[step] = float(np.mean(w))
    assert covered / total >= 0.93  # measured: 0.99 (percentile intervals of ranks are conservative)
    assert widths[0.04] < widths[0.005] - 1.0

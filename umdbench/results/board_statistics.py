"""The statistics under a dataset's table, from the rows' stored per-example predictions: each row
against the suite's reference row (paired difference, its interval and Holm-adjusted p, the * in the
table) and each row's rank with its bootstrap interval (:mod:`umdbench.results.intervals` computes
them; this module words them)."""

from __future__ import annotations

import dataclasses
import statistics

import numpy as np
from tabulate import tabulate

from umdbench.results import intervals
from umdbench.results.board_data import SuiteResults
from umdbench.results.predictions import RANK_METRICS

__all__ = ["difference_lines", "holm_family", "rank_lines"]


def holm_family(results: SuiteResults, names, reference: str, dataset: str, metrics) -> dict:
    """``{metric: {row: Comparison}}`` against the reference, each metric's rows one family whose
    p-values are Holm-adjusted (a board runs several tests per dataset and metric)."""
    out = {}
    for m in metrics:
        found = {n: c for n in names if n != reference and (c := results.comparison(n, reference, dataset, m))}
        adjusted = intervals.holm({n: c.p for n, c in found.items()})
        out[m] = {n: dataclasses.replace(c, p_holm=adjusted[n]) for n, c in found.items()}
    return out


def rank_lines(results: SuiteResults, names, dataset: str, metrics, lower_is_better) -> str:
    """Each row's rank (1 = best) with its 95 % bootstrap interval, per metric, over the rows scored
    on the same test examples."""
    lines = []
    for m in metrics:
        found = {}
        for n in names:
            correct, index, _ = results.correct(n, dataset, m)
            if correct is not None:
                found[n] = (correct, index)
        if len(found) < 2:
            continue
        first = next(iter(found.values()))[1]
        same = {n: c for n, (c, i) in found.items() if np.array_equal(i, first)}
        if len(same) < 2:
            continue
        ranks = intervals.rank_intervals(same, higher_is_better=m not in lower_is_better)
        text = "; ".join(
            f"{n} {r.rank:g} [{r.low:g}, {r.high:g}]" for n, r in sorted(ranks.items(), key=lambda kv: kv[1].rank)
        )
        lines.append(f"- rank by {m} (1 = best) [95 % interval]: {text}")
    if not lines:
        return ""
    return (
        "\n" + "\n".join(lines) + f"\n\n<sub>Rank intervals: {intervals.BOOTSTRAP} bootstrap replicates "
        f"drawing the test examples once for all rows and each row's seeds; a row's interval is the 2.5 and 97.5 "
        f"percentiles of its rank over them.</sub>\n"
    )


def difference_lines(compared: dict, metrics: list[str], reference: str, results: SuiteResults, dataset: str) -> str:
    """Under a dataset's table: each row's difference from the reference with its paired interval
    and p, what the intervals and * mean, and the smallest difference the test split resolves."""
    if not compared:
        return ""
    shown = [m for m in metrics if any(m in c for c in compared.values())]
    table = []
    for name, by_metric in compared.items():
        line = [name]
        for m in shown:
            c = by_metric.get(m)
            holm = "" if c is None or c.p_holm is None else f" (Holm {c.p_holm:.3f})"
            line.append(
                "–"
                if c is None
                else f"{c.diff.mean:+.2f} [{c.diff.low:+.2f}, {c.diff.high:+.2f}] "
                f"p={c.p:.3f}{holm}{' *' if c.significant else ''}"
            )
        table.append(line)
    n = {m: len(results.correct(reference, dataset, m)[1]) for m in shown}
    resolve = ", ".join(
        f"{m} {statistics.median(c[m].diff.half_width for c in compared.values() if m in c):.2f}" for m in shown
    )
    headers = ["vs reference " + reference] + [f"Δ {m} (n={n[m]})" for m in shown]
    ranked = [m for m in shown if m in RANK_METRICS]
    rank_note = (
        f" {', '.join(ranked)}: not a mean over examples, so every resample recomputes it from the stored class "
        f"probabilities (one-vs-rest, a tie counts one half, averaged over classes); Δ is the difference of the rows' "
        f"mean over seeds, and its p comes from a paired permutation test that swaps the two rows' probabilities "
        f"per test example ({intervals.PERMUTATIONS} permutations)."
        if ranked
        else ""
    )
    return (
        f"\n{tabulate(table, headers=headers, tablefmt='github', disable_numparse=True)}\n\n"
        f"<sub>[a, b] in the table: 95 % interval of the mean over seeds, bootstrapping the seeds and the test "
        f"examples together ({intervals.BOOTSTRAP} resamples, fixed RNG seed {intervals.SEED}). Δ: row − "
        f"reference `{reference}` on the same test examples, each example's value (its correctness, or the "
        f"metric's own per-example score) averaged over the row's seeds, with a paired bootstrap 95 % interval; "
        f"p: paired sign-flip permutation "
        f"test ({intervals.PERMUTATIONS} permutations); Holm: p adjusted over the rows compared with the reference "
        f"on this dataset and metric; * = significant after that adjustment (Holm p < {intervals.ALPHA}: at most a "
        f"{intervals.ALPHA:.0%} chance of any false star per dataset and metric). Smallest difference this test "
        f"split resolves (median half-width of the paired intervals, points): {resolve}.{rank_note}</sub>\n"
    )

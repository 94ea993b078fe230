"""`umdbench power`: the variance components behind it and the command on the committed store."""

import shutil

import numpy as np
import pytest

from tests.e2e.test_committed_results import RESULTS
from umdbench.cli import main
from umdbench.results.power import components, examples_needed, resolvable, standard_error


def _simulated(rng, n, seeds, shift, run_sd):
    """Paired rows: per-example difficulty shared, each seed shifted as a whole by N(0, run_sd)."""
    difficulty = rng.uniform(0.2, 0.9, n)

    def row(delta):
        return np.stack(
            [
                (rng.random(n) < np.clip(difficulty + delta + rng.normal(0, run_sd), 0, 1)).astype(float)
                for _ in range(seeds)
            ]
        )

    return row(shift), row(0.0)


def test_the_planned_standard_error_matches_the_spread_of_repeated_experiments():
    rng = np.random.default_rng(0)
    c = components([_simulated(rng, 400, 3, 0.02, 0.01) for _ in range(8)])
    assert c.seeds == 3 and c.n == 400 and c.run > 0
    # repeat the experiment many times: the spread of the observed differences is the planned SE
    diffs = [float(a.mean() - b.mean()) for a, b in (_simulated(rng, 400, 3, 0.02, 0.01) for _ in range(300))]
    assert standard_error(c, 3, 400) == pytest.approx(np.std(diffs), rel=0.25)
    assert resolvable(c, 10) < resolvable(c, 3) < resolvable(c, 1)
    assert examples_needed(c, 3, 100.0) >= 1 and examples_needed(c, 1, 0.01) is None


def test_power_answers_for_the_committed_table4_store(tmp_path, capsys):
    store = shutil.copytree(RESULTS / "small" / "store", tmp_path / "store")  # opening migrates: use a copy
    assert main(["power", "--work-dir", str(store), "--suite", "table4", "--difference", "1"]) == 0
    out = capsys.readouterr().out
    assert "table4 small vqa-rad overall (vs 1 none): n = 451 test examples, 3 seed(s) stored" in out
    assert "10 seeds: resolves" in out and "a 1-point difference" in out

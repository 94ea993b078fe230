"""Paired comparisons behind results/brain-NOTES.md's missing-modality answer.

For each number of dropped modalities, BrainMVP fine-tuned with templates against the same model
filling absent modalities with zeros, against scratch and against MAE-3D: the difference in Dice
on the same test studies (seeds averaged per study), its paired bootstrap 95 % interval and the
sign-flip permutation p, computed by umdbench's own leaderboard code from the stored per-study
scores. Usage: python packages/umdbench-brain/scripts/missing_modality_pairs.py WORK_DIR
"""

import sys
from pathlib import Path

from umdbench.plan.suites import get_suite
from umdbench.plugin import get_registries
from umdbench.results.board_data import collect_suite_results
from umdbench.results.store import ResultsStore

PAIRS = [
    ("BrainMVP, templates", "BrainMVP, zeros"),
    ("BrainMVP, templates", "scratch"),
    ("BrainMVP, templates", "MAE-3D"),
]


def main(work_dir: Path) -> None:
    suite = get_suite(get_registries(), "brain-missing-modality")
    results = collect_suite_results(ResultsStore(work_dir / "results.sqlite"), suite)["tiny"]
    print("| metric | dropped | difference | Δ [95 % interval] | p |\n|---|---|---|---|---|")
    for metric in ("dice", "dice_wt", "dice_tc", "dice_et"):
        for drop in suite.vary_values:
            for a, b in PAIRS:
                c = results.comparison(
                    f"{a} {suite.vary_label}={drop}", f"{b} {suite.vary_label}={drop}", "brainsynth", metric
                )
                if c is None:
                    print(f"| {metric} | {drop} | {a} − {b} | no stored per-study scores | |")
                    continue
                mark = " *" if c.significant else ""
                print(
                    f"| {metric} | {drop} | {a} − {b} | {c.diff.mean:+.2f} [{c.diff.low:+.2f}, {c.diff.high:+.2f}] "
                    f"| {c.p:.3f}{mark} |"
                )


if __name__ == "__main__":
    main(Path(sys.argv[1]))

"""Two processes running the same cell on one work dir: each stage trains once, one row is stored."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from umdbench.results.store import ResultsStore

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.serial]  # two processes race for one cell

TINY = [
    "model.image_size=32",
    "data.num_workers=0",
    "data.eval_batch_size=50",
    "dataset.options.n_train=64",
    "dataset.options.n_val=20",
    "dataset.options.n_test=50",
    "pretrain.train.max_iters=3",
    "pretrain.train.batch_size=8",
    "pretrain.corpus.options.n=32",
    "tune.0.train.max_iters=3",
    "tune.0.train.batch_size=8",
]


def test_two_simultaneous_runs_of_one_cell_train_each_stage_once_and_store_one_row(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "umdbench.cli",
        "run",
        "--pretrain",
        "mr",
        "--tune",
        "direct",
        "--dataset",
        "medsynth",
        "--work-dir",
        str(tmp_path / "work"),
        "--cfg-options",
        *TINY,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    both = "\n".join(outs)
    for title in ("pretrain mr", "tune direct"):
        assert len(re.findall(rf"{title}: (?:training|resuming)", both)) == 1, both
        # the other process either waited for the lock and then reused it, or started after it
        assert len(re.findall(rf"{title}: reusing cached artifact", both)) == 1, both
    assert len(re.findall(r"\] evaluate on ", both)) == 1, both
    assert len(ResultsStore(tmp_path / "work" / "results.sqlite").rows()) == 1
    assert len(list((tmp_path / "work" / "stages").glob("*/artifact.json"))) == 2
    # both report the one stored result
    results = [re.search(r"result: .*", out).group(0) for out in outs]
    assert results[0] == results[1]

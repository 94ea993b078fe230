"""The GPU-hours projection (benchmarks.gpu_tables): fastest measurement per strategy, and a suite's
unique stages at the paper preset priced at iterations x batch / throughput."""

import json

import pytest

from benchmarks.gpu_tables import best_throughput, suite_stage_hours


def test_best_throughput_keeps_the_fastest_batch_per_strategy(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text(
        json.dumps({"strategy": "mr", "batch": 32, "samples_per_s": 100.0})
        + "\n"
        + json.dumps({"strategy": "direct", "batch": 32, "samples_per_s": 250.0})
        + "\n"
    )
    b.write_text(json.dumps({"strategy": "mr", "batch": 128, "samples_per_s": 220.0}) + "\n\n")
    best = best_throughput([str(a), str(b)])
    assert best["mr"]["batch"] == 128 and best["direct"]["samples_per_s"] == 250.0


def test_table4_hours_count_each_shared_pretraining_once(shared_datasets):
    rates = {"mr": {"samples_per_s": 256.0}}  # one paper MR step (batch 256) per second
    hours, count, missing = suite_stage_hours("table4", 1, str(shared_datasets), rates)
    # Table 4 pre-trains MR once per dataset (each excluding that dataset's images), 100,000 steps
    assert count["mr"] == 3
    assert hours["mr"] == pytest.approx(3 * 100_000 / 3600)
    assert missing == {"direct", "tdcalib", "gmcoord"}

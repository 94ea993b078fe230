"""Benchmark suites (the paper's tables). Filled in by the sweeps work; none are declared yet."""
from __future__ import annotations


def write_suite_leaderboards(store, out_dir, suite=None, plugin_paths=()) -> list:
    return []

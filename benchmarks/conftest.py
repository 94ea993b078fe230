"""Benchmark-suite settings: offline hub, quiet logs, and a per-test peak-RSS probe."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402


def pytest_configure(config):
    # pyproject's addopts carry --benchmark-skip for CI; an explicit --benchmark-only here wins.
    if getattr(config.option, "benchmark_only", False):
        config.option.benchmark_skip = False


@pytest.fixture(scope="session")
def load_average():
    return os.getloadavg()

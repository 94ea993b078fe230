"""3-D training-step throughput (umdbench-brain): ``mae3d``, ``seg`` and ``brainmvp`` on ``resunet3d``
(tiny) and UniFormer-S (paper), tiny (32^3) and paper (96^3) geometry, fast vs the eager fp32
reference on the same module and weights, with the FLOPs of one step and, at the paper geometry,
the projected GPU hours of the paper recipe (see benchmarks/cases_3d.py for the assumptions).

``UMDBENCH_BENCH_3D_PAPER`` = comma-separated strategies to also run at the paper geometry (default
all three; empty to skip), batch ``UMDBENCH_BENCH_3D_PAPER_BATCH`` (default 1; the paper batches of 24
pre-training / 2 fine-tuning studies do not fit a 2-core box), ``UMDBENCH_BENCH_3D_PAPER_ROUNDS``
(default 2). Skipped when umdbench-brain is not installed.
"""

from __future__ import annotations

import gc
import os

import pytest

pytest.importorskip("umdbench_brain")

from .cases import peak_rss_mib, reset_peak_rss, rss_mib, step_flops  # noqa: E402
from .cases_3d import STRATEGIES_3D, build_case_3d, gpu_hours  # noqa: E402

_paper = os.environ.get("UMDBENCH_BENCH_3D_PAPER", ",".join(STRATEGIES_3D)).strip()
PAPER = [s for s in _paper.split(",") if s]
PAPER_BATCH = int(os.environ.get("UMDBENCH_BENCH_3D_PAPER_BATCH", "1"))
PAPER_ROUNDS = int(os.environ.get("UMDBENCH_BENCH_3D_PAPER_ROUNDS", "2"))
TINY_ROUNDS = int(os.environ.get("UMDBENCH_BENCH_3D_TINY_ROUNDS", "5"))

SPECS = [(name, "tiny", None) for name in STRATEGIES_3D] + [(name, "paper", PAPER_BATCH) for name in PAPER]
PARAMS = [
    pytest.param(spec, mode, id=f"{spec[0]}-{spec[1]}-{mode}") for spec in SPECS for mode in ("fast", "reference")
]

_CASES: dict = {}


def _case(spec):
    if spec not in _CASES:
        _CASES.clear()
        gc.collect()
        _CASES[spec] = build_case_3d(spec[0], spec[1], spec[2])
    return _CASES[spec]


@pytest.mark.parametrize("spec,mode", PARAMS)
def test_brain_train_step(benchmark, spec, mode, load_average):
    name, preset, _ = spec
    case = _case(spec)
    case.set_mode(mode)
    benchmark.group = f"train-step-3d {case.label}"
    gc.collect()
    before = rss_mib()
    exact = reset_peak_rss()
    paper = preset == "paper"
    benchmark.pedantic(case.step, rounds=PAPER_ROUNDS if paper else TINY_ROUNDS, iterations=1, warmup_rounds=1)
    peak = peak_rss_mib()
    info = {
        "kind": "train_step_3d",
        "case": case.label,
        "strategy": name,
        "preset": preset,
        "mode": mode,
        "batch_size": case.batch_size,
        "params_m": case.num_params() / 1e6,
        "rss_before_mib": before,
        "peak_rss_mib": peak,
        "peak_rss_method": "VmHWM after clear_refs" if exact else "ru_maxrss (process)",
        "amp": case.train.get("amp", False),
        "load_avg_1m": os.getloadavg()[0],
    }
    if mode == "fast":
        flops = step_flops(case)
        info["flops_per_step"] = flops
        if paper:
            info["gpu_projection"] = gpu_hours(flops / case.batch_size, name)
    benchmark.extra_info.update(info)
    if mode == "reference":
        _CASES.clear()
        gc.collect()

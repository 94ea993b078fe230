"""Training-step throughput and peak memory of every strategy, fast vs the eager reference.

Each case is built once; the ``fast`` and ``reference`` benchmarks run on the same module and
weights (the reference only flips attention kernels, the masked path, the teacher's autograd and
the AdamW implementation, see umdbench.models.reference). Peak memory is the process's peak RSS
(``VmHWM``, reset through ``/proc/self/clear_refs`` right before the measured steps, so it
includes the weights, the optimiser state created in the warm-up step and the process baseline).

``UMDBENCH_BENCH_PAPER`` = comma-separated strategies to also run at the paper preset
(default ``mr``; ``all`` for every pre-training strategy; empty to skip), batch
``UMDBENCH_BENCH_PAPER_BATCH`` (default 2), timed over ``UMDBENCH_BENCH_PAPER_ROUNDS`` rounds
(default 5, the issue-16 median; each takes 7-20 s on 2 CPU cores).
"""

from __future__ import annotations

import gc
import os

import pytest

from umdbench.run.host_memory import active_allocator
from umdbench.run.train_settings import use_amp

from .cases import PRETRAIN, TUNE, build_case, peak_rss_mib, reset_peak_rss, rss_mib, step_flops

_paper = os.environ.get("UMDBENCH_BENCH_PAPER", "mr").strip()
PAPER = list(PRETRAIN) if _paper == "all" else [s for s in _paper.split(",") if s]
PAPER_BATCH = int(os.environ.get("UMDBENCH_BENCH_PAPER_BATCH", "2"))
PAPER_ROUNDS = int(os.environ.get("UMDBENCH_BENCH_PAPER_ROUNDS", "5"))

SPECS = [(name, "tiny", None) for name in PRETRAIN + TUNE] + [(name, "paper", PAPER_BATCH) for name in PAPER]
PARAMS = [
    pytest.param(spec, mode, id=f"{spec[0]}-{spec[1]}-{mode}") for spec in SPECS for mode in ("fast", "reference")
]

_CASES: dict = {}


def _case(spec):
    if spec not in _CASES:
        _CASES.clear()
        gc.collect()
        _CASES[spec] = build_case(spec[0], spec[1], spec[2])
    return _CASES[spec]


@pytest.mark.parametrize("spec,mode", PARAMS)
def test_train_step(benchmark, spec, mode, load_average):
    name, preset, _ = spec
    case = _case(spec)
    case.set_mode(mode)
    benchmark.group = f"train-step {case.label}"
    gc.collect()
    before = rss_mib()
    exact = reset_peak_rss()
    paper = preset == "paper"
    benchmark.pedantic(case.step, rounds=PAPER_ROUNDS if paper else 6, iterations=1, warmup_rounds=1 if paper else 2)
    peak = peak_rss_mib()
    info = {
        "kind": "train_step",
        "case": case.label,
        "strategy": name,
        "preset": preset,
        "mode": mode,
        "batch_size": case.batch_size,
        "params_m": case.num_params() / 1e6,
        "rss_before_mib": before,
        "precision": ("bf16 autocast" if use_amp(case.train) else "fp32") if mode == "fast" else "fp32",
        "peak_rss_mib": peak,
        "peak_rss_method": "VmHWM after clear_refs" if exact else "ru_maxrss (process)",
        "load_avg_1m": os.getloadavg()[0],
        "allocator": active_allocator(),
    }
    if mode == "fast" and name == "mr":
        info["flops_per_step"] = step_flops(case)
    benchmark.extra_info.update(info)
    if mode == "reference":
        _CASES.clear()
        gc.collect()

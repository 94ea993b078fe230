"""Peak RSS of one training-step case in a fresh process (issue 16, "Memory").

    python -m benchmarks.memory_probe                       # paper MR step, batch 2, fast path
    python -m benchmarks.memory_probe --phases              # + where in the step the peak falls
    python -m benchmarks.memory_probe --set step_in_backward=false
    python -m benchmarks.memory_probe --batch 8 --set activation_checkpointing=true

Builds the case exactly as the benchmark suite does (:func:`benchmarks.cases.build_case`: the
strategy wrapped in ``StageModel`` with ``build_optim_wrapper``), runs ``--warmup`` steps (which
allocate the AdamW state), resets the kernel's RSS high-water mark and runs ``--steps`` more.
Prints one JSON line: peak RSS of the measured steps (``VmHWM`` after ``clear_refs``), the RSS
between steps (weights, teacher, AdamW state; the peak minus it is what the step adds), the
process peak (``ru_maxrss``, build included) and the seconds per step. Only the fast path: the
eager reference peaks near 15 GiB at the paper preset. Step times are whatever the machine's
load allows; this script is for memory, the timed figures come from ``python -m benchmarks.run``.

``--phases`` samples VmRSS from a thread every few milliseconds and reports the highest value
seen in each phase of the last step (forward, backward, optimiser), so a change can be aimed at
the phase that sets the peak. ``--set key=value`` overrides a ``train`` key of the case (values
parsed as the CLI's --cfg-options values are) before the optimiser is built.
"""

from __future__ import annotations

import argparse
import json
import resource
import threading
import time

import torch


class _Sampler:
    """VmRSS of this process every ``interval`` seconds, tagged with the current phase."""

    def __init__(self, interval: float = 0.002):
        self.interval = interval
        self.phase = "idle"
        self.peaks: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        from .cases import rss_mib

        while not self._stop.is_set():
            rss = rss_mib()
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), rss)
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _phased_step(case, sampler: _Sampler) -> None:
    """``StageModel.train_step`` with the phase marked (same calls, same order)."""
    model, optim = case.model, case.optim
    sampler.phase = "forward"
    with optim.optim_context(model):
        data = model.data_preprocessor(case.batch, True)
        losses = model(**data, mode="loss")
    parsed, _ = model.parse_losses(losses)
    del losses
    sampler.phase = "backward"
    optim.backward(parsed)
    del parsed
    sampler.phase = "optimizer"
    model.strategy.modulate_gradients()
    optim.step()
    optim.zero_grad()
    sampler.phase = "ema"
    model.strategy.after_optimizer_step()
    sampler.phase = "idle"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--strategy", default="mr")
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--phases", action="store_true", help="report the peak of each phase of the last step")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a train key")
    args = ap.parse_args(argv)

    from umdbench.run.train_settings import use_amp
    from umdbench.util import parse_option

    from .cases import build_case, peak_rss_mib, reset_peak_rss, rss_mib

    overrides = dict(parse_option(item, "--set") for item in args.set)
    case = build_case(args.strategy, args.preset, args.batch, train_overrides=overrides)
    rss_built = rss_mib()
    for _ in range(args.warmup):
        case.step()
    time.sleep(1.0)  # past the allocator's purge delay: the step's activations are handed back
    rss_between = rss_mib()  # weights, teacher, AdamW state: what every step starts from
    exact = reset_peak_rss()
    times = []
    for i in range(args.steps):
        t = time.perf_counter()
        if args.phases and i == args.steps - 1:
            with _Sampler() as sampler:
                _phased_step(case, sampler)
        else:
            case.step()
        times.append(time.perf_counter() - t)
    from umdbench.run.host_memory import active_allocator

    out = {
        "case": case.label,
        "allocator": active_allocator(),
        "precision": "bf16 autocast" if use_amp(case.train) else "fp32",
        "overrides": args.set,
        "threads": torch.get_num_threads(),
        "rss_built_gib": round(rss_built / 1024, 3),
        "rss_between_steps_gib": round(rss_between / 1024, 3),
        "peak_rss_gib": round(peak_rss_mib() / 1024, 3),
        "peak_rss_method": "VmHWM after clear_refs" if exact else "ru_maxrss",
        "ru_maxrss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "s_per_step": [round(t, 2) for t in times],
    }
    if args.phases:
        out["phase_peak_gib"] = {k: round(v / 1024, 3) for k, v in sampler.peaks.items()}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    from umdbench.run.host_memory import reexec_on_allocator

    reexec_on_allocator()  # as `umdbench run` does: mimalloc where installed (UMDBENCH_ALLOCATOR=system: glibc)
    main()

"""Check that a strategy's training step is the same at any world size.

A *case* is one strategy ready to train: built fresh (and identically) by a factory, with its task
type, train settings and a global batch per step. :func:`compare` trains it for a few optimiser
steps three ways and compares what each way ends with (parameters, buffers such as an EMA teacher,
templates or a step counter, and the optimiser state):

* ``one``: one process, the whole batch ``B`` per step (the reference);
* ``ranks``: two gloo processes under torchrun, ``B/2`` each, through the model wrapper and batch-norm
  conversion a multi-process stage uses (:mod:`umdbench.run.data_parallel`);
* ``micro``: one process, two accumulated micro-batches of ``B/2``.

Each (micro-)batch carries its step and sample positions, as the stage's keyed loader hands them
out, so the strategy's draws (:mod:`umdbench.draws`) are those of a real stage. A strategy whose
loss couples a batch's samples (:meth:`~umdbench.api.Strategy.batch_coupled_terms`) is exact on
``ranks`` only; on ``micro`` its difference is reported, and a stage records those terms as a
deviation. Plugin authors can run it on their own strategy::

    python -m umdbench.run.equivalence check mypkg.cases:my_case

A factory is ``"module:function"`` or ``"module:function:argument"`` (called with the string).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

__all__ = ["Case", "Report", "builtin_case", "compare", "load_case", "run_leg"]

SEED = 0
_CASES_FILE = "cases.json"  # what compare() hands the torchrun workers: [[factory, steps], ...]
BUILTIN_FACTORY = "umdbench.run.equivalence:builtin_case"
BUILTIN = ("mr", "mae", "clip", "flip", "m3ae", "direct", "linear", "tdcalib", "gmcoord", "tdcalib+gmcoord")


@dataclass
class Case:
    """One strategy ready to train. ``batch(step)`` is the step's global batch (CPU tensors, the
    same on every call); ``then(strategy)``, when set, is the next stage of a chain, built from
    the trained strategy (its encoder carries over, as a stage starts from its parent)."""

    strategy: torch.nn.Module
    task: object  # the stage's TaskType
    train: dict
    batch: Callable[[int], dict]
    then: Callable[[torch.nn.Module], "Case"] | None = None


@dataclass
class Report:
    factory: str
    coupled_terms: list[str]
    diffs: dict[str, dict[str, float]] = field(default_factory=dict)  # leg -> tensor -> relative difference

    def worst(self, leg: str) -> tuple[str, float]:
        name = max(self.diffs[leg], key=self.diffs[leg].get)
        return name, self.diffs[leg][name]

    def exact_legs(self) -> tuple[str, ...]:
        """The legs run that must match: ``micro`` only without batch-coupled terms."""
        legs = ("ranks",) if self.coupled_terms else ("ranks", "micro")
        return tuple(leg for leg in legs if leg in self.diffs)


def load_case(factory: str) -> Case:
    module, _, rest = factory.partition(":")
    attr, _, argument = rest.partition(":")
    fn = getattr(importlib.import_module(module), attr)
    return fn(argument) if argument else fn()


def _slice(batch: dict, lo: int, hi: int) -> dict:
    return {k: v[lo:hi] for k, v in batch.items()}


def run_leg(factory: str, steps: int, world: int = 1, rank: int = 0, micro: int = 1, device: str = "cpu") -> dict:
    """Train the case ``steps`` optimiser steps as rank ``rank`` of ``world`` with ``micro``
    micro-batches per step on ``device``; returns its final state (strategy state dict + optimiser
    state, on the CPU), the steps' losses and the batch-coupled terms the chain declares."""
    from umdbench.run.build_optim import build_optim_wrapper
    from umdbench.run.data_parallel import convert_batch_norm, wrapper_cfg
    from umdbench.run.stage_model import POSITION_KEY, STEP_KEY, StageModel

    case = load_case(factory)
    terms: list[str] = []
    while True:
        terms += type(case.strategy).batch_coupled_terms(case.strategy.cfg)
        model = StageModel(case.strategy, case.task, seed=SEED).to(device)
        model.train()
        runner_model = model
        if world > 1:
            convert_batch_norm(model)
            cfg = wrapper_cfg(cuda=False)
            runner_model = cfg.pop("type")(module=model, **cfg)
        train = {**case.train, "accumulative_counts": micro, "step_in_backward": False, "compile": False}
        optim = build_optim_wrapper(case.strategy, train)
        optim.initialize_count_status(runner_model, 0, steps * micro)
        batch_size = int(case.train["batch_size"])
        local = batch_size // (world * micro)
        logs = []
        for step in range(steps):
            batch = case.batch(step)
            for m in range(micro):
                start = (m * world + rank) * local
                data = {k: v.to(device) for k, v in _slice(batch, start, start + local).items()}
                data[STEP_KEY] = torch.full((local,), step, dtype=torch.long)
                data[POSITION_KEY] = torch.arange(start, start + local)
                logs.append({k: float(v.detach()) for k, v in runner_model.train_step(data, optim).items()})
        if case.then is None:
            break
        case = case.then(case.strategy)
    state = {
        f"state.{k}": v.detach().double().cpu()
        for k, v in case.strategy.state_dict().items()
        if v.is_floating_point() or v.dtype in (torch.long, torch.int)
    }
    names = {id(p): n for n, p in case.strategy.named_parameters()}
    for group in optim.optimizer.param_groups:
        for p in group["params"]:
            for k, v in optim.optimizer.state.get(p, {}).items():
                if torch.is_tensor(v) and v.numel() > 1:
                    state[f"optim.{names[id(p)]}.{k}"] = v.detach().double().cpu()
    return {"state": state, "logs": logs, "coupled_terms": terms}


def _kind(name: str) -> str:
    return name.rsplit(".", 1)[-1] if name.startswith("optim.") else "state"


def relative_differences(got: dict, ref: dict) -> dict[str, float]:
    """Per tensor: ``max |got - ref|`` over the tensor's scale, ``max |ref|`` floored at 1e-6 of the
    largest tensor of its kind (state, or one optimiser moment): a parameter whose gradient is zero by
    construction (an attention key bias) moves only by rounding, and its own scale would magnify
    that. A missing tensor or another shape counts as inf."""
    largest: dict[str, float] = {}
    for name, r in ref.items():
        if r.numel():
            largest[_kind(name)] = max(largest.get(_kind(name), 0.0), float(r.abs().max()))
    out = {}
    for name, r in ref.items():
        g = got.get(name)
        if g is None or g.shape != r.shape:
            out[name] = float("inf")
            continue
        if not r.numel():
            out[name] = 0.0
            continue
        scale = max(float(r.abs().max()), 1e-6 * largest.get(_kind(name), 0.0), 1e-30)
        out[name] = float((g - r).abs().max()) / scale
    return out


def _ranks(cases: dict[str, int], out: Path, timeout: float) -> None:
    """The ``ranks`` legs of every case (factory -> steps), in one torchrun job."""
    (out / _CASES_FILE).write_text(json.dumps(list(cases.items())))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "umdbench.run.equivalence",
        "worker",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"the 2-process leg failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")


def compare(
    factories: str | list[str] | dict[str, int],
    steps: int = 3,
    timeout: float = 900,
    legs=("ranks", "micro"),
    device: str = "cpu",
) -> dict[str, Report]:
    """Run every factory's legs for ``steps`` optimiser steps, or for its own number where
    ``factories`` maps each to one (one torchrun job, on the CPU, for all the ``ranks`` legs: a job
    costs a launcher and two worker start-ups before it trains; the one-process legs on
    ``device``); returns a :class:`Report` per factory."""
    if isinstance(factories, str):
        factories = [factories]
    cases = dict(factories) if isinstance(factories, dict) else dict.fromkeys(factories, steps)
    with tempfile.TemporaryDirectory() as tmp:
        if "ranks" in legs:
            _ranks(cases, Path(tmp), timeout)
        reports = {}
        for i, (factory, case_steps) in enumerate(cases.items()):
            one = run_leg(factory, case_steps, device=device)  # its chain declares the coupled terms too
            ref = one["state"]
            report = Report(factory, one["coupled_terms"])
            if "ranks" in legs:
                ranks = [torch.load(Path(tmp) / f"{i}-rank{r}.pt", weights_only=True)["state"] for r in range(2)]
                report.diffs["ranks"] = relative_differences(ranks[0], ref)
                report.diffs["rank1"] = relative_differences(ranks[1], ranks[0])  # the ranks agree with each other
            if "micro" in legs:
                report.diffs["micro"] = relative_differences(
                    run_leg(factory, case_steps, micro=2, device=device)["state"], ref
                )
            reports[factory] = report
    return reports


def _worker(out: str) -> None:
    import torch.distributed as dist

    cases = json.loads((Path(out) / _CASES_FILE).read_text())
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        for i, (factory, steps) in enumerate(cases):
            torch.save(run_leg(factory, steps, world=world, rank=rank), Path(out) / f"{i}-rank{rank}.pt")
    finally:
        dist.destroy_process_group()


# -- the built-in strategies at a tiny geometry ------------------------------------------------------
NUM_CLASSES = 16


def _encoder_cfg() -> dict:
    from umdbench.models.tiny_fixtures import tiny_encoder_cfg

    return tiny_encoder_cfg(
        image_size=32,
        max_text_len=16,
        vision={"embed_dim": 32, "depth": 1, "num_heads": 2, "patch_size": 8},
        text={"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64},
        fusion={"hidden_size": 32, "num_layers": 1, "num_heads": 2},
    )


def _batches(cfg: dict, batch_size: int, labels: bool) -> Callable[[int], dict]:
    from umdbench.models.tiny_fixtures import synthetic_pairs

    def batch(step: int) -> dict:
        out, _ = synthetic_pairs(
            batch_size, image_size=cfg["image_size"], max_len=cfg["max_text_len"], seed=100 + step, cfg=cfg
        )
        out = {k: v.double() if v.is_floating_point() else v for k, v in out.items()}
        if labels:
            g = torch.Generator().manual_seed(200 + step)
            out["label"] = torch.randint(0, NUM_CLASSES, (batch_size,), generator=g)
            out["answer_type"] = torch.randint(0, 2, (batch_size,), generator=g)
        return out

    return batch


def builtin_case(name: str, batch_size: int = 8, encoder_state: dict | None = None) -> Case:
    """A built-in strategy (or a ``+`` chain of tuning strategies) at the tiny preset's settings on
    a smaller encoder, global batch ``batch_size``."""
    from umdbench.api import TaskInfo
    from umdbench.kit.tasktypes import ImageTextPairs, VQATask
    from umdbench.models import build_encoder, build_tokenizer
    from umdbench.plugin import get_registries
    from umdbench.run.build_strategy import special_ids

    first, _, rest = name.partition("+")
    registries = get_registries(())
    tune = first in registries.tune.names()
    ecfg = _encoder_cfg()
    torch.manual_seed(SEED)
    encoder = build_encoder(ecfg)
    if encoder_state is not None:
        encoder.load_state_dict(encoder_state)
    cls = (registries.tune if tune else registries.pretrain).get(first)
    cfg = cls.default_config("tiny", "vqa-rad" if tune else None)
    cfg["special_ids"] = special_ids(build_tokenizer(ecfg))
    train = {**cfg["train"], "batch_size": batch_size, "amp": False, "lr": 1e-3}
    cfg["train"] = train
    if tune:
        info = TaskInfo("vqa", NUM_CLASSES, [str(i) for i in range(NUM_CLASSES)])
        strategy, task = cls(encoder, cfg, info), VQATask()
    else:
        strategy, task = cls(encoder, cfg), ImageTextPairs()
    strategy.double()  # float64: what is compared is the split of the batch, not float32 rounding
    then = None
    if rest:

        def then(trained, rest=rest):
            state = {k[len("encoder.") :]: v for k, v in trained.state_dict().items() if k.startswith("encoder.")}
            return builtin_case(rest, batch_size, encoder_state=state)

    return Case(strategy, task, train, _batches(ecfg, batch_size, tune), then)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m umdbench.run.equivalence", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    check = sub.add_parser("check", help="compare the three legs of each factory (default: the built-in strategies)")
    check.add_argument("factories", nargs="*")
    check.add_argument("--steps", type=int, default=3)
    check.add_argument(
        "--legs", default="ranks,micro", help="ranks (2 gloo processes on the CPU), micro (2 micro-batches)"
    )
    check.add_argument("--device", default="cpu", help="device of the one-process legs (cpu, cuda)")
    worker = sub.add_parser("worker", help="one rank of the 2-process leg (started by torchrun)")
    worker.add_argument("out", help=f"the folder holding {_CASES_FILE} ([[factory, steps], ...]); states go there")
    args = parser.parse_args(argv)
    if args.cmd == "worker":
        _worker(args.out)
        return 0
    factories = args.factories or [f"{BUILTIN_FACTORY}:{name}" for name in BUILTIN]
    failed = 0
    legs = tuple(args.legs.split(","))
    for factory, report in compare(factories, args.steps, legs=legs, device=args.device).items():
        parts = []
        for leg in legs:
            tensor, diff = report.worst(leg)
            parts.append(f"{leg} {diff:.1e} ({tensor})")
        exact = all(report.worst(leg)[1] <= 1e-5 for leg in report.exact_legs())
        failed += not exact
        coupled = f"; batch-coupled: {', '.join(report.coupled_terms)}" if report.coupled_terms else ""
        print(f"{'ok  ' if exact else 'FAIL'} {factory}: {'; '.join(parts)}{coupled}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

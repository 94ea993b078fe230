"""Adopting a stage trained by older code, after checking that the current code trains it alike.

A stage key covers the code the stage runs, so any edit of that code (even a comment, even an
upgrade that changes no number) leaves a planned stage without an artifact. ``umdbench adopt``
looks, for each such stage, for a finished stage in the work dir with the same inputs except the
code (same ``key_inputs`` in ``stage.json`` but ``code``; its parent the current parent or a key
the current parent was adopted from), re-runs that stage's first K optimiser steps under the
current code in a scratch folder, and compares them with the steps the stored stage recorded when
it was trained (:mod:`umdbench.run.evidence`): every logged value, and the weights after step K.
Identical (CPU training is deterministic), or within a stated relative ``tolerance``: the stored
artifact becomes the new key's (hard-linked) with a marker naming ``adopted_from`` and the
evidence, and rows built on it record both (``schedule``). Otherwise the stage is refused, with
the reason; nothing unverified is ever reused.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from umdbench.errors import UmdbenchError
from umdbench.plan.config import ResolvedRun
from umdbench.plan.stage_plan import Stage
from umdbench.run.console import echo
from umdbench.run.context import RunContext
from umdbench.run.layout import ADOPT_SCRATCH_PREFIX, MARKER_FILE
from umdbench.run.workspace import Workspace

__all__ = ["Outcome", "adopt_stages", "candidates", "rerun_first_steps"]

DEFAULT_STEPS = 3


@dataclass
class Outcome:
    stage: Stage
    status: str  # "trained" (its key has an artifact) | "adopted" | "refused"
    reason: str = ""
    source: str | None = None  # the key adopted from
    adoption: dict = field(default_factory=dict)

    def line(self) -> str:
        head = f"{self.stage.title} (key {self.stage.key[:12]})"
        if self.status == "trained":
            return f"  {head}: has its artifact already" + (
                f" (adopted from {self.source[:12]})" if self.source else ""
            )
        if self.status == "adopted":
            a = self.adoption
            losses = (
                "identical" if a["max_rel_loss_diff"] == 0 else f"max relative difference {a['max_rel_loss_diff']:.3g}"
            )
            params = "bit-identical" if a["params_equal"] else f"norm within {a['params_norm_rel_diff']:.3g}"
            return (
                f"  {head}: adopted from {self.source[:12]} (first {a['steps']} optimiser steps re-run: losses "
                f"{losses}, parameters {params})"
            )
        return f"  {head}: refused. {self.reason}"


def _comparable(inputs: dict) -> dict:
    """A stage's key inputs without the code and the parent (compared on their own)."""
    data = json.loads(json.dumps(inputs, sort_keys=True, default=str))
    data.pop("code", None)
    data.pop("parent", None)
    return data


def equivalent_keys(ws: Workspace, stage: Stage) -> set[str]:
    """The stage's key and every key its artifact was adopted from, transitively: a child trained
    under one of them had the same parent weights."""
    keys = {stage.key}
    folder = ws.stage_dir(stage)
    while folder is not None and (folder / MARKER_FILE).is_file():
        source = ws.folder_marker(folder).get("adopted_from")
        if not source or source in keys:
            break
        keys.add(source)
        folder = next((f for f in ws.finished_stages(stage.kind, stage.name) if f.name.endswith(source[:16])), None)
    return keys


def candidates(ws: Workspace, stage: Stage) -> tuple[list[tuple[Path, dict]], tuple[Path, list[str]] | None]:
    """``(matches, nearest)``: finished stage folders with the same inputs as ``stage`` except the
    code, each with its marker (newest first), and, when there is none, the folder of the same
    strategy that differs in the fewest inputs with their names (None when there is no such folder)."""
    want = _comparable(stage.key_inputs)
    parents = equivalent_keys(ws, stage.parent) if stage.parent is not None else {None}
    matches, nearest = [], None
    for folder in ws.finished_stages(stage.kind, stage.name):
        if folder.name == stage.dirname:
            continue
        stored = (ws.stage_inputs(folder) or {}).get("key_inputs")
        if not isinstance(stored, dict):
            continue
        have = _comparable(stored)
        diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
        if stored.get("parent") not in parents:
            diff.append("parent")
        if not diff:
            matches.append((folder, ws.folder_marker(folder)))
        elif nearest is None or len(diff) < len(nearest[1]):
            nearest = (folder, diff)
    return matches, nearest


def rerun_first_steps(stage: Stage, run: ResolvedRun, ctx: RunContext, steps: int, threads: int | None = None) -> dict:
    """Train the stage's first ``steps`` optimiser steps under the current code, in a scratch
    folder of the work dir (its parent's artifact and the image cache linked in), and return what
    :class:`~umdbench.run.evidence.EvidenceHook` recorded. Exactly the training path of
    ``umdbench run``: the same builders, runner, schedule (over the stage's full ``max_iters``)
    and hooks."""
    from umdbench.run.evidence import EvidenceComplete, stop_after
    from umdbench.run.train_and_evaluate import _train

    ws = ctx.ws
    ws.work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=ADOPT_SCRATCH_PREFIX, dir=ws.work_dir) as tmp:
        scratch = Workspace(tmp)
        scratch.stages_dir.mkdir(parents=True)
        if stage.parent is not None:
            os.symlink(ws.stage_dir(stage.parent).resolve(), scratch.stage_dir(stage.parent), target_is_directory=True)
        if ws.image_cache_dir.is_dir():
            os.symlink(ws.image_cache_dir.resolve(), scratch.image_cache_dir, target_is_directory=True)
        before = torch.get_num_threads()
        if threads:  # the thread count the stage was trained with: CPU sums then round the same way
            torch.set_num_threads(int(threads))
        try:
            with stop_after(steps):
                try:
                    _train(stage, run, RunContext(scratch, ctx.registries, catalog=ctx.catalog), "  re-run", "none")
                except EvidenceComplete as done:
                    return done.evidence
        finally:
            torch.set_num_threads(before)
        return scratch.marker(stage).get("evidence") or {}


def _accepts(comparison: dict, tolerance: float) -> bool:
    if comparison["max_rel_loss_diff"] == 0 and comparison["params_equal"]:
        return True
    return (
        tolerance > 0
        and comparison["max_rel_loss_diff"] <= tolerance
        and comparison["params_norm_rel_diff"] <= tolerance
    )


def _adopt_one(stage: Stage, run: ResolvedRun, ctx: RunContext, steps: int, tolerance: float) -> Outcome:
    """Adopt one stage or say why not. Longer than 80 lines because it is one decision in order (candidates, re-run of
    the first steps, comparison, record), with an early exit at each step."""
    from umdbench.run.evidence import EVIDENCE_STEPS, compare

    ws = ctx.ws
    fix = "fix: train it with the command that planned it (`umdbench run ...` or `umdbench sweep ...`)"
    if stage.parent is not None and not ws.is_trained(stage.parent):
        return Outcome(
            stage,
            "refused",
            f"Not tried: its parent stage, {stage.parent.title} (key "
            f"{stage.parent.key[:12]}), is neither trained nor adopted under the current code (see its "
            f"line); {fix}, or adopt the parent first.",
        )
    matches, nearest = candidates(ws, stage)
    if not matches:
        near = (
            f"the closest, {nearest[0].name}, differs in {', '.join(nearest[1])}"
            if nearest
            else f"no {stage.title} stage is trained there at all"
        )
        return Outcome(
            stage,
            "refused",
            f"No stage trained in {ws.work_dir} has the same inputs except the code "
            f"(its config, the encoder config, the seed, the data fingerprint and its parent): {near}. "
            f"Nothing is reused; {fix}.",
        )
    k = min(int(steps), int(stage.cfg.get("train", {}).get("max_iters", steps)))
    recorded = [
        (folder, marker) for folder, marker in matches if int((marker.get("evidence") or {}).get("steps", 0)) >= k
    ]
    if not recorded:
        folder, marker = matches[0]
        have = int((marker.get("evidence") or {}).get("steps", 0))
        if not have:
            why = (
                f"{folder.name} has the same inputs but was trained by older umdbench code, which did not record "
                f"its first optimiser steps, so the current code cannot be checked against it"
            )
            return Outcome(
                stage,
                "refused",
                f"{why}. Nothing unverified is reused; {fix} (a stage trained now records them for the next upgrade).",
            )
        return Outcome(
            stage,
            "refused",
            f"{folder.name} has the same inputs but recorded only {have} optimiser "
            f"step(s), fewer than --steps {k}; fix: pass --steps {have} (at most {EVIDENCE_STEPS} are "
            f"recorded), or retrain it.",
        )
    echo(
        f"{stage.title} (key {stage.key[:12]}): re-running its first {k} optimiser step(s) under the current code "
        f"to compare with {recorded[0][0].name}"
    )
    try:
        rerun = rerun_first_steps(stage, run, ctx, k, (recorded[0][1].get("evidence") or {}).get("threads"))
    except UmdbenchError as exc:  # the current code fails where the old one trained: nothing to adopt
        return Outcome(
            stage, "refused", f"Re-running its first {k} optimiser step(s) under the current code failed: {exc}"
        )
    if int(rerun.get("steps", 0)) < k:
        return Outcome(
            stage,
            "refused",
            f"The re-run under the current code recorded {rerun.get('steps', 0)} of "
            f"{k} optimiser steps, so it cannot be compared; {fix}.",
        )
    best = None
    for folder, marker in recorded:
        comparison = compare(marker["evidence"], rerun, k)
        if _accepts(comparison, tolerance):
            return _adopt(stage, ctx, folder, marker, comparison, tolerance)
        if best is None or comparison["max_rel_loss_diff"] < best[2]["max_rel_loss_diff"]:
            best = (folder, marker, comparison)
    folder, marker, c = best
    worst = c["worst"]
    where = (
        f" (step {worst['step']}, {worst['name']}: stored {worst['stored']!r}, now {worst['rerun']!r})" if worst else ""
    )
    world = int(marker["evidence"].get("world_size", 1))
    note = (
        f" It was trained by {world} processes and the re-run uses one, so rounding may differ; " if world > 1 else " "
    )
    suggest = _round_up(max(c["max_rel_loss_diff"], c["params_norm_rel_diff"]))
    return Outcome(
        stage,
        "refused",
        f"Re-running its first {k} optimiser step(s) under the current code does not "
        f"give what {folder.name} recorded: largest relative difference of a logged value "
        f"{c['max_rel_loss_diff']:.3g}{where}, parameters after step {k} "
        f"{'bit-identical' if c['params_equal'] else 'different'} (norm relative difference "
        f"{c['params_norm_rel_diff']:.3g}), tolerance {tolerance:g}. The code change alters how this stage "
        f"trains, so its artifact is not reused.{note}{fix[0].upper()}{fix[1:]}"
        + (
            f", or, if this is rounding you accept, pass --tolerance {suggest:.1g}."
            if math.isfinite(suggest) and suggest < 0.1
            else "."
        ),
    )


def _round_up(x: float) -> float:
    """``x`` rounded up to one significant digit (a tolerance that accepts it)."""
    if not math.isfinite(x) or x <= 0:
        return x
    scale = 10 ** math.floor(math.log10(x))
    return math.ceil(x / scale * (1 - 1e-12)) * scale


def _adopt(stage: Stage, ctx: RunContext, folder: Path, marker: dict, comparison: dict, tolerance: float) -> Outcome:
    from umdbench.results.provenance import git_commit

    ws = ctx.ws
    adoption = {
        "steps": comparison["steps"],
        "max_rel_loss_diff": comparison["max_rel_loss_diff"],
        "params_equal": comparison["params_equal"],
        "params_norm_rel_diff": comparison["params_norm_rel_diff"],
        "tolerance": tolerance,
        "git_commit": git_commit(),
        "adopted_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    source = marker.get("key") or (ws.stage_inputs(folder) or {}).get("key")
    with ws.stage_lock(stage):
        if ws.is_trained(stage):  # trained (or adopted) by another process meanwhile
            return Outcome(stage, "trained")
        ws.adopt_artifact(stage, folder, adopted_from=source, adoption=adoption)
    return Outcome(stage, "adopted", source=source, adoption=adoption)


def adopt_stages(
    stages: list[Stage],
    runs: dict[str, ResolvedRun],
    ctx: RunContext,
    steps: int = DEFAULT_STEPS,
    tolerance: float = 0.0,
) -> list[Outcome]:
    """Adopt, where verified, every training stage of ``stages`` (parents first) whose key has no
    artifact; ``runs`` maps a stage key to a resolved run that contains it."""
    out = []
    for stage in stages:
        if stage.kind == "eval":
            continue
        if ctx.ws.is_trained(stage):
            out.append(Outcome(stage, "trained", source=ctx.ws.marker(stage).get("adopted_from")))
        else:
            out.append(_adopt_one(stage, runs[stage.key], ctx, steps, tolerance))
        echo(out[-1].line())
    return out

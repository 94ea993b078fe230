"""A stage's first optimiser steps, recorded while it trains: what ``umdbench adopt`` compares
when it decides whether a stage trained by older code may stand for the current code's stage.

For each of the first :data:`EVIDENCE_STEPS` optimiser steps the hook records the logged values
(the losses and whatever else the strategy logs; the mean over the step's micro-batches, and over
the processes of a multi-process stage) and, after the step, a sha256 of the strategy's state (the
artifact's tensors, bytes and all) and its L2 norm. While the stage trains the record is kept in
``train/evidence.json`` (so a resumed stage keeps the steps it recorded before it was killed); the
finished stage's ``artifact.json`` holds it under ``evidence``.

A re-run (:func:`stop_after`) raises :class:`EvidenceComplete` once it has recorded the steps it
was asked for, so adoption trains K steps, not the whole stage.
"""

from __future__ import annotations

import hashlib
import json
import math
from contextlib import contextmanager
from pathlib import Path

import torch
from mmengine.hooks import Hook

from umdbench.errors import UmdbenchError
from umdbench.util import atomic_write_json

__all__ = ["EVIDENCE_STEPS", "EvidenceComplete", "EvidenceHook", "compare", "state_checksum", "stop_after"]

EVIDENCE_STEPS = 5  # optimiser steps recorded at train time; `umdbench adopt --steps K` compares K <= this
FORMAT = 1

_stop_at: int | None = None  # set by stop_after() for a re-run


class EvidenceComplete(UmdbenchError):
    """Raised by a re-run's hook once its steps are recorded (never while a stage really trains)."""

    def __init__(self, evidence: dict):
        super().__init__(f"recorded the first {evidence['steps']} optimiser steps")
        self.evidence = evidence


@contextmanager
def stop_after(steps: int):
    """Within this block a training stage stops (raising :class:`EvidenceComplete`) after
    ``steps`` optimiser steps are recorded."""
    global _stop_at
    previous, _stop_at = _stop_at, int(steps)
    try:
        yield
    finally:
        _stop_at = previous


def state_checksum(state: dict) -> tuple[str, float]:
    """``(sha256, L2 norm)`` of a state dict: every tensor's name, dtype, shape and bytes, in name
    order. Equal sha256 means bit-identical weights; the norm compares them within a tolerance."""
    digest = hashlib.sha256()
    square = 0.0
    for name in sorted(state):
        tensor = state[name].detach()
        flat = tensor.to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}\0{flat.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(flat.view(torch.uint8).numpy())  # the tensor's own bytes, not a copy of them
        if flat.is_floating_point():
            # accumulated in float64 without a float64 copy of the tensor (a third of the time)
            square += float(torch.linalg.vector_norm(flat, dtype=torch.float64)) ** 2
    return digest.hexdigest(), math.sqrt(square)


class EvidenceHook(Hook):
    """Records the first optimiser steps of a stage (see the module docstring). ``state`` returns
    the state to checksum (the artifact's: :func:`umdbench.run.build_strategy.artifact_state`)."""

    priority = "NORMAL"

    def __init__(
        self, state, path: Path, micro_batches: int = 1, world_size: int = 1, rank: int = 0, steps: int = EVIDENCE_STEPS
    ):
        self.state, self.path = state, Path(path)
        self.micro_batches, self.world_size, self.rank = int(micro_batches), int(world_size), int(rank)
        self.steps = int(steps)
        self.losses: list[dict] = []
        self.params_sha256: list[str] = []
        self.params_norm: list[float] = []
        self._sums: dict[str, float] = {}

    def before_train(self, runner) -> None:
        """A resumed stage keeps the steps recorded before it was stopped (and records again
        those it replays)."""
        self.steps = min(self.steps, max(0, runner.max_iters // self.micro_batches))
        done = runner.iter // self.micro_batches
        kept = read(self.path) if done else None
        if kept:
            n = min(done, kept["steps"])
            self.losses, self.params_sha256 = kept["losses"][:n], kept["params_sha256"][:n]
            self.params_norm = kept["params_norm"][:n]

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        step = batch_idx // self.micro_batches
        if step >= self.steps:
            return
        if batch_idx % self.micro_batches == 0:
            self._sums = {}
        for name, value in (outputs or {}).items():
            self._sums[name] = self._sums.get(name, 0.0) + float(value.detach() if torch.is_tensor(value) else value)
        if (batch_idx + 1) % self.micro_batches:
            return
        values = {name: total / self.micro_batches for name, total in sorted(self._sums.items())}
        if self.world_size > 1:
            values = self._mean_over_ranks(values)  # every rank, before any may return
        if step > len(self.losses):  # resumed past steps that were not kept: the record stays short
            return
        del self.losses[step:], self.params_sha256[step:], self.params_norm[step:]
        self.losses.append(values)
        if self.rank == 0:
            sha, norm = state_checksum(self.state())
            self.params_sha256.append(sha)
            self.params_norm.append(norm)
            atomic_write_json(self.path, self.record())
        if _stop_at is not None and step + 1 >= min(_stop_at, self.steps):
            raise EvidenceComplete(self.record())

    def _mean_over_ranks(self, values: dict) -> dict:
        import torch.distributed as dist

        param = next(iter(self.state().values()), None)
        device = param.device if param is not None and param.device.type == "cuda" else "cpu"
        tensor = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return {name: float(v) / self.world_size for name, v in zip(values, tensor.tolist())}

    def record(self) -> dict:
        """What ``artifact.json`` keeps under ``evidence``."""
        # the CPU threads too: a reduction split over another number of threads rounds differently,
        # so a re-run that is to be bit-identical uses the same number
        return {
            "format": FORMAT,
            "steps": len(self.params_sha256) if self.rank == 0 else len(self.losses),
            "micro_batches": self.micro_batches,
            "world_size": self.world_size,
            "losses": self.losses,
            "params_sha256": self.params_sha256,
            "params_norm": self.params_norm,
            "threads": torch.get_num_threads(),
        }


def read(path: Path) -> dict | None:
    """A recorded evidence file, or None when absent or unreadable (then nothing is kept)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def _relative(a: float, b: float) -> float:
    if a == b or (math.isnan(a) and math.isnan(b)):
        return 0.0
    if math.isnan(a) or math.isnan(b) or math.isinf(a) or math.isinf(b):
        return math.inf
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


def compare(stored: dict, rerun: dict, steps: int) -> dict:
    """How the first ``steps`` steps of a re-run compare with those recorded: the largest relative
    difference of any logged value (``max_rel_loss_diff``, with where it was: ``worst``; inf when
    the logged names differ) and of the weights' norm, and whether the weights after the last step
    are bit-identical (``params_equal``)."""
    worst, where = 0.0, None
    for step, (old, new) in enumerate(zip(stored["losses"][:steps], rerun["losses"][:steps]), 1):
        if set(old) != set(new):
            worst, where = math.inf, {"step": step, "name": "logged names", "stored": sorted(old), "rerun": sorted(new)}
            break
        for name in sorted(old):
            diff = _relative(float(old[name]), float(new[name]))
            if diff > worst:
                worst, where = diff, {"step": step, "name": name, "stored": old[name], "rerun": new[name]}
    last = steps - 1
    return {
        "steps": steps,
        "max_rel_loss_diff": worst,
        "worst": where,
        "params_equal": stored["params_sha256"][last] == rerun["params_sha256"][last],
        "params_norm_rel_diff": _relative(float(stored["params_norm"][last]), float(rerun["params_norm"][last])),
    }

"""The training compute a board shows, from the ``schedule`` each row records (every trained stage's
wall time, processes, threads and device): a cell's own column (the stages it used, shared ones in
full, mean over seeds) and the board's total, which counts a stage shared by many cells once.
Rows that predate the record show none (boards of older rows are unchanged). Beside the hours, the
floating-point operations each stage counted while it trained (``train_flops``, see
:mod:`umdbench.run.flops`), shown only where every stage a cell used has the count, so a cell
trained partly by older code is never shown a partial sum."""

from __future__ import annotations

import statistics
from collections import defaultdict

__all__ = ["board_flops", "board_stage_hours", "cell_compute_text", "flops_text", "stage_hours"]


def stage_hours(entry: dict) -> tuple[str, float] | None:
    """``(unit, hours)`` of one trained stage from a row's ``schedule``: core-hours on the CPU
    (wall time x processes x threads), GPU-hours on CUDA (wall time x processes); None when the row
    predates the record."""
    wall = entry.get("wall_time_s")
    if wall is None:
        return None
    procs = int(entry.get("world_size", 1))
    if entry.get("device") == "cuda":
        return "GPU-h", wall * procs / 3600
    return "core-h", wall * procs * int(entry.get("threads", 1)) / 3600


def flops_text(flops: float) -> str:
    """FLOPs in the largest unit that keeps the number at or above 1 (3 significant digits)."""
    for unit, scale in (("EFLOP", 1e18), ("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9)):
        if flops >= scale:
            return f"{flops / scale:.3g} {unit}"
    return f"{flops:.3g} FLOP"


def _row_flops(row: dict) -> int | None:
    """The FLOPs of every stage a row used, or None when one of them has no count."""
    entries = list((row.get("schedule") or {}).values())
    if not entries or any(e.get("train_flops") is None for e in entries):
        return None
    return sum(int(e["train_flops"]) for e in entries)


def cell_compute_text(rows: list[dict]) -> str:
    """A cell's training compute: the stages it used (shared ones in full), mean over its seeds."""
    totals: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        per_unit: dict[str, float] = defaultdict(float)
        for entry in (row.get("schedule") or {}).values():
            if (hours := stage_hours(entry)) is not None:
                per_unit[hours[0]] += hours[1]
        for unit, value in per_unit.items():
            totals[unit].append(value)
    parts = [f"{statistics.mean(v):.3g} {unit}" for unit, v in sorted(totals.items())]
    flops = [_row_flops(row) for row in rows]
    if rows and all(f is not None for f in flops):
        parts.append(flops_text(statistics.mean(flops)))
    return ", ".join(parts) or "–"


def board_flops(rows: list[dict]) -> tuple[int, int] | None:
    """``(FLOPs, stages)`` over the unique stages of a board's rows that counted theirs (a shared
    stage once); None when none did."""
    seen: dict[str, int] = {}
    for row in rows:
        for key, entry in (row.get("schedule") or {}).items():
            if key not in seen and entry.get("train_flops") is not None:
                seen[key] = int(entry["train_flops"])
    return (sum(seen.values()), len(seen)) if seen else None


def board_stage_hours(rows: list[dict]) -> dict[str, tuple[float, int]]:
    """``{unit: (hours, stages)}`` over the unique stages of a board's rows: a stage shared by many
    cells is counted once."""
    seen: dict[str, tuple[str, float]] = {}
    for row in rows:
        for key, entry in (row.get("schedule") or {}).items():
            if key not in seen and (hours := stage_hours(entry)) is not None:
                seen[key] = hours
    out: dict[str, tuple[float, int]] = {}
    for unit, value in seen.values():
        total, n = out.get(unit, (0.0, 0))
        out[unit] = (total + value, n + 1)
    return out

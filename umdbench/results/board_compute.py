"""The training compute a board shows, from the ``schedule`` each row records (every trained stage's
wall time, processes, threads and device): a cell's own column (the stages it used, shared ones in
full, mean over seeds) and the board's total, which counts a stage shared by many cells once.
Rows that predate the record show none (boards of older rows are unchanged)."""

from __future__ import annotations

import statistics
from collections import defaultdict

__all__ = ["board_stage_hours", "cell_compute_text", "stage_hours"]


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
    return ", ".join(f"{statistics.mean(v):.3g} {unit}" for unit, v in sorted(totals.items())) or "–"


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

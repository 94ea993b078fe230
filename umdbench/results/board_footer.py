"""The provenance footer of a suite's board: what its numbers come from (preset, data fingerprints
and roots, devices and compute, seeds, commits, plugin packages, recorded deviations, overrides) and
when and by which command it was rendered."""

from __future__ import annotations

import time

from umdbench.results.board_compute import board_flops, board_stage_hours, flops_text
from umdbench.results.board_data import SuiteResults, recorded_deviations

__all__ = ["board_footer"]


def board_footer(suite, results: SuiteResults, preset: str) -> str:
    """The provenance list closing a suite's board of one preset."""
    rows = results.all_rows()
    lines = ["\n---\n", f"- **preset**: `{preset}`"]
    data = {}
    for r in rows:
        root = (r.get("config") or {}).get("dataset", {}).get("root")
        data.setdefault(r["dataset"], set()).add(
            f"fingerprint {str(r['data_fingerprint'])[:12]}" + (f", root `{root}`" if root else " (generated)")
        )
    for (name, dataset), (status, detail) in results.status.items():
        if status == "data unavailable" and dataset not in data:
            data[dataset] = {f"unavailable ({detail})" if detail else "unavailable"}
    if data:
        lines.append("- **data**: " + "; ".join(f"{d}: {', '.join(sorted(v))}" for d, v in sorted(data.items())))
    devices = sorted({r["device"] for r in rows if r.get("device")})
    wall = sum(float(r.get("wall_time_s") or 0) for r in rows)
    lines.append(
        f"- **compute**: {', '.join(devices) or '–'}; {wall / 3600:.2f} h of cell wall time over {len(rows)} runs"
    )
    hours = board_stage_hours(rows)
    if hours:
        lines.append(
            "- **training compute** (each trained stage once, however many cells share it): "
            + ", ".join(f"{v:.3g} {unit} over {n} stages" for unit, (v, n) in sorted(hours.items()))
        )
    if (flops := board_flops(rows)) is not None:
        lines.append(
            f"- **training FLOPs** (counted on each stage's first optimiser step, times its steps and "
            f"processes; each stage once): {flops_text(flops[0])} over {flops[1]} stages"
        )
    seeds = sorted({r["seed"] for r in rows})
    lines.append(f"- **seeds**: {', '.join(map(str, seeds)) or '–'}")
    commits = sorted({r["git_commit"] for r in rows if r.get("git_commit")})
    shown = [f"`{c[:12]}{'-dirty' if c.endswith('-dirty') else ''}`" for c in commits]
    lines.append(f"- **commits**: {', '.join(shown) or '–'}")
    plugins: dict[str, set[str]] = {}  # package -> the plugin names it provided, over every row
    for r in rows:
        for used, package in (r.get("plugins") or {}).items():
            if not package.startswith("umdbench "):
                plugins.setdefault(package, set()).add(used.split(":", 1)[1])
    if plugins:
        lines.append(
            "- **plugin packages**: " + "; ".join(f"{p} ({', '.join(sorted(n))})" for p, n in sorted(plugins.items()))
        )
    others = {
        d: None
        for ds in suite.shown_datasets(results.stored_datasets)
        for d in recorded_deviations(results, suite.cell_names(), ds, own=False)
    }
    if others:
        lines.append("- **deviations** recorded with the runs: " + "; ".join(others))
    if results.overrides:
        lines.append(f"- **overrides** (`--cfg-options`): {' '.join(f'`{o}`' for o in sorted(results.overrides))}")
    lines.append(f"- generated {time.strftime('%Y-%m-%d %H:%M')} by `umdbench leaderboard --suite {suite.name}`")
    return "\n".join(lines) + "\n"

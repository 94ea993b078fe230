"""Peak host memory of one paper-preset MR-Pretrain step with and without activation checkpointing.

    python -m benchmarks.activation_memory --batch 8      # measure (three fresh processes, ~8 min on 2 cores)
    python -m benchmarks.activation_memory --part flops   # only the FLOP count (the stored memory is kept)
    python -m benchmarks.activation_memory --render       # re-write BENCHMARKS.md's section from the JSON

Each mode runs in a fresh process through :mod:`benchmarks.memory_probe` (random-init towers of the
paper geometry, bf16 autocast where native, the optimiser stepped in backward: the preset as a stage
runs it), one warm-up step then ``--steps`` measured. The step's own memory is the peak RSS minus
the RSS between steps (weights, EMA teacher, AdamW state), which is what grows with the batch; its
ratio is projected onto the CUDA peaks measured on the H200 (``benchmarks/gpu-h200/steps*.jsonl``)
to say what the paper batch of 256 needs on one GPU. The price in compute is counted, not timed
(2 shared cores make one step's time noise): ``FlopCounterMode`` over one forward + backward at
batch 2, with and without checkpointing (the recomputation is counted in backward). The result goes to
``benchmarks/activation-memory.json``, which ``benchmarks.run`` carries into every regeneration of
BENCHMARKS.md (as it does the GPU section).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).parent
JSON_OUT = HERE / "activation-memory.json"
MD = HERE.parent / "BENCHMARKS.md"
HEADING = "## Activation checkpointing: peak memory of the paper MR step"
GPU_GIB = 80 * 1e9 / 2**30  # an "80 GB" card (H100 80GB: 79.6 GiB usable of 80 GiB)


def probe(batch: int, steps: int, checkpointing: bool) -> dict:
    """One memory_probe run in a fresh process (its own allocator, nothing left from the other mode)."""
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.memory_probe",
        "--batch",
        str(batch),
        "--steps",
        str(steps),
        "--set",
        f"activation_checkpointing={str(checkpointing).lower()}",
    ]
    out = subprocess.run(cmd, cwd=HERE.parent, capture_output=True, text=True, check=False)
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if out.returncode or not lines:
        raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(lines[-1])


FLOPS_SCRIPT = """
import json, sys
from benchmarks.cases import build_case, step_flops
from umdbench.models.activation_checkpointing import checkpoint_blocks
case = build_case("mr", "paper", int(sys.argv[1]), train_overrides={"activation_checkpointing": True})
with case.optim.optim_context(case.model):
    ckpt = step_flops(case)
    checkpoint_blocks(case.strategy.encoder.checkpoint_targets(), enabled=False)
    plain = step_flops(case)
print(json.dumps({"batch": case.batch_size, "plain_gflop": plain / 1e9, "checkpointed_gflop": ckpt / 1e9}))
"""


def count_flops(batch: int) -> dict:
    """Forward + backward FLOPs of the paper MR step with and without checkpointing (fresh process)."""
    out = subprocess.run(
        [sys.executable, "-c", FLOPS_SCRIPT, str(batch)], cwd=HERE.parent, capture_output=True, text=True, check=False
    )
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if out.returncode or not lines:
        raise SystemExit(f"FLOP count failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(lines[-1])


def gpu_line() -> tuple[float, float, str] | None:
    """``(GiB per sample, GiB at batch 0, source)`` of the paper MR step on the H200: a line through
    the smallest and largest batch measured there."""
    rows = []
    for path in sorted((HERE / "gpu-h200").glob("steps*.jsonl")):
        if "compile" in path.name:
            continue
        rows += [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
    mr = sorted({r["batch"]: r for r in rows if r.get("strategy") == "mr"}.values(), key=lambda r: r["batch"])
    if len(mr) < 2:
        return None
    lo, hi = mr[0], mr[-1]
    slope = (hi["peak_cuda_gib"] - lo["peak_cuda_gib"]) / (hi["batch"] - lo["batch"])
    return slope, lo["peak_cuda_gib"] - slope * lo["batch"], f"{lo['device']}, batch {lo['batch']} and {hi['batch']}"


def render(data: dict) -> list[str]:
    plain, ckpt = data["plain"], data["checkpointed"]
    step = {k: r["peak_rss_gib"] - r["rss_between_steps_gib"] for k, r in (("plain", plain), ("ckpt", ckpt))}
    ratio_peak = ckpt["peak_rss_gib"] / plain["peak_rss_gib"]
    ratio_step = step["ckpt"] / step["plain"]
    flops = data.get("flops")
    lines = [
        HEADING,
        "",
        f"One MR-Pretrain training step at the `paper` preset (random-init ViT-B/16 at 384 px, RoBERTa-base geometry, "
        f"6 co-attention layers; {plain['precision']}, optimiser stepped in backward, {plain['allocator']}) at batch "
        f"{data['batch']}, each mode in a fresh process, {data['steps']} measured step(s) after one warm-up. "
        f"`train.activation_checkpointing=true` recomputes the ViT blocks, the text layers and the co-attention layers "
        f"in backward (same updates: `tests/models/test_activation_checkpointing.py`). Measured {data['measured']} on "
        f"{data['machine']}: batch {data['batch']}, the largest that fits comfortably beside other work on this "
        f"machine (256 does not fit it).",
        "",
        "| mode | batch | RSS between steps (GiB) | peak RSS (GiB) | step's own memory: peak - between (GiB) |",
        "|---|---|---|---|---|",
        f"| plain | {data['batch']} | {plain['rss_between_steps_gib']:.2f} | {plain['peak_rss_gib']:.2f} | "
        f"{step['plain']:.2f} |",
        f"| activation checkpointing | {data['batch']} | {ckpt['rss_between_steps_gib']:.2f} | "
        f"{ckpt['peak_rss_gib']:.2f} | {step['ckpt']:.2f} |",
        "",
        f"* Ratio, checkpointed / plain: **{ratio_step:.2f}x** the step's own memory (activations, gradient "
        f"buckets, bf16 weight casts), **{ratio_peak:.2f}x** the process peak.",
    ]
    if flops:
        lines.append(
            f"* The price: {flops['checkpointed_gflop'] / flops['plain_gflop']:.2f}x the FLOPs of a step "
            f"({flops['plain_gflop']:.0f} -> {flops['checkpointed_gflop']:.0f} GFLOP forward + backward at batch "
            f"{flops['batch']}, `FlopCounterMode`): the blocks' forward runs again in backward. (Times are not "
            f"compared: one step each on 2 cores shared with other work; they are in the JSON.)"
        )
    lines.append(f"* Reproduce: `{data['command']}`.")
    line = gpu_line()
    if line:
        slope, base, source = line
        plain_256 = base + 256 * slope
        by_ratio = base + 256 * slope * ratio_step
        by_size = base + 256 * step["ckpt"] / data["batch"]
        high = max(by_ratio, by_size)
        lines.append(
            f"* What it means for the paper batch on one GPU (an estimate, not a measurement): the H200 figures below "
            f"({source}) put the paper MR step at {base:.1f} GiB + {slope:.3f} GiB per sample, so {plain_256:.0f} GiB "
            f"at batch 256 without checkpointing. Assumed: the per-sample memory grows linearly with the batch (as "
            f"the H200's batch 32 and 128 say), the fixed part (weights, teacher, AdamW state) is unchanged, and "
            f"checkpointing keeps on CUDA either the same share of the per-sample memory as here "
            f"({ratio_step:.2f}x: {by_ratio:.0f} GiB) or, as CUDA's flash attention already keeps less than the CPU "
            f"does, the same {step['ckpt'] / data['batch']:.2f} GiB per sample as here (the blocks' inputs, the MIM "
            f"decoder and the heads: {by_size:.0f} GiB). Batch 256 with checkpointing thus needs about "
            f"{min(by_ratio, by_size):.0f}-{high:.0f} GiB: {'within' if high < 0.9 * GPU_GIB else 'not surely within'} "
            f"an 80 GB GPU ({GPU_GIB:.1f} GiB). `bash benchmarks/gpu_check.sh run` measures it (the MR step at batch "
            f"256, checkpointed, bf16)."
        )
    return lines + [""]


def write_section(lines: list[str]) -> None:
    """Replace (or insert, before the GPU figures) this section of BENCHMARKS.md."""
    text = MD.read_text().splitlines()
    if HEADING in text:
        start = text.index(HEADING)
        end = next((i for i in range(start + 1, len(text)) if text[i].startswith("## ")), len(text))
        text[start:end] = lines
    else:
        at = next((i for i, l in enumerate(text) if l.startswith("## GPU figures")), len(text))
        text[at:at] = lines
    MD.write_text("\n".join(text) + "\n")


def section() -> list[str]:
    """The section as committed (for benchmarks.run), or nothing when it was never measured."""
    return render(json.loads(JSON_OUT.read_text())) if JSON_OUT.is_file() else []


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--flops-batch", type=int, default=2)
    ap.add_argument(
        "--part",
        choices=("all", "memory", "flops"),
        default="all",
        help="what to measure (the other part is kept from the stored JSON)",
    )
    ap.add_argument("--render", action="store_true", help="only re-write BENCHMARKS.md's section from the JSON")
    args = ap.parse_args(argv)
    if not args.render:
        from benchmarks.cases import machine

        data = json.loads(JSON_OUT.read_text()) if JSON_OUT.is_file() and args.part != "all" else {}
        if args.part in ("all", "memory"):
            data.update(
                {
                    "batch": args.batch,
                    "steps": args.steps,
                    "command": f"python -m benchmarks.activation_memory --batch {args.batch} --steps {args.steps}",
                    "measured": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
                    "machine": machine(),
                }
            )
            for key, on in (("plain", False), ("checkpointed", True)):
                data[key] = probe(args.batch, args.steps, on)
                print(key, json.dumps(data[key]), flush=True)
        if args.part in ("all", "flops"):
            data["flops"] = count_flops(args.flops_batch)
            print("flops", json.dumps(data["flops"]), flush=True)
        JSON_OUT.write_text(json.dumps(data, indent=1) + "\n")
    lines = section()
    write_section(lines)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

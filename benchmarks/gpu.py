"""Paper-preset training-step throughput and MFU on a CUDA GPU (not run by the CPU suite).

    python -m benchmarks.gpu --strategy mr --batch 32 --steps 20 --peak-tflops 989

Builds the strategy at the paper preset (random init, offline text geometry as in the suite),
moves it to CUDA, trains through ``run.build_optim.build_optim_wrapper`` (fused AdamW; bf16 autocast via
umdbench's bf16 autocast wrapper unless ``--amp false``) and ``StageModel.train_step``, and prints:
samples/s, step FLOPs (``FlopCounterMode``, forward + backward), achieved TFLOP/s, MFU against
``--peak-tflops`` (the GPU's dense bf16 peak; H100 SXM 989, H100 PCIe 756, A100 312), peak CUDA
memory, and the projected wall time of the strategy's paper-preset stage (``max_iters`` at its
``batch_size``) plus the Table 1 tuning stages (direct / tdcalib / gmcoord on VQA-RAD).
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv=None) -> int:
    import torch

    from benchmarks.cases import build_case, step_flops

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--strategy", default="mr")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--amp", default="auto", help="auto (bf16 on CUDA) | false")
    ap.add_argument("--compile", action="store_true", help="train.compile: torch.compile the hot blocks")
    ap.add_argument(
        "--activation-checkpointing",
        action="store_true",
        help="train.activation_checkpointing: recompute the encoder blocks in backward (the paper batch "
        "on one GPU); the FLOPs then include the recomputation",
    )
    ap.add_argument(
        "--cells",
        default="direct,tdcalib,gmcoord",
        help="further strategies to measure (pre-training or tuning; tuning ones on VQA-RAD)",
    )
    ap.add_argument("--out", help="also append each result to this JSON-lines file as soon as it is measured")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks.gpu needs a CUDA GPU")
    from umdbench.run.build_optim import build_optim_wrapper
    from umdbench.run.build_strategy import compile_strategy

    def measure(name: str, batch: int, steps: int) -> dict:
        case = build_case(
            name, "paper", batch, train_overrides={"activation_checkpointing": args.activation_checkpointing}
        )
        case.model.cuda()
        case.batch = {k: v.cuda(non_blocking=True) for k, v in case.batch.items()}
        train = {**case.train, "amp": False if args.amp == "false" else "auto", "compile": args.compile}
        compile_strategy(case.strategy, train)
        case.optim = build_optim_wrapper(case.strategy, train)
        with case.optim.optim_context(case.model):
            flops = step_flops(case)
        for _ in range(args.warmup):
            case.step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        for _ in range(steps):
            case.step()
        torch.cuda.synchronize()
        dt = (time.perf_counter() - t) / steps
        out = {
            "strategy": name,
            "batch": batch,
            "s_per_step": dt,
            "samples_per_s": batch / dt,
            "gflop_per_step": flops / 1e9,
            "tflops": flops / dt / 1e12,
            "mfu": flops / dt / (args.peak_tflops * 1e12),
            "peak_cuda_gib": torch.cuda.max_memory_allocated() / 2**30,
            "paper_max_iters": case.train["max_iters"],
            "paper_batch": case.train["batch_size"],
            "amp": type(case.optim).__name__,
            "device": torch.cuda.get_device_name(0),
            "activation_checkpointing": args.activation_checkpointing,
        }
        # projected stage time at the paper's schedule (assumes throughput at --batch holds at the paper batch)
        out["projected_stage_h"] = case.train["max_iters"] * case.train["batch_size"] / out["samples_per_s"] / 3600
        del case
        torch.cuda.empty_cache()
        return out

    def record(r: dict) -> dict:
        # one line per strategy, written at once, so a run stopped by its time limit keeps what it measured
        print(json.dumps(r), flush=True)
        if args.out:
            with open(args.out, "a") as fh:
                fh.write(json.dumps(r) + "\n")
        return r

    results = [record(measure(args.strategy, args.batch, args.steps))]
    for name in [c for c in args.cells.split(",") if c and c != args.strategy]:
        results.append(record(measure(name, min(args.batch, 64), max(5, args.steps // 2))))
    cell = sum(r["projected_stage_h"] for r in results if r["strategy"] in ("mr", "tdcalib", "gmcoord"))
    print(f"projected UMD Table 1 cell (MR-Pretrain + TD-Calib + GM-Coord on VQA-RAD): {cell:.1f} h")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""3-D (umdbench-brain) benchmark cases: training steps of ``mae3d``, ``seg`` and ``brainmvp`` on
the ``resunet3d`` encoder (tiny) and UniFormer-S (``uniformer3d``, paper geometry), a BraTS-layout
NIfTI fixture for the data-loading rows, the GPU-hour projection of the paper recipes, and the
BENCHMARKS.md section of both.

A step case is built as a stage builds it (``StageModel`` + ``build_optim.build_optim_wrapper``) and
reuses :class:`benchmarks.cases.StepCase`: ``fast`` = the run path with the preset's ``train``
options (the brain presets train in fp32, as released, so fast = fused AdamW; set
``UMDBENCH_BENCH_3D_AMP=auto`` to time bf16 autocast where native instead), ``reference`` = plain
eager fp32 (per-tensor AdamW, no autocast, no compile; :func:`umdbench.models.reference.reference_train_options`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from .cases import StepCase

STRATEGIES_3D = ("mae3d", "seg", "brainmvp")
# tiny: the CPU encoder brainsynth runs use; paper: UniFormer-S at 96^3, the released backbone
ENCODER_3D = {"tiny": "resunet3d", "paper": "uniformer3d"}
MODALITIES = ["t1", "t1c", "t2", "flair"]

# GPU projection assumptions (printed with every figure): NVIDIA H100 SXM dense peaks
GPU_NAME = os.environ.get("UMDBENCH_BENCH_GPU_NAME", "H100 SXM")
GPU_PEAK_TFLOPS = {
    "tf32": float(os.environ.get("UMDBENCH_BENCH_GPU_TF32_TFLOPS", "494.7")),
    "bf16": float(os.environ.get("UMDBENCH_BENCH_GPU_BF16_TFLOPS", "989.4")),
}
GPU_MFU = float(os.environ.get("UMDBENCH_BENCH_GPU_MFU", "0.3"))


def _registries():
    from umdbench.plugin import get_registries

    return get_registries(())


def synthetic_volume_batch(
    cfg: dict, batch_size: int, with_seg: bool, seed: int = 0, volume_shape=(240, 240, 155)
) -> dict:
    """A batch as the volume task types yield it: ``roi_size``-cubed crops of 4 modalities in [0, 1],
    cut at random positions of studies of ``volume_shape`` (BraTS by default; the template canvas
    for ``brainmvp``, whose template crops must fall on it)."""
    g = torch.Generator().manual_seed(seed)
    roi = int(cfg["roi_size"])
    m = len(cfg["modalities"])
    origin = torch.stack(
        [torch.randint(0, max(1, int(s) - roi + 1), (batch_size,), generator=g) for s in volume_shape], 1
    )
    batch = {
        "volume": torch.rand(batch_size, m, roi, roi, roi, generator=g),
        "present": torch.ones(batch_size, m, dtype=torch.long),
        "index": torch.arange(batch_size),
        "crop_origin": origin,
        "volume_shape": torch.tensor([list(volume_shape)] * batch_size),
        "flips": torch.zeros(batch_size, 3, dtype=torch.long),
    }
    if with_seg:
        batch["seg"] = (torch.rand(batch_size, 3, roi, roi, roi, generator=g) > 0.9).float()
    return batch


def build_case_3d(name: str, preset: str, batch_size: int | None = None, seed: int = 0) -> StepCase:
    from umdbench.api import TaskInfo
    from umdbench.run.stage_model import StageModel
    from umdbench_brain.tasks import SegmentationTask, VolumePretrainTask

    torch.manual_seed(seed)
    reg = _registries()
    enc_cls = reg.encoder.get(ENCODER_3D[preset])
    ecfg = enc_cls.default_config(preset)
    encoder = enc_cls.from_config(ecfg)
    tune = name == "seg"
    cls = (reg.tune if tune else reg.pretrain).get(name)
    cfg = cls.default_config(preset, "brats2021" if tune else None)
    amp = os.environ.get("UMDBENCH_BENCH_3D_AMP")
    if amp:
        cfg["train"]["amp"] = {"false": False, "true": "bf16"}.get(amp.lower(), amp)
    if tune:
        spec = SegmentationTask()
        strategy = cls(encoder, cfg, TaskInfo("segmentation", 3, ["WT", "TC", "ET"], spec=spec))
    else:
        spec = VolumePretrainTask()
        strategy = cls(encoder, cfg)
    bs = int(batch_size or cfg["train"]["batch_size"])
    model = StageModel(strategy, spec)
    model.train()
    shape = tuple(cfg.get("template_canvas") or (240, 240, 155))
    case = StepCase(
        name,
        preset,
        bs,
        model,
        strategy,
        cfg["train"],
        synthetic_volume_batch(ecfg, bs, tune, seed, volume_shape=shape),
    )
    case.set_mode("fast")
    return case


def paper_recipe(name: str) -> dict:
    """``max_iters``, ``batch_size`` and ``amp`` of the strategy's paper preset."""
    reg = _registries()
    cls = (reg.tune if name == "seg" else reg.pretrain).get(name)
    train = cls.default_config("paper", "brats2021" if name == "seg" else None)["train"]
    return {
        "max_iters": int(train["max_iters"]),
        "batch_size": int(train["batch_size"]),
        "amp": train.get("amp", False),
    }


def gpu_hours(flops_per_sample: float, name: str) -> dict:
    """Projected GPU hours of the paper recipe: FLOPs/sample x batch x steps / (peak x MFU), for the
    TF32 peak (the fp32 recipes: cuDNN convolutions run in TF32 by default) and the bf16 peak."""
    recipe = paper_recipe(name)
    total = flops_per_sample * recipe["batch_size"] * recipe["max_iters"]
    out = {
        "recipe": recipe,
        "total_pflop": total / 1e15,
        "gpu": GPU_NAME,
        "mfu": GPU_MFU,
        "peaks_tflops": dict(GPU_PEAK_TFLOPS),
    }
    for kind, peak in GPU_PEAK_TFLOPS.items():
        out[f"gpu_hours_{kind}"] = total / (peak * 1e12 * GPU_MFU) / 3600
    return out


# -- data fixture ------------------------------------------------------------------------------
def write_brats_fixture(root: Path, studies: int, shape: tuple[int, int, int], spacing: float, seed: int = 0) -> Path:
    """``studies`` BraTS 2021-layout studies (4 modalities + seg, gzipped NIfTI, LPS at ``spacing``
    mm): a smooth 'head' ellipsoid on a zero background with a tumour label. Returns the dataset folder."""
    import nibabel as nib

    folder = root / "brats2021"
    rng = np.random.default_rng(seed)
    axes = [np.linspace(-1, 1, s, dtype=np.float32) for s in shape]
    zz, yy, xx = np.meshgrid(*axes, indexing="ij")
    head = (zz**2 / 0.8 + yy**2 / 0.7 + xx**2 / 0.9) < 1
    tumour = ((zz - 0.2) ** 2 + (yy + 0.1) ** 2 + xx**2) < 0.05
    affine = np.diag([-spacing, -spacing, spacing, 1.0])
    for i in range(studies):
        case = folder / f"BraTS2021_{i:05d}"
        case.mkdir(parents=True, exist_ok=True)
        for j, suffix in enumerate(("flair", "t1", "t1ce", "t2")):
            data = np.where(head, 300 + 200 * np.sin(3 * zz + j + i) * np.cos(2 * yy) + 50 * tumour, 0)
            data = (data + head * rng.normal(0, 5, shape)).astype(np.int16)  # BraTS stores int16
            nib.save(nib.Nifti1Image(data, affine), str(case / f"{case.name}_{suffix}.nii.gz"))
        label = (tumour * 2).astype(np.uint8)
        label[tumour & (zz > 0.25)] = 4
        nib.save(nib.Nifti1Image(label, affine), str(case / f"{case.name}_seg.nii.gz"))
    # the studies dealt round the splits: the case-name hash split of a handful of studies can leave
    # a split empty, which the plugin refuses
    names = [f"BraTS2021_{i:05d}" for i in range(studies)]
    splits = {split: names[k::3] for k, split in enumerate(("train", "val", "test"))}
    (folder / "splits.json").write_text(json.dumps(splits))
    return folder


# -- report ------------------------------------------------------------------------------------
def _median(b):
    return b["stats"]["median"]


def render_3d(by_kind: dict, verdicts: list) -> list[str]:
    """The BENCHMARKS.md section of the 3-D rows (empty when none ran)."""
    lines: list[str] = []
    steps = by_kind.get("train_step_3d", [])
    if steps:
        lines += [
            "## 3-D training steps (umdbench-brain: resunet3d at tiny, UniFormer-S at paper geometry)",
            "",
            "One optimiser step as a stage runs it (`StageModel.train_step` + `build_optim_wrapper`) on a "
            "synthetic batch of `roi_size`-cubed 4-modality crops (tiny 32^3, paper 96^3). **fast** = the "
            "run path with the preset's train options (the brain presets are fp32 as released, so: fused "
            "AdamW; `UMDBENCH_BENCH_3D_AMP=auto` times bf16 autocast instead); **reference** = plain eager "
            "fp32 (per-tensor AdamW, no autocast, no compile), same module and weights. Paper rows run at "
            "the batch shown (`UMDBENCH_BENCH_3D_PAPER_BATCH`, default 1: the paper batches of 24 / 2 "
            "96^3 studies do not fit this box's memory and time), FLOPs scale linearly to the paper batch. "
            "In fp32 the two paths differ only in the AdamW kernel, so their ratio is about 1 by "
            "construction; with 2 paper rounds, differences of +-15 % are load noise, not a finding.",
            "",
            "| strategy | preset | batch | params (M) | fast s/step | reference s/step | speed-up "
            "| GFLOP/sample | achieved GFLOP/s | peak RSS fast / ref (GiB) | rounds |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        cases: dict[str, dict] = {}
        for b in steps:
            cases.setdefault(b["extra_info"]["case"], {})[b["extra_info"]["mode"]] = b
        projections = []
        for label, modes in cases.items():
            f, r = modes.get("fast"), modes.get("reference")
            if f is None:
                continue
            fi = f["extra_info"]
            fs = _median(f)
            gfs = fi.get("flops_per_step", float("nan")) / 1e9
            row = [fi["strategy"], fi["preset"], str(fi["batch_size"]), f"{fi['params_m']:.1f}", f"{fs:.3f}"]
            if r is not None:
                rs = _median(r)
                row += [f"{rs:.3f}", f"**{rs / fs:.2f}x**"]
            else:
                row += ["-", "-"]
            row += [
                f"{gfs / fi['batch_size']:.1f}",
                f"{gfs / fs:.1f}",
                f"{fi['peak_rss_mib'] / 1024:.2f} / " + (f"{r['extra_info']['peak_rss_mib'] / 1024:.2f}" if r else "-"),
                str(f["stats"]["rounds"]),
            ]
            lines.append("| " + " | ".join(row) + " |")
            if "gpu_projection" in fi:
                projections.append((fi["strategy"], fi["gpu_projection"]))
        if projections:
            p0 = projections[0][1]
            lines += [
                "",
                f"Projected GPU time of the paper recipes on one {p0['gpu']} at an assumed MFU of "
                f"{p0['mfu']:.0%} (dense peaks: TF32 {p0['peaks_tflops']['tf32']} TFLOP/s, for the fp32 "
                f"recipes whose convolutions cuDNN runs in TF32; bf16 {p0['peaks_tflops']['bf16']} TFLOP/s): "
                "GPU-h = GFLOP/sample x batch x steps / (peak x MFU); optimiser, data loading and "
                "evaluation excluded. Assumptions: `UMDBENCH_BENCH_GPU_{NAME,TF32_TFLOPS,BF16_TFLOPS,MFU}`.",
                "",
                "| strategy | paper batch | steps | total PFLOP | GPU-h (TF32) | GPU-h (bf16) |",
                "|---|---|---|---|---|---|",
            ]
            for name, p in projections:
                rec = p["recipe"]
                lines.append(
                    f"| {name} | {rec['batch_size']} | {rec['max_iters']} | {p['total_pflop']:.0f} | "
                    f"{p['gpu_hours_tf32']:.1f} | {p['gpu_hours_bf16']:.1f} |"
                )
                verdicts.append(
                    f"{name} paper recipe: {p['total_pflop']:.0f} PFLOP, about "
                    f"{p['gpu_hours_tf32']:.1f} {p['gpu']} GPU-h in TF32 at {p['mfu']:.0%} MFU (projected)"
                )
        lines.append("")
    data = by_kind.get("data_3d", [])
    if data:
        lines += [
            "## 3-D data loading (BraTS-layout NIfTI fixture)",
            "",
            "`SegmentationTask` dataset items (96^3 training crops) over a generated BraTS 2021-layout "
            "fixture (gzipped int16 NIfTI, LPS, resampled to 1 mm by the released pre-processing). "
            "first epoch = NIfTI decode + RAS/1 mm/foreground crop + percentile scaling + cache write; "
            "reference = the same without a cache (what every epoch cost before); cached = later epochs.",
            "",
            "| variant | studies | stored grid | s/epoch | studies/s | vs first epoch | rounds |",
            "|---|---|---|---|---|---|---|",
        ]
        first = next((b for b in data if b["extra_info"]["variant"].startswith("first")), None)
        for b in sorted(data, key=lambda b: -_median(b)):
            ei = b["extra_info"]
            rel = f"{_median(first) / _median(b):.1f}x" if first else "-"
            lines.append(
                f"| {ei['variant']} | {ei['studies']} | {ei['grid']} | {_median(b):.2f} | "
                f"{ei['studies'] / _median(b):.1f} | {rel} | {b['stats']['rounds']} |"
            )
        cached = next((b for b in data if b["extra_info"]["variant"].startswith("cached")), None)
        if first and cached:
            verdicts.append(
                f"3-D cached epoch vs first-epoch NIfTI decode + pre-processing: "
                f"**{_median(first) / _median(cached):.1f}x**"
            )
        lines.append("")
    return lines

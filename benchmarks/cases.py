"""Shared pieces of the benchmark suite: training-step cases, memory probes, FLOP counts.

A training-step case is one strategy at one preset, wrapped exactly as a stage trains it
(``StageModel`` + ``run.build_optim.build_optim_wrapper``), on a synthetic batch of the preset's batch size.
``mode="fast"`` is umdbench as shipped; ``mode="reference"`` is the plain eager reference
(:mod:`umdbench.models.reference`) on the SAME module and weights.
"""

from __future__ import annotations

import copy
import gc
import os
import time
from dataclasses import dataclass

import torch

from umdbench.api import TaskInfo, deep_merge
from umdbench.models.presets import ENCODER_PRESETS

PRETRAIN = ("mr", "mae", "clip", "flip", "m3ae")
TUNE = ("direct", "tdcalib", "gmcoord")
NUM_CLASSES = 64  # answer vocabulary of the synthetic VQA task used for the tuning strategies


def encoder_cfg(preset: str) -> dict:
    """The preset's encoder; offline, so both towers are random-init encoders of the preset's geometry
    (no CLIP weights here; timing does not depend on the weights) and the text tower uses the packaged
    bert-base-uncased vocabulary (what the paper preset falls back to)."""
    return deep_merge(
        copy.deepcopy(ENCODER_PRESETS[preset]),
        {"text": {"pretrained": None, "tokenizer": "minilm"}, "vision": {"pretrained": None}},
    )


# -- memory ----------------------------------------------------------------------------------
def rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark of this process (Linux ``clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    """VmHWM: peak resident set since the last :func:`reset_peak_rss` (or process start)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- cases -----------------------------------------------------------------------------------
@dataclass
class StepCase:
    name: str
    preset: str
    batch_size: int
    model: object  # StageModel
    strategy: object
    train: dict
    batch: dict
    optim: object = None
    mode: str = "fast"

    @property
    def label(self) -> str:
        return f"{self.name}-{self.preset}-b{self.batch_size}"

    def set_mode(self, mode: str) -> None:
        """Switch the module to ``mode`` and rebuild its optimiser (fresh AdamW state)."""
        from umdbench.models.reference import reference_train_options, set_reference_mode
        from umdbench.run.build_optim import build_optim_wrapper

        ref = mode == "reference"
        set_reference_mode(self.strategy, ref)
        self.optim = None
        gc.collect()
        self.optim = build_optim_wrapper(self.strategy, reference_train_options(self.train, ref))
        self.mode = mode

    def step(self) -> dict:
        return self.model.train_step(self.batch, self.optim)

    def num_params(self) -> int:
        return sum(p.numel() for n, p in self.strategy.named_parameters() if not n.startswith("teacher."))


def synthetic_batch(cfg: dict, batch_size: int, with_labels: bool, seed: int = 0) -> dict:
    from umdbench.models.tiny_fixtures import synthetic_pairs

    batch, _ = synthetic_pairs(
        batch_size, image_size=int(cfg["image_size"]), max_len=int(cfg["max_text_len"]), seed=seed, cfg=cfg
    )
    if with_labels:
        g = torch.Generator().manual_seed(seed)
        batch["label"] = torch.randint(0, NUM_CLASSES, (batch_size,), generator=g)
        batch["answer_type"] = torch.randint(0, 2, (batch_size,), generator=g)
    return batch


def build_case(
    name: str,
    preset: str,
    batch_size: int | None = None,
    seed: int = 0,
    train_overrides: dict | None = None,
    encoder_overrides: dict | None = None,
) -> StepCase:
    """The case as a stage builds it: ``train_overrides`` on the preset's ``train`` (before the
    optimiser is built; ``activation_checkpointing`` applied as ``_train`` applies it),
    ``encoder_overrides`` merged into :func:`encoder_cfg` (e.g. dropout on at the tiny preset)."""
    from umdbench.models import build_encoder, build_tokenizer
    from umdbench.plugin import get_registries
    from umdbench.run.build_strategy import special_ids
    from umdbench.run.host_memory import limit_heap_retention
    from umdbench.run.stage_model import StageModel

    limit_heap_retention()  # as a stage's training process does
    torch.manual_seed(seed)
    registries = get_registries(())
    ecfg = deep_merge(encoder_cfg(preset), encoder_overrides or {})
    encoder = build_encoder(ecfg)
    tune = name in TUNE
    reg = registries.tune if tune else registries.pretrain
    cls = reg.get(name)
    cfg = cls.default_config(preset, "vqa-rad" if tune else None)
    cfg["special_ids"] = special_ids(build_tokenizer(ecfg))
    cfg["train"].update(train_overrides or {})
    strategy = (
        cls(encoder, cfg, TaskInfo("vqa", NUM_CLASSES, [str(i) for i in range(NUM_CLASSES)]))
        if tune
        else cls(encoder, cfg)
    )
    from umdbench.models.activation_checkpointing import apply_activation_checkpointing

    apply_activation_checkpointing(strategy, cfg["train"])
    bs = int(batch_size or cfg["train"]["batch_size"])
    from umdbench.kit.tasktypes import ImageTextPairs, VQATask

    model = StageModel(strategy, VQATask() if tune else ImageTextPairs())
    model.train()
    case = StepCase(name, preset, bs, model, strategy, cfg["train"], synthetic_batch(ecfg, bs, tune, seed))
    case.set_mode("fast")
    return case


def time_steps(case: StepCase, steps: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        case.step()
    out = []
    for _ in range(steps):
        t = time.perf_counter()
        case.step()
        out.append(time.perf_counter() - t)
    return out


# -- FLOPs -------------------------------------------------------------------------------------
def step_flops(case: StepCase) -> int:
    """FLOPs of one training step's forward + backward (optimiser excluded), counted by
    ``torch.utils.flop_counter.FlopCounterMode`` (matmuls/convolutions/attention; 2 per MAC)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        losses = case.model(**case.batch, mode="loss")
        loss, _ = case.model.parse_losses(losses)
        loss.backward()
    case.model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def threads() -> int:
    return torch.get_num_threads()


def machine() -> str:
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {cores} cores, {mem:.0f} GiB RAM, {gpu}; torch {torch.__version__}, {threads()} threads"

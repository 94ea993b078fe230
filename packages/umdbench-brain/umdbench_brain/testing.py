"""Tiny stages of every brain strategy, for tests and the world-size equivalence harness
(:mod:`umdbench.run.equivalence`): its case factories are ``umdbench_brain.testing:case:<strategy>``
(e.g. ``python -m umdbench.run.equivalence check umdbench_brain.testing:case:brainmvp``).

A case is the strategy at its tiny preset on 16^3 crops (the smallest edge every tiny encoder takes)
with a global batch of 4 studies whose modalities differ (one has a single modality), so the
per-study choices, masks and present-voxel counts all vary across the batch. The resunet3d encoder
runs at widths 4/8/8/8 (tiny: 8/16/32/64): the cases train in float64, whose 3-D convolutions have
no fast CPU kernel, and what is compared, the split of the batch, does not depend on the widths.
"""

from __future__ import annotations

import torch

from umdbench.api import TaskInfo

__all__ = [
    "B",
    "CASES",
    "R",
    "RESUNET_CHANNELS",
    "STEPS",
    "build_case_strategy",
    "case",
    "case_train",
    "factory",
    "global_batch",
    "volume_batch",
]

R = 16  # crop edge
B = 4  # global batch
STEPS = 2  # optimiser steps the harness compares (BrainMVP: one before its contrastive term starts, one with it)
RESUNET_CHANNELS = [4, 8, 8, 8]  # the cases' resunet3d widths (the module doc says why)
CANVAS = [24, 24, 24]  # template canvas; the studies' grid is 20^3
PRESENT = torch.tensor([[1, 1, 1, 1], [1, 0, 1, 1], [0, 0, 1, 0], [1, 1, 0, 1]])

# strategy -> (class path, encoder, task type, options over the tiny preset). BrainMVP runs on its
# released backbone (uniformer3d: BatchNorm) and its contrastive term starts at step 1 of 2, so
# both phases are compared; the others on resunet3d (instance norm).
CASES: dict[str, tuple[str, str, str, dict]] = {
    "brainmvp": (
        "brainmvp:BrainMVP",
        "uniformer3d",
        "volumes",
        {"block_size": 4, "template_canvas": CANVAS, "contrast_start_frac": 1 / STEPS},
    ),
    "mae3d": ("strategies:MAE3D", "resunet3d", "volumes", {"block_size": 4}),
    "simclr3d": ("baselines:SimCLR3D", "resunet3d", "volumes", {}),
    "models-genesis": ("baselines:ModelsGenesis", "resunet3d", "volumes", {"shuffle_blocks": 8}),
    "seg": ("strategies:SegTune", "resunet3d", "segmentation", {}),
    "cls": ("strategies:ClsTune", "resunet3d", "scan-classification", {}),
    "seg-tmpl": ("brainmvp:SegTemplateTune", "resunet3d", "segmentation", {"template_canvas": CANVAS}),
    "cls-tmpl": ("brainmvp:ClsTemplateTune", "resunet3d", "scan-classification", {"template_canvas": CANVAS}),
}
_TASKS = {
    "volumes": ("VolumePretrainTask", None),
    "segmentation": ("SegmentationTask", ["WT", "TC", "ET"]),
    "scan-classification": ("ScanClassificationTask", ["LGG", "HGG"]),
}


def factory(name: str) -> str:
    """The equivalence harness's factory string of strategy ``name``."""
    return f"umdbench_brain.testing:case:{name}"


def _load(path: str):
    import importlib

    module, attr = path.split(":")
    return getattr(importlib.import_module(f"umdbench_brain.{module}"), attr)


def case_train(name: str) -> dict:
    """The case's train dict: the tiny preset's optimiser at the global batch, ``STEPS`` steps."""
    cls = _load(CASES[name][0])
    return {**cls.default_config("tiny")["train"], "batch_size": B, "max_iters": STEPS, "amp": False}


def build_case_strategy(name: str):
    """``(strategy, task type)`` of a case, seeded: the same parameters on every call."""
    from umdbench_brain import encoders, tasks

    path, encoder_name, task_name, options = CASES[name]
    cls = _load(path)
    enc_cls = {"resunet3d": encoders.ResUNetEncoder, "uniformer3d": encoders.UniFormerEncoder}[encoder_name]
    spec_name, labels = _TASKS[task_name]
    spec = getattr(tasks, spec_name)()
    cfg = {**cls.default_config("tiny"), **options, "train": case_train(name)}
    torch.manual_seed(0)
    narrower = {"channels": RESUNET_CHANNELS} if encoder_name == "resunet3d" else {}
    encoder = enc_cls(enc_cls.default_config("tiny") | {"roi_size": R} | narrower)
    if labels is None:
        strategy = cls(encoder, cfg)
    else:
        strategy = cls(encoder, cfg, TaskInfo(task=task_name, num_classes=len(labels), label_names=labels, spec=spec))
    if hasattr(strategy, "init_templates"):  # the parent's templates, as a brainmvp stage hands them on
        with torch.no_grad():
            strategy.templates.weight.copy_(
                torch.rand(strategy.templates.weight.shape, generator=torch.Generator().manual_seed(1))
            )
    return strategy, spec


def volume_batch(
    task: str = "segmentation",
    *,
    batch: int = B,
    roi: int = R,
    seed: int = 0,
    start: int = 0,
    num_regions: int = 3,
    num_classes: int = 2,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """A batch of ``batch`` random studies as a ``task`` data loader yields it (before the task
    type's preprocess), with every key of the volume batch contract (``tasks.VOLUME_KEYS``):
    ``volume`` [B,4,roi,roi,roi] (BraTS's four modalities; the studies' modality sets differ as
    :data:`PRESENT`, cycled), ``present``, ``index`` (``start`` ...), ``crop_origin``,
    ``volume_shape`` (a 20^3 grid), ``flips``; plus ``seg`` [B,num_regions,...] uint8 for
    ``segmentation`` or ``label`` [B] for ``scan-classification`` (``volumes``: neither). The same
    on every call with the same ``seed`` (or draws from ``generator``)."""
    g = generator if generator is not None else torch.Generator().manual_seed(seed)
    present = PRESENT[torch.arange(batch) % len(PRESENT)]
    out = {
        "volume": torch.rand(batch, 4, roi, roi, roi, generator=g) * present[:, :, None, None, None],
        "present": present.clone(),
        "index": torch.arange(batch) + start,
        "crop_origin": torch.randint(-2, 7, (batch, 3), generator=g),
        "volume_shape": torch.full((batch, 3), 20),
        "flips": torch.randint(0, 2, (batch, 3), generator=g),
    }
    if task == "segmentation":
        out["seg"] = (torch.rand(batch, num_regions, roi, roi, roi, generator=g) > 0.7).to(torch.uint8)
    elif task == "scan-classification":
        out["label"] = torch.randint(0, num_classes, (batch,), generator=g)
    elif task != "volumes":
        raise ValueError(f"volume_batch: task {task!r} is not one of segmentation, scan-classification, volumes")
    return out


def global_batch(name: str, step: int) -> dict[str, torch.Tensor]:
    """The whole global batch of ``step`` as the training loader yields it (before the task type's
    preprocess): the same on every call."""
    return volume_batch(CASES[name][2], start=step * B, generator=torch.Generator().manual_seed(1000 + step))


def case(name: str):
    """The equivalence case of strategy ``name`` (factory ``umdbench_brain.testing:case:<name>``), in
    float64 as the core's cases: what is compared is the split of the batch, not float32 rounding."""
    from umdbench.run.equivalence import Case

    strategy, spec = build_case_strategy(name)
    strategy.double()

    def batch(step: int) -> dict[str, torch.Tensor]:
        return {k: v.double() if v.is_floating_point() else v for k, v in global_batch(name, step).items()}

    return Case(strategy=strategy, task=spec, train=case_train(name), batch=batch)

"""The entry point: registers every plugin of this package lazily (nothing heavy is imported
until a name is used)."""
from __future__ import annotations

from umdbench.hookspecs import hookimpl

from umdbench_brain import __version__  # noqa: F401  (shown by `umdbench plugins`)

_P = "umdbench_brain"
ENTRIES = {
    "dataset": {
        "brainsynth": f"{_P}.synth:BrainSynth",
        "brainsynth-grade": f"{_P}.synth:BrainSynthGrade",
        "brainsynth-corpus": f"{_P}.synth:BrainSynthCorpus",
        "brats2021": f"{_P}.brats:BraTS2021",
        "brats2023": f"{_P}.brats:BraTS2023",
    },
    "task": {
        "segmentation": f"{_P}.tasks:SegmentationTask",
        "scan-classification": f"{_P}.tasks:ScanClassificationTask",
        "volumes": f"{_P}.tasks:VolumePretrainTask",
    },
    "encoder": {
        "resunet3d": f"{_P}.encoders:ResUNetEncoder",
        "swinvit3d": f"{_P}.encoders:SwinViTEncoder",
    },
    "metric": {"dice": f"{_P}.metrics:DiceMetric"},
    "tune": {"seg": f"{_P}.strategies:SegTune", "cls": f"{_P}.strategies:ClsTune",
             "seg-tmpl": f"{_P}.brainmvp:SegTemplateTune", "cls-tmpl": f"{_P}.brainmvp:ClsTemplateTune"},
    "pretrain": {"mae3d": f"{_P}.strategies:MAE3D", "brainmvp": f"{_P}.brainmvp:BrainMVP"},
}

SUITES = {
    "brain-seg": {
        "title": "Brain tumour segmentation on brainsynth phantoms, Dice (%)",
        "datasets": ["brainsynth"],
        "metrics": ["dice", "dice_wt", "dice_tc", "dice_et", "hd95"],
        "plot": "rows",
        "rows": [
            {"name": "scratch", "pretrain": "none", "tune": "seg"},
            {"name": "MAE-3D", "pretrain": "mae3d", "tune": "seg",
             "note": "our baseline choice (notes/brainmvp-spec.md 1.8), not the paper's table"},
        ],
    },
}


@hookimpl
def umdbench_register(registries):
    for kind, entries in ENTRIES.items():
        registry = getattr(registries, kind)
        for name, target in entries.items():
            registry.register_lazy(name, target)
    for name, spec in SUITES.items():
        registries.suite.register(name, spec)

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
        # BrainMVP's downstream datasets in their release layouts (docs/datasets.md)
        "brats2023-ped": f"{_P}.brats:BraTS2023PED",
        "brats2023-met": f"{_P}.brats:BraTS2023MET",
        "isles22": f"{_P}.releases:ISLES22",
        "mrbrains13": f"{_P}.releases:MRBrainS13",
        "upenn-gbm": f"{_P}.releases:UPennGBM",
        "brats2018-grade": f"{_P}.releases:BraTS2018Grade",
        "abide": f"{_P}.releases:ABIDE",
    },
    "task": {
        "segmentation": f"{_P}.tasks:SegmentationTask",
        "scan-classification": f"{_P}.tasks:ScanClassificationTask",
        "volumes": f"{_P}.tasks:VolumePretrainTask",
    },
    "encoder": {
        "resunet3d": f"{_P}.encoders:ResUNetEncoder",
        "swinvit3d": f"{_P}.encoders:SwinViTEncoder",
        "uniformer3d": f"{_P}.encoders:UniFormerEncoder",
        "monai3d": f"{_P}.encoders:MonaiEncoder",
    },
    "metric": {"dice": f"{_P}.metrics:DiceMetric"},
    "tune": {
        "seg": f"{_P}.strategies:SegTune",
        "cls": f"{_P}.strategies:ClsTune",
        "seg-tmpl": f"{_P}.brainmvp:SegTemplateTune",
        "cls-tmpl": f"{_P}.brainmvp:ClsTemplateTune",
    },
    "pretrain": {
        "mae3d": f"{_P}.strategies:MAE3D",
        "brainmvp": f"{_P}.brainmvp:BrainMVP",
        "simclr3d": f"{_P}.baselines:SimCLR3D",
        "models-genesis": f"{_P}.baselines:ModelsGenesis",
    },
}

_OURS = "our baseline choice (see the brain README: baselines), not the paper's table"
SEG_METRICS = ["dice", "dice_wt", "dice_tc", "dice_et", "hd95"]
BRAINMVP_ROW = {"name": "BrainMVP", "pretrain": "brainmvp", "tune": "seg-tmpl"}
CLS_METRICS = ["accuracy", "auc"]
# a row's classification counterpart on brainsynth-grade (Suite row key tune_by_dataset)
CLS_TUNE = {"brainsynth-grade": "cls"}
CLS_TMPL_TUNE = {"brainsynth-grade": "cls-tmpl"}

SUITES = {
    "brain-seg": {
        "title": "Brain tumour segmentation on brainsynth phantoms, Dice (%)",
        "datasets": ["brainsynth"],
        "metrics": SEG_METRICS,
        "lower_is_better": ["hd95"],
        "plot": "rows",
        "rows": [
            {"name": "scratch", "pretrain": "none", "tune": "seg"},
            {"name": "MAE-3D", "pretrain": "mae3d", "tune": "seg", "note": _OURS},
            {"name": "SimCLR-3D", "pretrain": "simclr3d", "tune": "seg", "note": _OURS},
            {"name": "Models Genesis", "pretrain": "models-genesis", "tune": "seg", "note": _OURS},
            dict(BRAINMVP_ROW),
        ],
    },
    # 1-2 modalities removed from every test study; BrainMVP with and without template filling
    "brain-missing-modality": {
        "title": "Segmentation with modalities missing at test time (brainsynth), Dice (%)",
        "datasets": ["brainsynth"],
        "metrics": SEG_METRICS,
        "lower_is_better": ["hd95"],
        "plot": "rows",
        "vary": {"key": "dataset.options.test_drop", "label": "modalities dropped", "values": [0, 1, 2]},
        "rows": [
            {"name": "scratch", "pretrain": "none", "tune": "seg"},
            {"name": "MAE-3D", "pretrain": "mae3d", "tune": "seg", "note": _OURS},
            {
                "name": "BrainMVP, zeros",
                "pretrain": "brainmvp",
                "tune": "seg-tmpl",
                "overrides": {"tune.0.fill_missing": "zeros"},
            },
            {"name": "BrainMVP, templates", "pretrain": "brainmvp", "tune": "seg-tmpl"},
        ],
    },
    # the same tuning recipe on a share of the labelled training studies (a prefix of one
    # permutation per seed, so 10 % is a subset of 40 %); pre-training still sees the whole corpus.
    # Each row segments brainsynth and classifies brainsynth-grade (the same studies' grade), its
    # classification counterpart there (tune_by_dataset); 100 % shares brain-seg's / brain-cls' stages
    "brain-label-efficiency": {
        "title": (
            "Label efficiency on brainsynth: segmentation Dice and grade classification accuracy/AUC (%) "
            "by share of labelled training studies"
        ),
        "datasets": ["brainsynth", "brainsynth-grade"],
        "metrics": SEG_METRICS + CLS_METRICS,
        "lower_is_better": ["hd95"],
        "plot": "vary",
        "vary": {"key": "tune.*.train.label_fraction", "label": "labels", "values": [0.1, 0.4, 1.0]},
        "rows": [
            {"name": "scratch", "pretrain": "none", "tune": "seg", "tune_by_dataset": CLS_TUNE},
            {"name": "MAE-3D", "pretrain": "mae3d", "tune": "seg", "note": _OURS, "tune_by_dataset": CLS_TUNE},
            {**BRAINMVP_ROW, "tune_by_dataset": CLS_TMPL_TUNE},
        ],
    },
    # scan classification as the paper evaluates it (its BraTS 2018 HGG vs LGG task): the same
    # pre-trainings, tuned with `cls` (BrainMVP: `cls-tmpl`, its templates filling absent modalities,
    # and `cls` as the other rows are tuned; only BrainMVP pre-trains templates for `cls-tmpl`);
    # brats2018-grade reads the release from --data-root (a sweep without it lists its cells as
    # data unavailable)
    "brain-cls": {
        "title": "Scan classification (glioma grade, LGG vs HGG): accuracy and AUC (%)",
        "datasets": ["brainsynth-grade", "brats2018-grade"],
        "metrics": CLS_METRICS,
        "plot": "rows",
        "rows": [
            {"name": "scratch", "pretrain": "none", "tune": "cls"},
            {"name": "MAE-3D", "pretrain": "mae3d", "tune": "cls", "note": _OURS},
            {"name": "SimCLR-3D", "pretrain": "simclr3d", "tune": "cls", "note": _OURS},
            {"name": "Models Genesis", "pretrain": "models-genesis", "tune": "cls", "note": _OURS},
            {"name": "BrainMVP", "pretrain": "brainmvp", "tune": "cls-tmpl"},
            {
                "name": "BrainMVP, cls",
                "pretrain": "brainmvp",
                "tune": "cls",
                "note": "BrainMVP's encoder tuned as the other rows are (no templates)",
            },
        ],
    },
    # the paper's ablation order: cross-modal reconstruction, + template view, + contrastive term
    "brainmvp-ablation": {
        "title": "BrainMVP ablation on brainsynth segmentation, Dice (%)",
        "datasets": ["brainsynth"],
        "metrics": SEG_METRICS,
        "lower_is_better": ["hd95"],
        "plot": "rows",
        "rows": [
            # no template view, so no templates to fine-tune with
            {
                "name": "reconstruction only",
                "pretrain": "brainmvp",
                "tune": "seg",
                "overrides": {"pretrain.w_template": 0.0, "pretrain.w_contrast": 0.0},
            },
            {
                "name": "+ templates",
                "pretrain": "brainmvp",
                "tune": "seg-tmpl",
                "overrides": {"pretrain.w_contrast": 0.0},
            },
            {"name": "+ contrastive", "pretrain": "brainmvp", "tune": "seg-tmpl"},
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

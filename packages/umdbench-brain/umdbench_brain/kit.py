"""What a 3-D method author builds on: the public face of umdbench-brain (the README's CONTRACT
section describes it). Everything here is re-exported from the modules the package's own plugins
use, so a plugin built on it is judged with the same data, decoder, loss, recipes and metric as
``seg``, ``cls``, ``mae3d`` and ``brainmvp``; a concept the package only implied has a name here.

* **Volume batches** (:data:`VOLUME_BATCH_KEYS`): what a batch of each volume task type carries,
  key -> "dtype [shape] meaning"; :data:`PREDICTION_KEYS` what ``predict`` returns for it and
  :data:`METRIC_INPUTS` what a metric of it receives.
* **Encoder pyramids** (:data:`PYRAMID_ATTRIBUTES`, :func:`check_pyramid`): a volume encoder is a
  :class:`VolumeEncoder` whose ``forward(volume)`` returns feature maps shallow to deep, described
  by ``feature_channels`` / ``feature_strides`` / ``hidden_size``; strategies declare
  ``encoders = VOLUME_ENCODERS`` to run on all of them.
* **Heads**: :class:`SegDecoder` (skips + full-resolution stem), :class:`ReconDecoder` (from the
  deepest map), through the task type (:class:`SegmentationTask` ``build_head``).
* **Supervised tuning**: :class:`VolumeTune` (the counterpart of ``umdbench.kit.SupervisedTune``:
  the task type's head, loss and predictions on the shared encoder), :class:`SegTune` (sliding-window
  prediction of whole volumes), :class:`ClsTune`; :func:`seg_loss`.
* **Recipes**: the training budgets every brain strategy uses (:data:`FINETUNE_TINY`, ...), and
  :func:`budget_deviations` (the line that records a budget's departures from the released one).
* **Metric keys**: :data:`DICE_METRIC_KEYS`, :data:`SEG_METRICS` (the suites' columns),
  :func:`region_names` (the region suffix rule a per-region metric should share).
* **Tests**: :func:`tiny_volume_encoder`, :func:`tiny_volume_strategy`, :func:`tiny_volume_batch`
  build a 16^3 encoder, a strategy on it and a batch with every contract key, in milliseconds.
"""

from __future__ import annotations

from typing import Any

import torch

from umdbench import draws
from umdbench.api import TaskInfo
from umdbench_brain.brainmvp import PRETRAIN_PAPER, PRETRAIN_SMALL, PRETRAIN_TINY
from umdbench_brain.encoders import BRATS_MODALITIES, VolumeEncoder
from umdbench_brain.heads import ReconDecoder, SegDecoder
from umdbench_brain.metrics import BRATS_REGIONS, DiceMetric, dice_per_case, hd95_per_case
from umdbench_brain.strategies import (
    FINETUNE_PAPER,
    FINETUNE_SMALL,
    FINETUNE_TINY,
    PRESENT_VOXEL_MEAN,
    VOLUME_ENCODERS,
    ClsTune,
    SegTune,
    VolumeTune,
    budget_deviations,
)
from umdbench_brain.tasks import (
    VOLUME_KEYS,
    ScanClassificationTask,
    SegmentationTask,
    VolumeForward,
    VolumePretrainTask,
    seg_loss,
    soft_dice_loss,
)
from umdbench_brain.testing import volume_batch

__all__ = [
    # the volume batch contract
    "VOLUME_KEYS",
    "VOLUME_BATCH_KEYS",
    "PREDICTION_KEYS",
    "METRIC_INPUTS",
    "BRATS_MODALITIES",
    "VolumePretrainTask",
    "SegmentationTask",
    "ScanClassificationTask",
    "VolumeForward",
    # the encoder pyramid contract
    "VolumeEncoder",
    "VOLUME_ENCODERS",
    "PYRAMID_ATTRIBUTES",
    "check_pyramid",
    # decoders and heads
    "SegDecoder",
    "ReconDecoder",
    # supervised tuning on the task type's head, and its losses
    "VolumeTune",
    "SegTune",
    "ClsTune",
    "seg_loss",
    "soft_dice_loss",
    # recipes (training budgets) and recorded departures
    "FINETUNE_TINY",
    "FINETUNE_SMALL",
    "FINETUNE_PAPER",
    "PRETRAIN_TINY",
    "PRETRAIN_SMALL",
    "PRETRAIN_PAPER",
    "PRESENT_VOXEL_MEAN",
    "budget_deviations",
    # metric keys and per-case scores
    "DICE_METRIC_KEYS",
    "SEG_METRICS",
    "LOWER_IS_BETTER",
    "BRATS_REGIONS",
    "region_names",
    "DiceMetric",
    "dice_per_case",
    "hd95_per_case",
    # random draws that are the same at any world size (umdbench.draws)
    "draws",
    # unit tests
    "tiny_volume_encoder",
    "tiny_volume_strategy",
    "tiny_volume_batch",
]

# -- volume batches ---------------------------------------------------------------------------------
_TASK_TYPES = (VolumePretrainTask, SegmentationTask, ScanClassificationTask)

#: task type name -> {batch key: "dtype [shape] meaning"}: every key a batch of that task type
#: carries after its ``preprocess`` (``seg`` is float then). ``volumes`` feeds pre-training stages,
#: ``segmentation`` and ``scan-classification`` tuning and evaluation.
VOLUME_BATCH_KEYS: dict[str, dict[str, str]] = {cls.name: dict(cls.batch_keys) for cls in _TASK_TYPES}

#: task type name -> {key: meaning} that a tuning strategy's ``predict(batch)`` returns (checked)
PREDICTION_KEYS: dict[str, dict[str, str]] = {
    cls.name: dict(cls.prediction_keys) for cls in _TASK_TYPES if cls.supervised
}

#: task type name -> the keys of each sample a metric's ``process`` receives: the predictions
#: plus the batch keys the task type hands on (``index``: the study's position in the split)
METRIC_INPUTS: dict[str, tuple[str, ...]] = {
    cls.name: (*cls.prediction_keys, *cls.metric_keys) for cls in _TASK_TYPES if cls.supervised
}

# -- encoder pyramids -------------------------------------------------------------------------------
#: what every volume encoder (a :class:`VolumeEncoder`) has besides ``umdbench.api.Encoder``'s
PYRAMID_ATTRIBUTES: dict[str, str] = {
    "modalities": "list[str], config key: the input channel order (default BRATS_MODALITIES)",
    "roi_size": "int, config key: training crop and sliding-window edge; a multiple of the total stride",
    "in_channels": "int = len(modalities)",
    "forward": (
        "forward(volume [B,in_channels,D,H,W]) -> list of feature maps [B,C_i,D/s_i,H/s_i,W/s_i], shallow to deep"
    ),
    "feature_channels": "tuple[int]: C_i of each returned map",
    "feature_strides": "tuple[int]: s_i of each returned map, increasing (the first may be 1 or 2)",
    "hidden_size": "int = feature_channels[-1]: what a pooled classification head reads",
    "family": '"volume-3d": matched by Strategy.encoders = VOLUME_ENCODERS',
}


def check_pyramid(encoder: torch.nn.Module, volume: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Run ``encoder`` (in eval mode) on ``volume`` (default: zeros of one ``roi_size`` crop) and check that its
    output keeps the pyramid contract (:data:`PYRAMID_ATTRIBUTES`): one map per declared channel
    count and stride, each of that shape, strides increasing, ``hidden_size`` the deepest width.
    Returns the maps; raises ``AssertionError`` saying what differs (for an encoder's unit test)."""
    name = getattr(encoder, "name", type(encoder).__name__)
    for attr in ("in_channels", "roi_size", "feature_channels", "feature_strides", "hidden_size"):
        assert hasattr(encoder, attr), f"encoder {name!r} lacks {attr!r} ({PYRAMID_ATTRIBUTES.get(attr, '')})"
    if volume is None:
        volume = torch.zeros(1, int(encoder.in_channels), *(int(encoder.roi_size),) * 3)
    was_training = encoder.training
    encoder.eval()  # batch statistics of one crop (uniformer3d's BatchNorm on a 1^3 map) are not the question
    try:
        with torch.no_grad():
            maps = encoder(volume)
    finally:
        encoder.train(was_training)
    channels, strides = tuple(encoder.feature_channels), tuple(encoder.feature_strides)
    assert isinstance(maps, (list, tuple)), f"encoder {name!r} returned {type(maps).__name__}, not a list of maps"
    assert len(maps) == len(channels) == len(strides), (
        f"encoder {name!r}: {len(maps)} maps, {len(channels)} feature_channels, {len(strides)} feature_strides"
    )
    assert list(strides) == sorted(strides), f"encoder {name!r}: feature_strides {strides} are not increasing"
    assert int(encoder.hidden_size) == channels[-1], (
        f"encoder {name!r}: hidden_size {encoder.hidden_size} is not the deepest width {channels[-1]}"
    )
    for i, (m, c, s) in enumerate(zip(maps, channels, strides)):
        want = (volume.shape[0], c, *(d // s for d in volume.shape[2:]))
        assert tuple(m.shape) == want, f"encoder {name!r}: map {i} has shape {tuple(m.shape)}, declared {want}"
    return list(maps)


# -- metric keys ------------------------------------------------------------------------------------
def region_names(k: int) -> tuple[str, ...]:
    """The suffixes of per-region metric keys (``dice_<r>``) when the dataset's label names are not
    at hand: BraTS's ``wt``, ``tc``, ``et`` for three regions (the datasets' label order), ``r0``,
    ``r1`` ... otherwise; the dice metric's rule, for a per-region metric to name its keys alike
    (with ``dataset_meta["label_names"]``, as the evaluation gives them, ``dice`` uses those,
    lower-cased: ``dice_gm`` for MRBrainS13)."""
    return BRATS_REGIONS if k == 3 else tuple(f"r{i}" for i in range(k))


#: what ``dice`` reports (percent; HD95 in voxels), region keys for BraTS's three regions
DICE_METRIC_KEYS: dict[str, str] = {
    "dice": "mean over regions of the mean Dice over studies (%); an empty ground truth scores 100 "
    "when the prediction is empty too, else 0 (the released rule)",
    **{f"dice_{r}": f"Dice of region {r.upper()} (%)" for r in BRATS_REGIONS},
    "hd95": "mean over regions of the 95th-percentile Hausdorff distance (voxels), over studies where both "
    "masks are non-empty; lower is better",
    **{f"hd95_{r}": f"HD95 of region {r.upper()} (voxels)" for r in BRATS_REGIONS},
}

#: the columns the brain suites show (their ``metrics``; ``umdbench_brain.plugin.SEG_METRICS``, not
#: imported so that editing a suite keeps the stage keys of plugins built on this kit) and those whose
#: best value is the smallest (their ``lower_is_better``)
SEG_METRICS = ["dice", "dice_wt", "dice_tc", "dice_et", "hd95"]
LOWER_IS_BETTER = ["hd95"]


# -- unit tests -------------------------------------------------------------------------------------
TINY_ROI = 16  # the smallest crop edge every tiny encoder takes

#: labels a tiny tuning strategy's TaskInfo carries, per task type (the datasets' label_names)
_TINY_LABELS = {"segmentation": ["WT", "TC", "ET"], "scan-classification": ["LGG", "HGG"]}


def tiny_volume_encoder(
    encoder: str = "resunet3d", *, roi: int = TINY_ROI, seed: int = 0, **model_overrides: Any
) -> VolumeEncoder:
    """The registered volume encoder ``encoder`` at its ``tiny`` preset on ``roi``-cubed crops
    (``model_overrides`` merged on top), initialised under ``torch.manual_seed(seed)``."""
    from umdbench.kit import build_test_encoder
    from umdbench.plugin import get_registries

    return build_test_encoder(encoder, "tiny", seed=seed, registries=get_registries(), roi_size=roi, **model_overrides)[
        0
    ]


def tiny_volume_strategy(
    strategy: str | type,
    encoder: torch.nn.Module | None = None,
    *,
    task: str | None = None,
    seed: int = 0,
    **options: Any,
):
    """A strategy at its ``tiny`` preset on ``encoder`` (default :func:`tiny_volume_encoder`), as a
    stage builds it; ``options`` over the preset. ``strategy``: a class, or ``"pretrain:NAME"`` /
    ``"tune:NAME"``. A tuning strategy gets the TaskInfo of ``task`` (default: the first of its
    ``task_types``) with that task's usual labels (WT/TC/ET; LGG/HGG)."""
    from umdbench.api import TuneStrategy
    from umdbench.kit import build_test_strategy, task_info_for_test
    from umdbench.plugin import get_registries

    registries = get_registries()
    encoder = encoder if encoder is not None else tiny_volume_encoder(seed=seed)
    cls = strategy
    if isinstance(strategy, str):
        kind, _, name = strategy.partition(":")
        if kind not in ("pretrain", "tune") or not name:
            raise ValueError(f"strategy {strategy!r}: name it 'pretrain:NAME' or 'tune:NAME', or pass the class")
        cls = getattr(registries, kind).get(name)
    info: TaskInfo | None = None
    if isinstance(cls, type) and issubclass(cls, TuneStrategy):
        task = task or (tuple(cls.task_types or ()) or ("segmentation",))[0]
        info = task_info_for_test(task, _TINY_LABELS.get(task, ["a", "b"]), registries=registries)
    return build_test_strategy(cls, encoder, None, preset="tiny", task=info, seed=seed, **options)


def tiny_volume_batch(
    task: str = "segmentation", *, batch: int = 2, roi: int = TINY_ROI, seed: int = 0, preprocess: bool = True
) -> dict[str, torch.Tensor]:
    """A random batch of ``batch`` studies with every key of :data:`VOLUME_BATCH_KEYS` [``task``]
    (four modalities; the studies' modality sets differ), after the task type's ``preprocess``
    unless ``preprocess=False``."""
    out = volume_batch(task, batch=batch, roi=roi, seed=seed)
    if preprocess:
        spec = {cls.name: cls for cls in _TASK_TYPES}[task]()
        out = spec.preprocess(out)
    return out

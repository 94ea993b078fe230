"""The contract between the umdbench core and its plugins (see docs/CONTRACT.md).

Plugin kinds and their base classes:

* :class:`DatasetPlugin`    -- reads one dataset's release layout into :class:`Record` lists.
* :class:`TaskType`         -- one kind of task: records -> batches, the task head H, its loss and
  predictions, the default metric.
* :class:`Encoder`          -- the backbone every stage of a run shares (built from ``model`` config).
* :class:`PretrainStrategy` -- an ``nn.Module`` that owns its heads and returns pre-training losses.
* :class:`TuneStrategy`     -- an ``nn.Module`` that owns a task head (or reconstruction heads) and
  returns tuning losses and, if supervised, predictions for evaluation.

Metrics are mmengine ``BaseMetric`` subclasses; suites are plain dicts. Strategies receive the
encoder and a plain ``dict`` config. Batches are dicts of tensors whose keys the task type
declares (``TaskType.batch_keys``). A strategy's ``forward(batch)`` returns
``{"loss_xxx": tensor, ...}``; every key starting with ``loss`` is summed into the training loss,
other scalar tensors are logged only.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from umdbench.errors import UmdbenchError
from umdbench.util import deep_merge

__all__ = [
    "CONTRACT_VERSION",
    "CheckReport",
    "DataContext",
    "DataError",
    "DatasetPlugin",
    "Encoder",
    "Option",
    "PretrainStrategy",
    "Record",
    "Strategy",
    "TRAIN_DEFAULTS",
    "TRAIN_KEYS",
    "TaskInfo",
    "TaskType",
    "TuneStrategy",
    "deep_merge",
    "train_config",
]

# The version of docs/CONTRACT.md: a minor bump adds names, a major bump removes or changes one.
CONTRACT_VERSION = "1.9"


@dataclass(frozen=True)
class Option:
    """One declared option of a plugin's config: what an ``option_schema`` maps each name to (a
    plain ``(type, default, help)`` tuple is read the same way).

    ``type``: the type, or tuple of types, a value must have; None = any value. An int is accepted
    where ``float`` is declared, and None wherever the default is None. A ``dict`` option whose
    default has keys accepts only those keys; an empty default leaves its keys free (checked by the
    plugin). ``default``: what a strategy's stage config gets when its preset leaves the option out
    (a dataset's constructor default). ``help``: one line, shown when a value is refused."""

    type: Any = None
    default: Any = None
    help: str = ""


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
@dataclass
class Record:
    """One sample of a split, as read from the release layout.

    ``image`` is what the dataset's task type reads: a path (str) to an image file, an ``HxWx3``
    uint8 array for generated data, or a dict of named modality volumes (paths or arrays) for
    multi-parametric scans. Task-specific fields (a label volume, ...) go in ``extra``.
    """

    uid: str
    image: str | np.ndarray | dict[str, Any]
    text: str
    answer: str | None = None
    answer_type: str | None = None  # "open" | "closed" (vqa)
    label: int | None = None  # class index (classification); vqa labels come from the vocab
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class CheckReport:
    """What ``umdbench data check`` found for one dataset copy."""

    dataset: str
    root: str | None
    counts: dict[str, int] = field(default_factory=dict)  # split -> records
    problems: list[str] = field(default_factory=list)  # one line each: file, record, what, fix
    checksums: dict[str, str] = field(default_factory=dict)  # annotation file -> sha256

    @property
    def ok(self) -> bool:
        return not self.problems


class DataError(UmdbenchError, ValueError):
    """Bad input data. The message names the file, the record and the fix."""


class DatasetPlugin:
    """Base class of dataset plugins. Subclasses set the class attributes and ``records``."""

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    task: ClassVar[str] = "vqa"  # a registered task type (`umdbench list --kind task`)
    # the registered encoder this dataset's records fit when a run does not choose one
    encoder: ClassVar[str] = "coattn"
    # preset name -> the encoder used at that preset instead of ``encoder`` (a run's --encoder still
    # wins): e.g. a CPU phantom on a cheap encoder at "tiny", the paper's backbone at "small"/"paper"
    preset_encoders: ClassVar[dict[str, str]] = {}
    splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    needs_root: ClassVar[bool] = True  # False for generated data
    # name of the corpus plugin used for pre-training when a run does not say otherwise
    default_pretrain_corpus: ClassVar[str | None] = None
    # the corpus this dataset's paper pre-trains on: pre-training on another one is a recorded deviation
    paper_pretrain_corpus: ClassVar[str | None] = None
    # the subfolder of --data-root where this dataset lives (e.g. "vqa_rad")
    root_subdir: ClassVar[str | None] = None
    # registered metric name; None = the task type's ``default_metric``
    metric: ClassVar[str | None] = None
    # options that change only what is evaluated (e.g. modalities removed from test studies):
    # training stages are planned without them, so varying one re-uses the trained stages
    test_only_options: ClassVar[tuple[str, ...]] = ()
    # option name -> Option (or (type, default, help)): ``dataset.options`` are checked against it
    # when a run is planned, unknown names with "did you mean"; None = the constructor checks them
    option_schema: ClassVar[dict[str, Any] | None] = None

    def __init__(self, root: str | Path | None = None, on_error: str = "raise", **options: Any):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.root = Path(root) if root is not None else None
        self.on_error = on_error
        self.options = options
        self.skipped: list[str] = []  # one line per skipped record when on_error == "skip"

    def records(self, split: str) -> list[Record]:
        raise NotImplementedError

    def label_names(self) -> list[str] | None:
        """Answer vocabulary (vqa) or class names (classification); None otherwise."""
        return None

    def fingerprint(self) -> str:
        """A stable hash of the data this plugin reads (annotation files, image list)."""
        raise NotImplementedError

    def deviations(self) -> list[str]:
        """Departures from the paper's data that this copy and these options cause (a replaced
        evaluation split, records left out), in plain language; recorded with every run."""
        return []

    def check(self, deep: bool = True) -> CheckReport:
        """What ``umdbench data check`` reports: annotations parse, referenced files exist, and with
        ``deep`` (the default; ``--quick`` turns it off) every image/volume decodes."""
        raise NotImplementedError


# --------------------------------------------------------------------------------------------
# Encoders (backbones)
# --------------------------------------------------------------------------------------------
class Encoder(nn.Module):
    """Base class of encoder plugins: the backbone every stage of a run shares.

    The resolved config's ``model`` section is the encoder's config: ``type`` (its registered
    name) plus whatever :meth:`default_config` returns for the preset. The core builds it with
    :meth:`from_config`, builds the text tokenizer (if any) with :meth:`build_tokenizer`, and hands
    the encoder to each strategy, which calls it however the task type and the strategy agree.
    """

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    presets: ClassVar[dict[str, dict]] = {}  # preset name -> encoder config
    # the interface family this encoder offers, matched by Strategy.encoders beside its registered
    # name (the brain package's volume encoders: "volume-3d"); "" = its name only
    family: ClassVar[str] = ""

    @classmethod
    def default_config(cls, preset: str) -> dict:
        if preset not in cls.presets:
            raise KeyError(f"no preset {preset!r}; it has {', '.join(sorted(cls.presets)) or 'none'}")
        return copy.deepcopy(cls.presets[preset])

    @classmethod
    def deviations(cls, cfg: dict) -> list[str]:
        """Departures from the paper this machine forces on the resolved ``model`` config (weights
        that cannot be had, replaced by random init the user opted into); raise ``ConfigError``
        when a required weight is missing and no fallback was chosen."""
        return []

    @classmethod
    def batch_coupled_terms(cls, cfg: dict) -> list[str]:
        """Parts of the encoder that couple a batch's samples (BatchNorm statistics), in words; as
        :meth:`Strategy.batch_coupled_terms`, recorded as a deviation of every accumulating stage on
        this encoder. Under DDP BatchNorm layers are swapped for global-batch ones by the core."""
        return []

    @classmethod
    def from_config(cls, cfg: dict) -> "Encoder":
        """Build the encoder (fresh or from the pretrained weights its config names)."""
        return cls(cfg)

    @classmethod
    def build_tokenizer(cls, cfg: dict) -> Any:
        """The text tokenizer for this encoder's config, or None for an encoder without text."""
        return None

    hidden_size: int = 0  # width of the features a task head reads

    def compile_targets(self) -> list[nn.Module]:
        """Modules ``train.compile`` may ``torch.compile`` in place (the hot blocks); none by default."""
        return []

    def checkpoint_targets(self) -> list[nn.Module]:
        """Blocks ``train.activation_checkpointing`` recomputes in backward (each block's output must
        depend only on its inputs and weights); none by default, and the option is then refused."""
        return []


# --------------------------------------------------------------------------------------------
# Task types
# --------------------------------------------------------------------------------------------
@dataclass
class DataContext:
    """What a task type needs to turn records into tensors for one stage."""

    model_cfg: dict  # the encoder config (``model`` section)
    stage_cfg: dict  # the stage's config (options such as ``max_text_len``, ``negatives``)
    tokenizer: Any  # the encoder's tokenizer, or None
    label_names: list[str]  # answer vocabulary / class names ([] when the task has none)
    seed: int
    cache_dir: Path | None  # a folder for decoded-data caches (None: no cache)


class TaskType:
    """Base class of task-type plugins: one kind of downstream task (or of pre-training data).

    A task type owns everything between records and the strategy: the torch dataset (batch
    keys), the collate step, the per-batch normalisation after the device move, and, for
    supervised tasks, the shared task head H, its loss and its prediction outputs, so that every
    tuning strategy is judged with the same head (the paper's fairness rule).
    """

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    supervised: ClassVar[bool] = True  # has labels and a head; False for pre-training data
    batch_keys: ClassVar[dict[str, str]] = {}  # key -> what it holds
    prediction_keys: ClassVar[dict[str, str]] = {}  # keys of ``predict`` outputs -> what they hold
    metric_keys: ClassVar[tuple[str, ...]] = ()  # batch keys handed to the metric beside predictions
    default_metric: ClassVar[str | None] = None  # registered metric name
    # the unsupervised task type whose datasets a pre-training stage builds from this task's data
    pretrain_task: ClassVar[str | None] = None
    # options this task type reads from a stage's config (``DataContext.stage_cfg``, the ``cfg`` of
    # ``encode``/``loss``): accepted in the presets of every strategy that trains on its datasets
    option_schema: ClassVar[dict[str, Any]] = {}
    # whether strategies that declare no ``task_types`` (``direct``, ``linear``) may train on it;
    # False when its head or batches need a strategy made for it (a decoder on feature maps)
    generic_strategies: ClassVar[bool] = True

    # -- data ------------------------------------------------------------------------------------
    def build_dataset(self, records: list[Record], ctx: DataContext, *, training: bool) -> Any:
        """A ``torch.utils.data.Dataset`` of dicts with :attr:`batch_keys`."""
        raise NotImplementedError

    def collate(self, items: list[dict]) -> dict:
        """Items -> one batch (torch's default collate unless overridden)."""
        from torch.utils.data import default_collate

        return default_collate(items)

    def preprocess(self, batch: dict) -> dict:
        """Called on every batch after it is on the model's device (normalisation belongs here)."""
        return batch

    # -- supervised head ---------------------------------------------------------------------------
    def build_head(self, info: "TaskInfo", width: int) -> nn.Module:
        """The task head H on features of ``width`` columns."""
        raise NotImplementedError(f"task type {self.name!r} has no head (unsupervised)")

    def encode(self, encoder: nn.Module, batch: dict, info: "TaskInfo", cfg: dict, *, training: bool) -> Any:
        """Run the encoder on a batch; returns the features the head reads (a ``kit.TaskForward``
        for the built-in image + text tasks)."""
        raise NotImplementedError

    def logits(self, head: nn.Module, features: Any, info: "TaskInfo") -> torch.Tensor:
        raise NotImplementedError

    def target(self, features: Any) -> torch.Tensor | None:
        """The training target of the batch the features came from (None when it has none)."""
        return getattr(features, "target", None)

    def loss(self, info: "TaskInfo", logits: torch.Tensor, target: torch.Tensor | None, cfg: dict) -> torch.Tensor:
        raise NotImplementedError

    def predict(self, info: "TaskInfo", logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """The metric's inputs (:attr:`prediction_keys`)."""
        raise NotImplementedError


# --------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------
class Strategy(nn.Module):
    """Common base of pre-training and tuning strategies.

    ``presets`` maps a preset name ("tiny", "paper") to the strategy's stage config: training
    hyper-parameters under ``train`` (see :data:`TRAIN_KEYS`) and strategy options at top level.
    A ``per_dataset`` entry inside a preset overrides per dataset name.
    """

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    presets: ClassVar[dict[str, dict]] = {}
    # option name -> Option (or (type, default, help)). Every top-level key of a preset other than
    # ``train`` and ``per_dataset`` is an option too, so declaring is needed only to check a type or to
    # give a default that presets leave out; per-dataset entries and --cfg-options are checked against
    # the options when a run is planned, unknown names with "did you mean"
    option_schema: ClassVar[dict[str, Any]] = {}
    # the task types this strategy trains on (a pre-training strategy: those of its corpus, e.g.
    # "pretrain" image-text pairs); None = any task type that admits generic strategies
    task_types: ClassVar[tuple[str, ...] | None] = None
    # the encoders it runs on: registered names or families (Encoder.family); None = any
    encoders: ClassVar[tuple[str, ...] | None] = None

    @classmethod
    def default_config(cls, preset: str, dataset: str | None = None) -> dict:
        if preset not in cls.presets:
            raise KeyError(f"no preset {preset!r}; it has {', '.join(sorted(cls.presets)) or 'none'}")
        declared = {
            name: spec if isinstance(spec, Option) else Option(*spec) for name, spec in cls.option_schema.items()
        }
        cfg = {name: copy.deepcopy(spec.default) for name, spec in declared.items() if name not in cls.presets[preset]}
        cfg.update(copy.deepcopy(cls.presets[preset]))
        per_dataset = cfg.pop("per_dataset", {})
        if dataset is not None and dataset in per_dataset:
            cfg = deep_merge(cfg, per_dataset[dataset])
        return cfg

    @classmethod
    def check_config(cls, cfg: dict) -> None:
        """Validate the resolved stage config before anything trains (``--dry-run`` included).
        Raise ``ValueError`` naming the bad option and its allowed values; the core reports it
        as one paragraph naming this plugin."""

    @classmethod
    def check_parent_config(cls, cfg: dict, parent: dict | None, where: str) -> None:
        """Validate a tuning stage's config against its parent stage's (``parent``: the resolved
        pre-training config for ``tune.0``, None without pre-training; else the previous tuning
        stage's), at planning. Raise ``ValueError`` naming both keys, e.g. a template canvas that
        differs from the one the parent learned; the core reports it as one paragraph."""

    @classmethod
    def deviations(cls, cfg: dict) -> list[str]:
        """Plain-language list of the ways ``cfg`` departs from the paper (recorded with each run).

        Override in strategies that offer released-code quirks or other non-paper options."""
        return []

    @classmethod
    def batch_coupled_terms(cls, cfg: dict) -> list[str]:
        """Terms of the loss that couple the samples of a step's batch (in-batch negatives, a mean
        over a count that varies per sample, batch statistics), in words, e.g.
        ``["InfoNCE over in-batch negatives"]``. Data-parallel ranks compute them over the global
        batch (:mod:`umdbench.draws`); accumulated micro-batches, which run one after another,
        cannot, so a stage with ``train.accumulative_counts`` > 1 records each as a deviation.
        Empty (the default) = a step's update does not depend on how its batch is split."""
        return []

    def __init__(self, encoder: nn.Module, cfg: dict):
        super().__init__()
        self.encoder = encoder
        self.cfg = cfg

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Losses (``loss*`` keys, summed by the core) and values to log. Random draws come from
        :mod:`umdbench.draws` (keyed per sample and step), so the step's update is the same at any
        world size."""
        raise NotImplementedError

    # -- hooks the core calls (each has a default; docs/CONTRACT.md lists when) ---------------------
    def modulate_gradients(self) -> dict[str, float]:
        """Called after backward, before the optimiser step. Returns values to log."""
        return {}

    def after_optimizer_step(self) -> None:
        """Called after each optimiser step (e.g. an EMA teacher update)."""

    def param_group_of(self, name: str) -> str:
        """Which lr group a parameter (name relative to this module) belongs to.

        Groups: "encoder" (uni-modal encoders), "fusion", "head". The default follows the
        upstream convention: fusion layers get lr x fusion multiplier, heads lr x head multiplier.
        """
        if name.startswith("encoder."):
            return "fusion" if name.startswith("encoder.fusion.") else "encoder"
        return "head"

    def transient_state_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes of state that is neither trained by the optimiser nor stored in the
        stage artifact (an EMA teacher rebuilt from the student). Everything else is both."""
        return ()

    def head_state_prefixes(self) -> tuple[str, ...]:
        """Heads this stage starts from its parent stage's artifact where names and shapes match
        (MR-Pretrain -> TD-Calib share their reconstruction heads). The encoder (``encoder.*``)
        always comes from the parent; heads not listed start fresh."""
        return ()

    def compile_targets(self) -> list[nn.Module]:
        """Modules ``train.compile`` compiles in place: the encoder's hot blocks by default;
        strategies with heavy heads (a MIM decoder) add theirs."""
        return self.encoder.compile_targets() if isinstance(self.encoder, Encoder) else []


class PretrainStrategy(Strategy):
    """Pre-training strategy: unlabeled image-text pairs in, losses out."""


class TuneStrategy(Strategy):
    """Tuning strategy for a task. ``supervised`` strategies train a task head and predict."""

    supervised: ClassVar[bool] = True

    def __init__(self, encoder: nn.Module, cfg: dict, task: "TaskInfo"):
        super().__init__(encoder, cfg)
        self.task = task

    def predict(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Outputs for the task's metric: vqa/classification ``{"logits": [B,C]}``,
        retrieval ``{"score": [B]}``."""
        raise NotImplementedError(f"tuning strategy {self.name!r} does not predict (unsupervised)")


@dataclass
class TaskInfo:
    """What a tuning strategy needs to know about the downstream task."""

    task: str  # the registered task type's name (vqa, classification, retrieval, ...)
    num_classes: int = 0  # answer vocabulary or class count; 0 for retrieval
    label_names: list[str] = field(default_factory=list)
    spec: TaskType | None = None  # the task type itself: head, loss, predictions


# AdamW settings shared by every stage unless a preset says otherwise (the released code's).
TRAIN_DEFAULTS = {
    "lr_mult": {"encoder": 1.0, "fusion": 1.0, "head": 1.0},
    "weight_decay": 0.01,
    "betas": [0.9, 0.98],
    "eps": 1e-8,
    "warmup_ratio": 0.1,
    "schedule": "linear",
    "grad_clip": None,
    # fp32 unless a preset opts in: tiny runs (tests) stay bit-reproducible; the small and paper presets
    # set "auto" = bf16 autocast where it is native (CUDA, CPUs with AVX-512 BF16 / AMX)
    "amp": False,
    "fused": "auto",  # fused AdamW kernel (CUDA and CPU); False = foreach / per-tensor loop
    "foreach": "auto",  # only when fused is False: multi-tensor AdamW; False = per-tensor loop
    "compile": False,  # torch.compile the encoder blocks
    # each parameter stepped and its gradient freed during backward (same updates, lower peak memory)
    "step_in_backward": "auto",
    "keep_checkpoints": 1,  # resumable checkpoints kept once the stage's artifact is written
    "label_fraction": 1.0,  # share of the labelled training split a tuning stage trains on
    "accumulative_counts": 1,  # micro-batches per optimiser step (gradient accumulation)
    "activation_checkpointing": False,  # recompute the encoder blocks' activations in backward
}


def train_config(**settings: Any) -> dict:
    """A stage's ``train`` dict: :data:`TRAIN_DEFAULTS` with ``settings`` on top."""
    return deep_merge(TRAIN_DEFAULTS, settings)


# Keys of a stage's ``train`` config, with what they mean.
TRAIN_KEYS = {
    "max_iters": "optimiser steps of the stage",
    "batch_size": "samples per step",
    "lr": "base learning rate (uni-modal encoders)",
    "lr_mult": "dict group -> multiplier, groups: encoder, fusion, head",
    "weight_decay": "AdamW weight decay",
    "betas": "AdamW betas",
    "eps": "AdamW eps",
    "warmup_ratio": "fraction of max_iters of linear warm-up",
    "schedule": "'linear' or 'cosine' decay after warm-up",
    "checkpoint_interval": "iterations between resumable checkpoints",
    "log_interval": "iterations between log lines",
    "grad_clip": "max grad norm or None",
    "amp": "False = fp32 (default); 'auto' = bf16 autocast where native (CUDA, CPU with AVX-512 BF16 / AMX), "
    "resolved when the run is planned (the config and stage key record the result); 'bf16' = always",
    "fused": "'auto' = fused AdamW kernel on CUDA and CPU; False = the foreach / per-tensor path",
    "foreach": "with fused False: 'auto' = multi-tensor AdamW; False = per-tensor loop",
    "compile": "torch.compile the encoder blocks (parameter names unchanged)",
    "step_in_backward": "'auto' = under bf16 autocast, step each parameter and free its gradient during backward "
    "where nothing needs all gradients at once (no grad_clip, no gradient modulation, one "
    "process); True = wherever that holds; False = never. Same updates bit for bit; not in "
    "the stage key",
    "keep_checkpoints": "resumable checkpoints a finished stage keeps (newest first; 0 = none); not in the stage key",
    "label_fraction": "tuning stages: train on this share (0, 1] of the training split's records, drawn once per "
    "seed; smaller fractions are subsets of larger ones (label-efficiency studies)",
    "accumulative_counts": "N > 1: each optimiser step sums the gradients of N micro-batches of batch_size / N "
    "(a batch too large for one device's memory); max_iters, the schedule and the "
    "intervals still count optimiser steps. Terms the strategy or encoder declares as "
    "coupling a batch's samples (batch_coupled_terms: in-batch negatives, token means, "
    "BatchNorm) then come from each micro-batch: recorded as a deviation",
    "activation_checkpointing": "True = the encoder's checkpoint_targets() recompute their activations in backward "
    "(less memory, the same updates, RNG replayed); not in the stage key; not with "
    "compile",
}

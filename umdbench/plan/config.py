"""From a cell (pretrain x tune chain x dataset x preset x seed) to one fully resolved config.

The resolved config is a plain nested dict: every default a plugin contributes is written out,
so the config saved beside a run says exactly what ran. Presets compose by inheritance: the
encoder preset, then each strategy's preset (and its ``per_dataset`` entry), then the user's
``--cfg-options`` overrides on top.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, field
from typing import Any

from umdbench.errors import ConfigError, UmdbenchError
from umdbench.plan import options
from umdbench.util import config_hash, data_root, dataset_root, parse_option, portable_paths, resolve_amp


@dataclass(frozen=True)
class CellSpec:
    """One cell of a benchmark grid; a single ``umdbench run`` is a grid of one cell."""

    pretrain: str
    tune: tuple[str, ...]
    dataset: str
    preset: str = "tiny"
    seed: int = 0
    overrides: tuple[tuple[str, Any], ...] = ()
    data_root: str | None = None
    suite: str | None = None
    cell_name: str | None = None
    encoder: str | None = None  # registered encoder; None = the dataset's default (DatasetPlugin.encoder)

    @property
    def label(self) -> str:
        return f"{self.pretrain} / {'+'.join(self.tune)} / {self.dataset}"


def parse_tune_chain(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split("+"))
    if not text.strip() or any(not n for n in names):
        raise ConfigError(
            f"--tune {text!r} is not a chain of tuning strategy names joined by '+', e.g. "
            f"'direct' or 'tdcalib+gmcoord'."
        )
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(
            f"--tune {text!r} names {', '.join(repeated)} more than once. Each tuning strategy may "
            f"appear once in a chain; to train longer, raise its max_iters with --cfg-options "
            f"tune.<i>.train.max_iters=N."
        )
    return names


def parse_override(text: str) -> tuple[str, Any]:
    """``key.path=value`` of ``--cfg-options``; the value grammar is :func:`umdbench.util.parse_option`'s."""
    return parse_option(
        text, "--cfg-options", form="key.path=value (e.g. pretrain.train.max_iters=100 or tune.0.train.lr=1e-4)"
    )


def _has_path(node: Any, parts: list[str]) -> bool:
    """Whether ``parts`` leads to an existing key of ``node`` (a new key of an ``options`` dict counts)."""
    for depth, part in enumerate(parts):
        if isinstance(node, dict) and (
            part in node or (depth == len(parts) - 1 and parts[depth - 1 : depth] == ["options"])
        ):
            node = node.get(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False
    return True


def apply_override(cfg: dict, key: str, value: Any) -> None:
    """Set ``key`` (dotted; list indices as numbers, ``*`` for every element that has the rest of
    the path) in ``cfg`` to ``value``."""
    node: Any = cfg
    parts = key.split(".")
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[:depth]) or "<root>"
        if isinstance(node, list):
            if part == "*" and not last:
                # every element that has the rest of the path (as `sweep` reads tune.*.KEY)
                rest = ".".join(parts[depth + 1 :])
                applied = 0
                for element in node:
                    if _has_path(element, parts[depth + 1 :]):
                        apply_override(element, rest, value)
                        applied += 1
                if not applied:
                    raise ConfigError(
                        f"--cfg-options {key}: no element of {where} (a list of {len(node)}) has "
                        f"{rest!r}. `umdbench run ... --dry-run` prints the full config."
                    )
                return
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(
                    f"--cfg-options {key}: {where} is a list of {len(node)}; use an index 0..{len(node) - 1}."
                )
            if last:
                node[int(part)] = value
                return
            node = node[int(part)]
        elif isinstance(node, dict):
            # new keys are allowed only inside free-form "options" dicts
            if part not in node and not (last and parts[depth - 1 : depth] == ["options"]):
                close = difflib.get_close_matches(part, [str(k) for k in node], n=3)
                hint = f" Did you mean {' or '.join(close)}?" if close else ""
                raise ConfigError(
                    f"--cfg-options {key}: {where} has no key {part!r}.{hint} Keys there: "
                    f"{', '.join(map(str, node)) or '(none)'}. `umdbench run ... --dry-run` prints the full config."
                )
            if last:
                node[part] = value
                return
            node = node[part]
        else:
            raise ConfigError(f"--cfg-options {key}: {where} is a value ({node!r}), not a section.")


@dataclass
class ResolvedRun:
    cell: CellSpec
    config: dict
    deviations: list[str] = field(default_factory=list)

    @property
    def portable_config(self) -> dict:
        """The config as a result stores it: no path of this machine (:func:`umdbench.util.portable_paths`)."""
        return portable_paths(self.config, data_root(self.cell.data_root))

    @property
    def hash(self) -> str:
        """The hash of :attr:`portable_config`: the same run on another machine, or with the data
        elsewhere, has the same hash (the data fingerprint tells the data apart)."""
        return config_hash(self.portable_config)


def resolve(cell: CellSpec, registries) -> ResolvedRun:
    """Build the full config of a cell from the plugins' presets and the user's overrides. Longer than 80 lines because
    the layers of a config apply in one fixed order (presets, suite, overrides, checks), and that order is what a
    reader needs to see in one place."""
    dataset_cls = registries.dataset.get(cell.dataset)
    if dataset_cls.task not in registries.task:
        raise ConfigError(
            f"dataset {cell.dataset!r} declares task {dataset_cls.task!r}, which no plugin registers as a "
            f"task type; {registries.task.unknown_message(dataset_cls.task)}"
        )
    if not registries.task.get(dataset_cls.task).supervised:
        raise ConfigError(
            f"dataset {cell.dataset!r} is a pre-training corpus (no labels); pass a downstream dataset to "
            f"--dataset and choose the corpus with --cfg-options pretrain.corpus.type={cell.dataset}."
        )
    encoder_name = cell.encoder or default_encoder(dataset_cls, cell.preset)
    encoder_cls = registries.encoder.get(encoder_name)
    if cell.preset not in encoder_cls.presets:
        raise ConfigError(
            f"unknown preset {cell.preset!r} for encoder {encoder_name!r}."
            f"{options.did_you_mean(cell.preset, encoder_cls.presets)} Choose one of "
            f"{', '.join(sorted(encoder_cls.presets))} with --preset."
        )
    with registries.encoder.guard(encoder_name, f"giving its {cell.preset!r} preset"):
        model = {"type": encoder_name, **encoder_cls.default_config(cell.preset)}
    config: dict = {
        "cell": {
            "pretrain": cell.pretrain,
            "tune": list(cell.tune),
            "dataset": cell.dataset,
            "preset": cell.preset,
            "suite": cell.suite,
            "cell_name": cell.cell_name,
        },
        "seed": cell.seed,
        "model": model,
        "data": {"num_workers": "auto", "image_cache": True, "eval_batch_size": 64},
        # on_error "skip" drops records with missing/corrupt images, counted and reported
        "dataset": {
            "type": cell.dataset,
            "root": dataset_root(dataset_cls, cell.data_root, cell.dataset),
            "options": {},
            "on_error": "raise",
        },
        "pretrain": None,
        "tune": [],
        # metric: what scores the evaluation (the dataset's `metric`, else its task type's
        # `default_metric`; `eval.metric=NAME` picks another registered one, which changes only the
        # evaluation's key, so the trained stages are shared)
        "eval": {"split": "test", "metric": default_metric(registries, dataset_cls)},
        # experiment tracking beside the local logs: mmengine visualiser backends ("tensorboard", "mlflow")
        "tracking": {"backends": []},
    }
    if cell.pretrain != "none":
        strategy_cls = registries.pretrain.get(cell.pretrain)
        options.check_preset_offered(registries.pretrain, cell.pretrain, strategy_cls, cell.preset)
        preset_corpus = (
            strategy_cls.presets[cell.preset].get("corpus")
            if isinstance(strategy_cls.presets[cell.preset], dict)
            else None
        )
        preset_corpus = preset_corpus or dataset_cls.default_pretrain_corpus
        options.check_preset(
            registries.pretrain,
            cell.pretrain,
            strategy_cls,
            cell.preset,
            _task_cls(registries, preset_corpus, pretraining=True),
            registries,
        )
        with registries.pretrain.guard(cell.pretrain, f"giving its {cell.preset!r} preset"):
            stage = {"type": cell.pretrain, **strategy_cls.default_config(cell.preset, cell.dataset)}
        corpus_name = stage.pop("corpus", None) or dataset_cls.default_pretrain_corpus
        if corpus_name is None:
            raise ConfigError(
                f"dataset {cell.dataset!r} names no pre-training corpus; choose one with --cfg-options "
                f"pretrain.corpus.type=NAME (see `umdbench list`)."
            )
        corpus_cfg = (
            copy.deepcopy(corpus_name) if isinstance(corpus_name, dict) else {"type": corpus_name, "options": {}}
        )
        corpus_cfg.setdefault("options", {})
        stage["corpus"] = corpus_cfg
        config["pretrain"] = stage
    deviations = []
    for name, strategy_cls, appended in tune_chain(cell.tune, registries):
        options.check_preset_offered(registries.tune, name, strategy_cls, cell.preset)
        options.check_preset(
            registries.tune,
            name,
            strategy_cls,
            cell.preset,
            _task_cls(registries, cell.dataset, pretraining=False),
            registries,
        )
        with registries.tune.guard(name, f"giving its {cell.preset!r} preset"):
            stage = {"type": name, **strategy_cls.default_config(cell.preset, cell.dataset)}
        if appended:
            stage = {"type": name, "appended": True, **stage}
            deviations.append(
                f"tune chain ends with unsupervised {cell.tune[-1]!r}: a {name!r} stage was appended "
                f"to train the task head"
            )
        config["tune"].append(stage)
    fill_train_defaults(config)
    for key, value in cell.overrides:
        try:
            apply_override(config, key, value)
        except ConfigError as exc:
            raise ConfigError(f"{exc}{_stage_named(config, key, registries)}") from exc
    if config["pretrain"] is not None:
        corpus = config["pretrain"]["corpus"]
        corpus_cls = registries.dataset.get(corpus["type"])
        corpus["root"] = dataset_root(corpus_cls, cell.data_root, corpus["type"])
        paper_corpus = dataset_cls.paper_pretrain_corpus
        if paper_corpus and corpus["type"] != paper_corpus:
            deviations.append(
                f"pre-training corpus {corpus['type']!r} {corpus['options'] or ''} instead of the paper's "
                f"{paper_corpus!r}"
            )
    check_declared_options(config, registries)
    check_eval_metric(config, registries, dataset_cls)
    resolve_precision(config)
    check_activation_checkpointing(config, registries)
    check_tracking(config)
    check_stage_configs(config, registries)
    deviations += check_accumulation(config, registries)
    with registries.encoder.guard(encoder_name, "checking its weights"):
        encoder_deviations = [f"model ({encoder_name}): {d}" for d in encoder_cls.deviations(config["model"])]
    config["deviations"] = (
        deviations
        + _declared_deviations(config, registries)
        + encoder_deviations
        + _data_deviations(config, dataset_cls, registries)
    )
    return ResolvedRun(cell, config, config["deviations"])


def default_encoder(dataset_cls, preset: str) -> str:
    """The encoder a run on ``dataset_cls`` at ``preset`` uses when it names none (``--encoder``):
    the dataset's ``preset_encoders`` entry for the preset, else its ``encoder``."""
    return (getattr(dataset_cls, "preset_encoders", None) or {}).get(preset) or dataset_cls.encoder


def default_metric(registries, dataset_cls) -> str | None:
    """The metric a dataset's evaluation scores with unless ``eval.metric`` names another: the
    dataset's own (``DatasetPlugin.metric``), else its task type's ``default_metric``; None when
    neither names one. The one place this rule is spelled (``umdbench.plan.stage_plan.metric_name``
    applies ``eval.metric`` on top of it)."""
    name = dataset_cls.metric
    if not name and dataset_cls.task in registries.task:
        name = registries.task.get(dataset_cls.task).default_metric
    return name or None


def check_eval_metric(config: dict, registries, dataset_cls) -> None:
    """``eval.metric`` names a registered metric (``null`` = the dataset's default, written out so
    the config says what scored it); checked at planning, without importing the metric."""
    section = config["eval"]
    name = section.get("metric")
    if name is None:
        section["metric"] = name = default_metric(registries, dataset_cls)
        if name is None:
            return  # neither the dataset nor its task type names one: evaluate_stage says so
    if not isinstance(name, str) or name not in registries.metric:
        default = default_metric(registries, dataset_cls)
        raise ConfigError(
            f"eval.metric={name!r}: {registries.metric.unknown_message(str(name))} Dataset "
            f"{config['dataset']['type']!r} scores with {default!r} by default; choose another "
            f"registered metric with --cfg-options eval.metric=NAME (or a suite's overrides)."
        )


def _task_cls(registries, dataset: Any, pretraining: bool):
    """The task type class a stage on ``dataset`` (a name or a corpus ``{type, options}``) builds its
    data with; None when that cannot be told here (the errors come from the checks that need it)."""
    name = dataset.get("type") if isinstance(dataset, dict) else dataset
    try:
        task = options.data_task(registries.dataset.get(name), registries, pretraining)
        return registries.task.get(task) if task in registries.task else None
    except UmdbenchError:
        return None


def _stage_named(config: dict, key: str, registries) -> str:
    """`` tune.0 is tuning strategy 'x' (from ...).``: the plugin behind a --cfg-options key."""
    parts = key.split(".")
    if parts[0] == "pretrain" and config.get("pretrain"):
        return f" pretrain is {options.who(registries.pretrain, config['pretrain']['type'])}."
    if parts[0] == "tune" and len(parts) > 1 and parts[1].isdigit() and int(parts[1]) < len(config["tune"]):
        return f" tune.{parts[1]} is {options.who(registries.tune, config['tune'][int(parts[1])]['type'])}."
    return ""


def check_declared_options(config: dict, registries) -> None:
    """What the plugins declare: each stage's options and train keys (:mod:`umdbench.plan.options`),
    the dataset's and the corpus's options, and whether each strategy fits its data and the encoder."""
    options.check_compatibility(config, registries)
    data = config["dataset"]
    options.check_dataset_options("dataset.options", registries.dataset, data["type"], data.get("options", {}))
    if config["pretrain"] is not None:
        corpus = config["pretrain"]["corpus"]
        options.check_dataset_options(
            "pretrain.corpus.options", registries.dataset, corpus["type"], corpus.get("options", {})
        )
        options.check_stage(
            "pretrain", registries.pretrain, config["pretrain"], _task_cls(registries, corpus, pretraining=True)
        )
    for i, stage in enumerate(config["tune"]):
        options.check_stage(f"tune.{i}", registries.tune, stage, _task_cls(registries, data["type"], pretraining=False))


def resolve_precision(config: dict) -> None:
    """Each stage's ``train.amp`` as it applies on this machine (``"auto"`` -> ``"bf16"`` or False):
    the config saved with the run and the stage key then say which precision trained it."""
    for stage in [config["pretrain"], *config["tune"]]:
        if stage and isinstance(stage.get("train"), dict):
            stage["train"]["amp"] = resolve_amp(stage["train"].get("amp", False))


# train keys the run layer reads that umdbench.api.TRAIN_DEFAULTS does not list, given to every
# stage before --cfg-options apply (which set only keys that exist) so that they can be set there
# and --dry-run shows them. activation_checkpointing: umdbench.models.activation_checkpointing.
CORE_TRAIN_DEFAULTS = {"activation_checkpointing": False}


def fill_train_defaults(config: dict) -> None:
    for stage in [config["pretrain"], *config["tune"]]:
        if stage and isinstance(stage.get("train"), dict):
            for key, value in CORE_TRAIN_DEFAULTS.items():
                stage["train"].setdefault(key, copy.deepcopy(value))


def check_activation_checkpointing(config: dict, registries) -> None:
    """``train.activation_checkpointing`` of each stage: true or false, not with ``train.compile``,
    and only where the encoder (or the strategy) names blocks to checkpoint (``checkpoint_targets``),
    checked at planning so that none of these fails when the stage starts."""
    encoder_cls = registries.encoder.get(config["model"]["type"])
    for label, stage in [("pretrain", config["pretrain"]), *((f"tune.{i}", s) for i, s in enumerate(config["tune"]))]:
        train = (stage or {}).get("train") or {}
        value = train.get("activation_checkpointing", False)
        if not isinstance(value, bool):
            raise ConfigError(
                f"{label}.train.activation_checkpointing={value!r}: use true (recompute the encoder "
                f"blocks' activations in backward: less memory, same updates) or false, e.g. "
                f"--cfg-options {label}.train.activation_checkpointing=true."
            )
        if not value:
            continue
        if train.get("compile", False):  # umdbench.models.activation_checkpointing.COMPILE_CONFLICT
            raise ConfigError(
                f"{label}.train.activation_checkpointing=true cannot be combined with "
                f"{label}.train.compile=true: compiled blocks draw their dropout masks again when they "
                f"are recomputed, so the updates would differ from the plain step's. Set "
                f"{label}.train.compile=false or {label}.train.activation_checkpointing=false."
            )
        strategy_cls = (registries.pretrain if label == "pretrain" else registries.tune).get(stage["type"])
        if not any(callable(getattr(cls, "checkpoint_targets", None)) for cls in (encoder_cls, strategy_cls)):
            raise ConfigError(
                f"{label}.train.activation_checkpointing=true: the encoder {config['model']['type']!r} "
                f"names no blocks to checkpoint (it has no checkpoint_targets()). Set "
                f"{label}.train.activation_checkpointing=false."
            )


# experiment tracking beside the local logs: name -> (mmengine visualiser backend, module, how to install)
TRACKING_BACKENDS = {
    "tensorboard": ("TensorboardVisBackend", "tensorboard", "pip install tensorboard (or umdbench[track])"),
    "mlflow": ("MLflowVisBackend", "mlflow", "pip install mlflow"),
}


def check_tracking(config: dict) -> None:
    """``tracking.backends`` names known backends whose packages are installed (checked before
    anything trains, not when the first stage starts)."""
    import importlib.util

    backends = (config.get("tracking") or {}).get("backends") or []
    if isinstance(backends, str):
        backends = [b.strip() for b in backends.split(",") if b.strip()]
        config["tracking"]["backends"] = backends
    for name in backends:
        if name not in TRACKING_BACKENDS:
            raise ConfigError(
                f"tracking.backends: unknown backend {name!r}; choose from "
                f"{', '.join(sorted(TRACKING_BACKENDS))} (e.g. --track tensorboard)."
            )
        if importlib.util.find_spec(TRACKING_BACKENDS[name][1]) is None:
            raise ConfigError(
                f"tracking.backends lists {name!r} but its package {TRACKING_BACKENDS[name][1]!r} is not "
                f"installed; fix: {TRACKING_BACKENDS[name][2]}, or leave {name!r} out."
            )


def check_accumulation(config: dict, registries=None) -> list[str]:
    """``train.accumulative_counts`` of each stage: a whole number >= 1 that divides the batch.
    Returns the deviation each accumulating stage records: the terms its strategy declares as
    coupling the samples of a batch (:meth:`~umdbench.api.Strategy.batch_coupled_terms`: in-batch
    negatives, means over per-sample counts, batch statistics) are computed per micro-batch, not
    over the whole batch. A strategy without such terms accumulates exactly and records nothing
    (without ``registries`` every accumulating stage is assumed coupled)."""
    found = []
    for label, stage in [("pretrain", config["pretrain"]), *((f"tune.{i}", s) for i, s in enumerate(config["tune"]))]:
        if not stage:
            continue
        train = stage.get("train") or {}
        accum, batch = train.get("accumulative_counts", 1), train.get("batch_size")
        if isinstance(accum, bool) or not isinstance(accum, int) or accum < 1:
            raise ConfigError(
                f"{label}.train.accumulative_counts must be a whole number >= 1, got {accum!r}; "
                f"e.g. --cfg-options {label}.train.accumulative_counts=2."
            )
        if accum == 1:
            continue
        if not isinstance(batch, int) or batch % accum:
            raise ConfigError(
                f"{label}.train.batch_size {batch!r} does not split into {accum} micro-batches "
                f"({label}.train.accumulative_counts); make the batch a multiple of {accum}."
            )
        if registries is None:
            terms = ["in-batch negatives and batch statistics"]
        else:
            kind = registries.pretrain if label == "pretrain" else registries.tune
            terms = kind.get(stage["type"]).batch_coupled_terms(stage)
            terms += registries.encoder.get(config["model"]["type"]).batch_coupled_terms(config["model"])
        if terms:
            found.append(
                f"{label} {stage['type']}: batch {batch} accumulated over {accum} micro-batches of "
                f"{batch // accum}; computed per micro-batch instead of over the whole batch: "
                f"{'; '.join(terms)}"
            )
    return found


# the supervised stage appended to a chain that ends unsupervised: the paper's plain fine-tuning
HEAD_STAGE = "direct"


def tune_chain(names: tuple[str, ...] | list[str], registries) -> list[tuple[str, type, bool]]:
    """``(name, strategy class, appended)`` of each tuning stage of a chain. An unsupervised last
    stage (e.g. TD-Calib alone) trains no task head, so evaluation needs a supervised stage after
    it: :data:`HEAD_STAGE` is appended (``appended`` True)."""
    chain = [(name, registries.tune.get(name), False) for name in names]
    if not chain[-1][1].supervised:
        chain.append((HEAD_STAGE, registries.tune.get(HEAD_STAGE), True))
    return chain


def check_stage_configs(config: dict, registries) -> None:
    """Each strategy validates its resolved stage config (``Strategy.check_config``), so a bad
    option fails at planning (``--dry-run`` included), never after hours of training."""
    stages = [("pretrain", registries.pretrain, config["pretrain"])]
    stages += [(f"tune.{i}", registries.tune, s) for i, s in enumerate(config["tune"])]
    for where, registry, stage in stages:
        if stage:
            fraction = stage.get("train", {}).get("label_fraction", 1.0)
            if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction <= 1.0:
                raise ConfigError(
                    f"{where}.train.label_fraction={fraction!r} must be a number in (0, 1] (the share of "
                    f"the training split a tuning stage trains on); fix it with --cfg-options "
                    f"{where}.train.label_fraction=0.1"
                )
            if where == "pretrain" and fraction != 1.0:
                raise ConfigError(
                    f"pretrain.train.label_fraction={fraction!r}: pre-training reads an unlabelled corpus, "
                    f"so a label fraction applies to tuning stages only; set "
                    f"tune.<i>.train.label_fraction instead"
                )
            with registry.guard(stage["type"], f"checking its config ({where})"):
                registry.get(stage["type"]).check_config(stage)
    for i, stage in enumerate(config["tune"]):
        parent = config["pretrain"] if i == 0 else config["tune"][i - 1]
        with registries.tune.guard(stage["type"], f"checking its config against its parent's (tune.{i})"):
            registries.tune.get(stage["type"]).check_parent_config(stage, parent, f"tune.{i}")


def _data_deviations(config: dict, dataset_cls, registries) -> list[str]:
    """What the dataset copy and its options change (DatasetPlugin.deviations). Only a plugin that
    declares some is instantiated here, so planning other datasets reads no files."""
    from umdbench.api import DataError, DatasetPlugin

    if getattr(dataset_cls, "deviations", DatasetPlugin.deviations) is DatasetPlugin.deviations:
        return []
    data = config["dataset"]
    with registries.dataset.guard(data["type"], "listing its deviations"):
        try:
            return list(dataset_cls(data["root"], data.get("on_error", "raise"), **data["options"]).deviations())
        except (DataError, OSError):
            return []  # unreadable data: the data checks before training name the file and the fix


def _declared_deviations(config: dict, registries) -> list[str]:
    """Options that depart from the paper, as each strategy describes its own resolved config."""
    found = []
    stages = [("pretrain", registries.pretrain, config["pretrain"])]
    stages += [(f"tune.{i}", registries.tune, s) for i, s in enumerate(config["tune"])]
    for where, registry, stage in stages:
        if stage:
            for item in registry.get(stage["type"]).deviations(stage):
                found.append(f"{where} ({stage['type']}): {item}")
    return found

"""Declared, checked configuration: the options each plugin offers, the core's train keys, preset
names, and which strategies fit which datasets and encoders.

:func:`umdbench.plan.config.resolve` calls these, so ``run --dry-run`` and ``sweep --dry-run``
refuse a misspelt name or an incompatible cell before anything trains, in one paragraph that names
the plugin and the option (exit 2).

A strategy's options are the top-level keys of its presets (``train`` and ``per_dataset`` aside)
plus what it declares in ``option_schema`` (:class:`umdbench.api.Option`: type, default, help),
plus what the task type of its data declares (options it reads from the stage config). So:

* a ``per_dataset`` entry or a ``--cfg-options`` key must name one of them ("did you mean");
* a preset key that no other preset and no declaration has, and that looks like a misspelling of
  an option this preset leaves out (``poolling`` beside a declared ``pooling``), is refused;
* a declared type is checked on the resolved stage config (presets and overrides alike);
* a dict option accepts the keys its presets (or its declared default) give it; one that is empty
  everywhere (MR-Pretrain's ``quirks``) is free-form, checked by the strategy itself;
* ``train`` keys must be :data:`umdbench.api.TRAIN_KEYS`, ``lr_mult`` groups ``encoder``/``fusion``/
  ``head``, and ``max_iters``, ``batch_size``, ``lr`` must be there;
* ``per_dataset`` names a registered dataset, or one not close to any (a dataset of a package that
  is not installed is kept, a misspelt one refused).

Compatibility: ``Strategy.task_types`` (the task types of the data it reads; a pre-training
strategy's are its corpus's) and ``Strategy.encoders`` (registered names or ``Encoder.family``),
with ``TaskType.generic_strategies`` False for task types that only strategies naming them fit.
"""

from __future__ import annotations

import difflib
from typing import Any

from umdbench.errors import ConfigError, UmdbenchError

# umdbench.api (and torch) is imported when a check runs, not with this module: the CLI stays light

# top-level keys of a strategy preset that are not options
STRUCTURE = {
    "train": "training hyper-parameters (umdbench.api.TRAIN_KEYS)",
    "per_dataset": "per-dataset entries: dataset name -> options and train keys that override the preset",
}
# keys the core writes into a stage config beside the plugin's options (never typos, never declared)
CORE_STAGE_KEYS = {
    "type": "the strategy's registered name",
    "appended": "marks a stage the planner appended to a chain that ends unsupervised",
    "corpus": "the pre-training corpus, {type, options} (pre-training stages)",
    "special_ids": "the encoder tokenizer's special token ids, given to the strategy when the stage is built",
}
LR_GROUPS = ("encoder", "fusion", "head")
REQUIRED_TRAIN = ("max_iters", "batch_size", "lr")


def train_keys() -> dict[str, str]:
    """Every key a stage's ``train`` dict may hold (the contract's, activation_checkpointing included)."""
    from umdbench.api import TRAIN_KEYS

    return dict(TRAIN_KEYS)


def did_you_mean(word: str, names, cutoff: float = 0.6) -> str:
    close = difflib.get_close_matches(str(word), sorted(map(str, names)), n=3, cutoff=cutoff)
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def who(registry, name: str) -> str:
    """``tuning strategy 'x' (from path /p.py (p))``: the plugin as every message names it."""
    from umdbench.plugin.registry import KINDS

    return f"{KINDS[registry.kind]} {name!r} (from {registry.origin(name)})"


def as_option(name: str, spec: Any, owner: str):
    from umdbench.api import Option

    if isinstance(spec, Option):
        return spec
    if isinstance(spec, tuple) and 1 <= len(spec) <= 3:
        return Option(*spec)
    raise ConfigError(
        f"{owner}: option_schema[{name!r}] is {spec!r}; declare an option as umdbench.api.Option(type, "
        f"default, help) or a (type, default, help) tuple."
    )


def declared(schema: Any, owner: str) -> dict:
    if schema is None:
        return {}
    if not isinstance(schema, dict):
        raise ConfigError(
            f"{owner}: option_schema must be a dict of option name -> umdbench.api.Option, got {type(schema).__name__}."
        )
    return {str(name): as_option(name, spec, owner) for name, spec in schema.items()}


def _merged_default(values: list) -> Any:
    """What the presets give an undeclared option: for dicts, every key any preset gives."""
    dicts = [v for v in values if isinstance(v, dict)]
    if dicts and len(dicts) == len(values):
        merged: dict = {}
        for d in dicts:
            merged.update(d)
        return merged
    return values[0]


def strategy_options(cls, task_cls=None, owner: str = "") -> dict:
    """Every option of a strategy on data of ``task_cls`` (name -> :class:`umdbench.api.Option`): its
    presets' keys (no type), its task type's declared options, its own declared options (these win)."""
    from umdbench.api import Option

    seen: dict[str, list] = {}
    for preset in (cls.presets or {}).values():
        if isinstance(preset, dict):
            for key, value in preset.items():
                if key not in STRUCTURE and key not in CORE_STAGE_KEYS:
                    seen.setdefault(key, []).append(value)
    known = {key: Option(None, _merged_default(values)) for key, values in seen.items()}
    if task_cls is not None:
        known.update(
            declared(getattr(task_cls, "option_schema", None), f"task type {getattr(task_cls, 'name', '?')!r}")
        )
    known.update(declared(getattr(cls, "option_schema", None), owner))
    return known


# -- values ------------------------------------------------------------------------------------------
def _type_words(kind: Any) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    words = {
        bool: "true or false",
        int: "a whole number",
        float: "a number",
        str: "a string",
        list: "a list",
        tuple: "a list",
        dict: "a table (dict)",
        type(None): "null",
    }
    return " or ".join(dict.fromkeys(words.get(k, getattr(k, "__name__", str(k))) for k in kinds))


def type_ok(value: Any, option) -> bool:
    if option.type is None or (value is None and option.default is None):
        return True
    kinds = option.type if isinstance(option.type, tuple) else (option.type,)
    if isinstance(value, bool):
        return bool in kinds
    if isinstance(value, int) and float in kinds:
        return True
    if isinstance(value, (list, tuple)) and (list in kinds or tuple in kinds):
        return True
    return isinstance(value, kinds)


def check_value(key: str, value: Any, option, owner: str, where: str, fix: str) -> None:
    """Type and dict keys of one option's value."""
    if not type_ok(value, option):
        helps = f" ({option.help})" if option.help else ""
        raise ConfigError(
            f"{owner}: option {key!r}{helps} is {value!r} in {where}; it must be {_type_words(option.type)}. {fix}"
        )
    if isinstance(option.default, dict) and option.default and isinstance(value, dict):
        for inner in value:
            if inner not in option.default:
                raise ConfigError(
                    f"{owner}: option {key!r} has no key {inner!r} (in {where}).{did_you_mean(inner, option.default)} "
                    f"Keys of {key!r}: {', '.join(map(str, option.default))}. {fix}"
                )


def check_train(train: Any, owner: str, where: str, fix: str, complete: bool) -> None:
    """A stage's ``train`` dict: known keys, known lr groups, and (``complete``) the required keys.
    ``KEY`` in ``fix`` is replaced by the key at fault."""
    if not isinstance(train, dict):
        raise ConfigError(
            f"{owner}: 'train' in {where} must be a dict of train keys (umdbench.api.TRAIN_KEYS), got "
            f"{train!r}. {fix.replace('train.KEY', 'train').replace('KEY', 'train')}"
        )
    keys = train_keys()
    for key in train:
        if key not in keys:
            raise ConfigError(
                f"{owner}: {where} sets train.{key}, which is not a train key.{did_you_mean(key, keys)} "
                f"Train keys: {', '.join(keys)} (umdbench.api.TRAIN_KEYS). {fix}"
            )
    mult = train.get("lr_mult")
    if mult is not None:
        if not isinstance(mult, dict):
            raise ConfigError(
                f"{owner}: train.lr_mult in {where} must be a table of group -> multiplier "
                f"({', '.join(LR_GROUPS)}), got {mult!r}. {fix.replace('KEY', 'lr_mult')}"
            )
        for group in mult:
            if group not in LR_GROUPS:
                raise ConfigError(
                    f"{owner}: train.lr_mult in {where} names group {group!r}.{did_you_mean(group, LR_GROUPS)} "
                    f"Groups: {', '.join(LR_GROUPS)}. {fix.replace('KEY', 'lr_mult')}"
                )
    if not complete:
        return
    for key in REQUIRED_TRAIN:
        if key not in train:
            raise ConfigError(
                f"{owner}: {where} has no train.{key} ({keys[key]}); every stage needs "
                f"{', '.join(REQUIRED_TRAIN)}. {fix.replace('KEY', key)}"
            )
    for key in ("max_iters", "batch_size"):
        value = train[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(
                f"{owner}: train.{key} is {value!r} in {where}; it must be a whole number >= 1. "
                f"{fix.replace('KEY', key)}"
            )
    if isinstance(train["lr"], bool) or not isinstance(train["lr"], (int, float)):
        raise ConfigError(
            f"{owner}: train.lr is {train['lr']!r} in {where}; it must be a number. {fix.replace('KEY', 'lr')}"
        )


# -- presets -----------------------------------------------------------------------------------------
def check_preset_offered(registry, name: str, cls, preset: str) -> None:
    """The strategy offers ``preset``; else one paragraph listing what it offers (and a misspelt one)."""
    presets = getattr(cls, "presets", None) or {}
    if preset in presets:
        return
    offered = sorted(map(str, presets))
    close = difflib.get_close_matches(preset, offered, n=1, cutoff=0.6)
    hint = f" Its preset {close[0]!r} looks like a misspelling of {preset!r}: rename it in the plugin." if close else ""
    raise ConfigError(
        f"{who(registry, name)} has no preset {preset!r}; it offers {', '.join(offered) or 'none'}.{hint} "
        f"Run it with --preset {offered[0] if offered else 'NAME'}, or give the plugin a {preset!r} preset."
    )


def check_preset(registry, name: str, cls, preset: str, task_cls, registries) -> None:
    """The preset a run uses, as the plugin wrote it: option names, train keys, per-dataset entries."""
    owner = who(registry, name)
    raw = cls.presets[preset]
    fix = "Fix the preset in the plugin."
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{owner}: its {preset!r} preset must be a dict of options and a 'train' dict, got "
            f"{type(raw).__name__}. {fix}"
        )
    known = strategy_options(cls, task_cls, owner)
    stated = set(declared(getattr(cls, "option_schema", None), owner))
    if task_cls is not None:
        stated |= set(getattr(task_cls, "option_schema", None) or {})
    where = f"its {preset!r} preset"
    for key in raw:
        if key in STRUCTURE or key in CORE_STAGE_KEYS or key in stated:
            continue
        rivals = [k for k in known if k != key and k not in raw]
        close = difflib.get_close_matches(str(key), rivals, n=1, cutoff=0.8)
        if close:
            raise ConfigError(
                f"{owner}: {where} sets {key!r}, an option nothing else declares; it looks like a "
                f"misspelling of {close[0]!r}, which that preset leaves out (so its default would be "
                f"used). Rename it in the plugin's preset."
            )
    _check_entry(raw, known, owner, where, fix, top=True)
    per = raw.get("per_dataset", {})
    if not isinstance(per, dict):
        raise ConfigError(
            f"{owner}: per_dataset in {where} must be a dict of dataset name -> options, got "
            f"{type(per).__name__}. {fix}"
        )
    datasets = registries.dataset.names() if registries is not None else []
    for dataset, entry in per.items():
        entry_where = f"{where}'s per_dataset entry {dataset!r}"
        if registries is not None and dataset not in registries.dataset:
            close = difflib.get_close_matches(str(dataset), datasets, n=1, cutoff=0.8)
            if close:  # a dataset of a package that is not installed is kept; a misspelt one is not
                raise ConfigError(
                    f"{owner}: {where} has a per_dataset entry {dataset!r}, which names no registered "
                    f"dataset; it looks like a misspelling of {close[0]!r}, whose runs would silently "
                    f"go without it. Rename the entry in the plugin's preset."
                )
        if not isinstance(entry, dict):
            raise ConfigError(f"{owner}: {entry_where} must be a dict of options, got {type(entry).__name__}. {fix}")
        _check_entry(entry, known, owner, entry_where, fix, top=False)


def _check_entry(entry: dict, known: dict, owner: str, where: str, fix: str, top: bool) -> None:
    for key, value in entry.items():
        if key in STRUCTURE:
            if key == "train":
                check_train(value, owner, where, fix, complete=False)
            elif not top:
                raise ConfigError(f"{owner}: {where} sets {key!r}, which belongs at the top of a preset. {fix}")
            continue
        if key in CORE_STAGE_KEYS:
            continue
        if key not in known:
            raise ConfigError(
                f"{owner}: {where} sets {key!r}, which is not one of its options.{did_you_mean(key, known)} "
                f"Options: {', '.join(known) or '(none)'}. {fix}"
            )
        check_value(key, value, known[key], owner, where, fix)


# -- a resolved stage --------------------------------------------------------------------------------
def check_stage(label: str, registry, stage: dict, task_cls) -> None:
    """A stage of the resolved config (preset, per-dataset entry and --cfg-options applied)."""
    name = stage["type"]
    cls = registry.get(name)
    owner = who(registry, name)
    known = strategy_options(cls, task_cls, owner)
    fix = f"Fix it with --cfg-options {label}.KEY=VALUE (`--dry-run` prints the resolved config)."
    where = f"the resolved config ({label})"
    for key, value in stage.items():
        if key in CORE_STAGE_KEYS or key == "per_dataset":
            continue
        if key == "train":
            check_train(value, owner, where, fix.replace("KEY", "train.KEY"), complete=True)
            continue
        if key not in known:
            raise ConfigError(
                f"{owner}: {where} has {key!r}, which is not one of its options.{did_you_mean(key, known)} "
                f"Options: {', '.join(known) or '(none)'}."
            )
        check_value(key, value, known[key], owner, where, fix.replace("KEY", key))
    if "train" not in stage:
        check_train({}, owner, where, fix.replace("KEY", "train.KEY"), complete=True)


def check_dataset_options(label: str, registry, name: str, options: Any) -> None:
    """``dataset.options`` (or a corpus's) against the dataset's declared ``option_schema``."""
    cls = registry.get(name)
    owner = who(registry, name)
    schema = getattr(cls, "option_schema", None)
    if schema is None:
        return  # undeclared: the plugin's constructor checks its options
    known = declared(schema, owner)
    if not isinstance(options, dict):
        raise ConfigError(f"{owner}: {label} must be a table of option -> value, got {options!r}.")
    for key, value in options.items():
        if key not in known:
            raise ConfigError(
                f"{owner} has no option {key!r} ({label}).{did_you_mean(key, known)} Options: "
                f"{', '.join(known) or '(none)'}. Fix it with --cfg-options {label}.NAME=VALUE."
            )
        check_value(key, value, known[key], owner, label, f"Fix it with --cfg-options {label}.{key}=VALUE.")


# -- compatibility -----------------------------------------------------------------------------------
def data_task(dataset_cls, registries, pretraining: bool) -> str | None:
    """The task type a stage on ``dataset_cls`` builds its data with (a pre-training stage on a
    labelled dataset: that task type's ``pretrain_task``); None when it has none."""
    task = dataset_cls.task
    if pretraining and task in registries.task and registries.task.get(task).supervised:
        return registries.task.get(task).pretrain_task
    return task


def _encoder_family(registries, encoder: str) -> str:
    try:
        return str(getattr(registries.encoder.get(encoder), "family", "") or "")
    except Exception:  # noqa: BLE001 - an encoder that cannot be imported fits nothing by family
        return ""


def misfit(cls, task: str | None, registries, encoder: str) -> str | None:
    """Why strategy ``cls`` cannot train on ``task`` data with ``encoder``, or None."""
    task_types = getattr(cls, "task_types", None)
    if task_types is not None and task not in task_types:
        return f"it trains on {' / '.join(map(repr, task_types))} data, and this is {task!r} data"
    if task_types is None and task in registries.task:
        spec = registries.task.get(task)
        if not getattr(spec, "generic_strategies", True):
            return (
                f"task type {task!r} admits only strategies made for it (that name it in their task_types), and "
                f"this one names no task types"
            )
    encoders = getattr(cls, "encoders", None)
    if encoders is not None:
        family = _encoder_family(registries, encoder)
        if encoder not in encoders and (not family or family not in encoders):
            kind = f" (family {family!r})" if family else ""
            return f"it runs on {' / '.join(map(repr, encoders))} encoders, and the run's encoder is {encoder!r}{kind}"
    return None


def _fits(registry, name: str, task: str | None, registries, encoder: str) -> bool:
    try:
        return misfit(registry.get(name), task, registries, encoder) is None
    except UmdbenchError:
        return False
    except Exception:  # noqa: BLE001 - a plugin that cannot be imported fits nothing
        return False


def _datasets_for(registry, name: str, registries, pretraining: bool) -> list[str]:
    """Registered downstream datasets the strategy fits, each with its own default encoder and corpus."""
    found = []
    for dataset in registries.dataset.names():
        try:
            cls = registries.dataset.get(dataset)
            if cls.task not in registries.task or not registries.task.get(cls.task).supervised:
                continue  # a corpus, not a --dataset
            if pretraining:
                corpus = cls.default_pretrain_corpus
                corpus = corpus.get("type") if isinstance(corpus, dict) else corpus
                if corpus is None:
                    continue
                task = data_task(registries.dataset.get(corpus), registries, True)
            else:
                task = cls.task
            if _fits(registry, name, task, registries, cls.encoder):
                found.append(dataset)
        except Exception:  # noqa: BLE001 - a dataset plugin that cannot be imported is left out
            continue
    return found


def check_compatibility(config: dict, registries) -> None:
    """Each stage's strategy fits the data it reads (its task type) and the run's encoder; else one
    paragraph with the strategies that fit this dataset and the datasets that fit this strategy."""
    encoder = config["model"]["type"]
    dataset = config["dataset"]["type"]
    dataset_cls = registries.dataset.get(dataset)
    stages = []
    if config.get("pretrain"):
        corpus = config["pretrain"]["corpus"]["type"]
        stages.append(
            (
                "pretrain",
                registries.pretrain,
                config["pretrain"],
                data_task(registries.dataset.get(corpus), registries, True),
                corpus,
            )
        )
    for i, stage in enumerate(config["tune"]):
        stages.append((f"tune.{i}", registries.tune, stage, dataset_cls.task, None))
    for label, registry, stage, task, corpus in stages:
        name = stage["type"]
        reason = misfit(registry.get(name), task, registries, encoder)
        if reason is None:
            continue
        pretraining = label == "pretrain"
        what = (
            f"pre-train for dataset {dataset!r} (its pre-training corpus {corpus!r} gives {task!r} data)"
            if pretraining
            else f"tune on dataset {dataset!r} (task type {task!r})"
        )
        kind = "pre-training strategies" if pretraining else "tuning strategies"
        fitting = [n for n in registry.names() if n != name and _fits(registry, n, task, registries, encoder)]
        datasets = _datasets_for(registry, name, registries, pretraining)
        alternatives = (
            f"{kind.capitalize()} that fit {dataset!r} on encoder {encoder!r}: "
            f"{', '.join(fitting) if fitting else 'none registered'}"
        )
        if pretraining:
            alternatives += " (or --pretrain none)"
        fits = (
            f"datasets {name!r} fits (each with its own encoder{' and corpus' if pretraining else ''}): "
            f"{', '.join(datasets) if datasets else 'none registered'}"
        )
        raise ConfigError(
            f"{who(registry, name)} cannot {what} on encoder {encoder!r}: {reason}. {alternatives}; "
            f"{fits}. `umdbench list` shows every name."
        )

"""What a stage builds, for a plugin's unit tests: an encoder from one of its presets together with
the ``special_ids`` a strategy finds in ``cfg["special_ids"]`` (the tokenizer's mask, pad, cls and
sep ids, the vocabulary size and every special id), and a strategy on that encoder with its
resolved preset config, as the run layer builds them (``umdbench.run.build_strategy.build_strategy``)::

    from umdbench.kit import build_test_encoder, build_test_strategy

    encoder, special_ids = build_test_encoder("coattn", "tiny")
    strategy = build_test_strategy(MLMOnly, encoder, special_ids, mask_ratio=0.3)
    losses = strategy(batch)

A plugin's own classes are passed as classes. Registered names resolve through ``registries``
(``umdbench.plugin.get_registries()``; this module sits below the plugin layer and does not load
plugins itself), except the core's own: the ``coattn`` encoder and the built-in task types need none.
Nothing here runs in a stage.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from umdbench.api import Encoder, PretrainStrategy, TaskInfo, TuneStrategy
from umdbench.util import deep_merge

__all__ = ["build_test_encoder", "build_test_strategy", "special_ids_of", "task_info_for_test"]


def _registered(kind: str, name: str, registries=None):
    if registries is not None:
        return getattr(registries, kind).get(name)
    if kind == "encoder" and name == "coattn":
        from umdbench.models.encoder import MultimodalEncoder

        return MultimodalEncoder
    if kind == "task":
        from umdbench.kit.tasktypes import BUILTIN_TASK_TYPES

        if name in BUILTIN_TASK_TYPES:
            return BUILTIN_TASK_TYPES[name]
    raise ValueError(
        f"{kind} {name!r}: pass the class, or registries=umdbench.plugin.get_registries() to look "
        f"the name up among the registered plugins"
    )


def special_ids_of(encoder_cls: type[Encoder], model_cfg: dict) -> dict | None:
    """The ``special_ids`` a stage gives its strategy for this encoder config (None for an encoder
    without a tokenizer, e.g. the 3-D volume encoders)."""
    tokenizer = encoder_cls.build_tokenizer(model_cfg)
    if tokenizer is None:
        return None
    from umdbench.models.text import special_ids_from_tokenizer

    return special_ids_from_tokenizer(tokenizer)


def build_test_encoder(
    encoder: str | type[Encoder] = "coattn",
    preset: str = "tiny",
    *,
    seed: int = 0,
    registries=None,
    **model_overrides: Any,
) -> tuple[Encoder, dict | None]:
    """``(encoder, special_ids)``: the encoder ``encoder`` (an ``Encoder`` subclass, ``"coattn"``, or
    a registered name with ``registries``) built from its ``preset`` config with ``model_overrides``
    merged on top (nested dicts merge: ``roi_size=16``, ``text={"max_text_len": 16}``), initialised
    under ``torch.manual_seed(seed)``, and its tokenizer's special ids (None when it has no
    tokenizer)."""
    cls = _registered("encoder", encoder, registries) if isinstance(encoder, str) else encoder
    name = encoder if isinstance(encoder, str) else getattr(cls, "name", cls.__name__)
    model_cfg = {"type": name, **deep_merge(cls.default_config(preset), copy.deepcopy(model_overrides))}
    torch.manual_seed(seed)
    return cls.from_config(model_cfg), special_ids_of(cls, model_cfg)


def task_info_for_test(task: str, label_names: list[str], registries=None) -> TaskInfo:
    """The ``TaskInfo`` a tuning stage hands its strategy: the task type ``task`` (its instance as
    ``spec``; a built-in one, or any registered one with ``registries``), ``label_names`` and their count."""
    return TaskInfo(
        task=task,
        num_classes=len(label_names),
        label_names=list(label_names),
        spec=_registered("task", task, registries)(),
    )


def build_test_strategy(
    strategy: str | type,
    encoder: Encoder,
    special_ids: dict | None = None,
    *,
    preset: str = "tiny",
    task: TaskInfo | None = None,
    dataset: str | None = None,
    seed: int = 0,
    registries=None,
    **options: Any,
):
    """The strategy a stage builds on ``encoder``: its ``preset`` config (the ``per_dataset`` entry
    of ``dataset`` when given) with ``options`` merged on top and ``special_ids`` added, initialised
    under ``torch.manual_seed(seed)``. ``strategy`` is a ``PretrainStrategy`` / ``TuneStrategy``
    subclass, or a registered name with ``registries``: ``"pretrain:NAME"`` or ``"tune:NAME"``. A
    tuning strategy needs ``task`` (:func:`task_info_for_test`). ``check_config`` runs first, as at
    planning."""
    if isinstance(strategy, str):
        kind, _, name = strategy.partition(":")
        if kind not in ("pretrain", "tune") or not name:
            raise ValueError(f"strategy {strategy!r}: name it 'pretrain:NAME' or 'tune:NAME', or pass the class")
        strategy = _registered(kind, name, registries)
    cfg = deep_merge(strategy.default_config(preset, dataset), copy.deepcopy(options))
    cfg.pop("corpus", None)  # a pre-training stage's data, not the strategy's (as the planner does)
    cfg = {"type": getattr(strategy, "name", "") or strategy.__name__, **cfg}
    strategy.check_config(cfg)
    if special_ids is not None:
        cfg["special_ids"] = special_ids
    torch.manual_seed(seed)
    if issubclass(strategy, TuneStrategy):
        if task is None:
            raise ValueError(f"{strategy.__name__} is a tuning strategy: pass task=task_info_for_test(TASK, LABELS)")
        return strategy(encoder, cfg, task)
    if not issubclass(strategy, PretrainStrategy):
        raise TypeError(f"{strategy!r} is neither a PretrainStrategy nor a TuneStrategy subclass")
    return strategy(encoder, cfg)

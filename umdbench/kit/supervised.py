"""The common base of supervised tuning strategies: the task type's head H on the shared encoder.

Every built-in supervised strategy (``direct``, ``linear``, ``gmcoord``) derives from
:class:`SupervisedTune`; a plugin that does too is judged with the same head, loss and predictions
as the built-ins (the paper's fairness rule: one head H for every method).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
from torch import nn

from umdbench.api import Option, TaskInfo, TaskType, TuneStrategy
from umdbench.kit.tasks import DEFAULT_LOSS, DEFAULT_POOLING, LOSSES, POOLING_WORDS, POOLINGS, TaskForward
from umdbench.kit.tasktypes import BUILTIN_TASK_TYPES

__all__ = ["SupervisedTune", "resolve_task_type"]


def resolve_task_type(task: TaskInfo) -> TaskType:
    """The task type behind ``task``: its ``spec``, or the built-in of that name (a TaskInfo
    built by hand, e.g. in a test, may leave ``spec`` empty)."""
    if task.spec is not None:
        return task.spec
    if task.task in BUILTIN_TASK_TYPES:
        return BUILTIN_TASK_TYPES[task.task]()
    raise ValueError(
        f"TaskInfo(task={task.task!r}) has no spec and {task.task!r} is not a built-in task type "
        f"({', '.join(sorted(BUILTIN_TASK_TYPES))}); pass spec=<the registered TaskType instance>."
    )


class SupervisedTune(TuneStrategy):
    """A task head on the shared encoder, trained with :func:`task_loss`.

    Config options (top level of the stage config): ``loss`` ("ce" | "bce", default "ce"),
    ``pooling`` ("pooler" | "mean", default "pooler"). Parameters: ``encoder.*`` and ``head.*``
    (the head gets the "head" lr group by the default :meth:`Strategy.param_group_of`).
    """

    supervised: ClassVar[bool] = True
    freeze_encoder: ClassVar[bool] = False
    # task_types and encoders stay None: any task type whose head reads encoder.hidden_size features
    option_schema: ClassVar[dict] = {
        "loss": Option(str, DEFAULT_LOSS, f"the task loss: {' | '.join(LOSSES)}"),
        "pooling": Option(str, DEFAULT_POOLING, f"what the head reads: {' | '.join(POOLINGS)}"),
    }
    # what the paper feeds the head: the poolers' outputs (M3AE fine-tuning); GM-Coord overrides
    paper_pooling: ClassVar[str] = DEFAULT_POOLING

    @classmethod
    def check_config(cls, cfg: dict) -> None:
        if cfg.get("loss", DEFAULT_LOSS) not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {cfg.get('loss')!r}")
        if cfg.get("pooling", DEFAULT_POOLING) not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {cfg.get('pooling')!r}")

    @classmethod
    def deviations(cls, cfg: dict) -> list[str]:
        found = []
        if cfg.get("loss", DEFAULT_LOSS) == "bce":
            found.append("BCE-with-logits on one-hot targets x answers (released code) instead of cross-entropy")
        pooling = cfg.get("pooling", DEFAULT_POOLING)
        if pooling != cls.paper_pooling:
            found.append(
                f"head reads {POOLING_WORDS.get(pooling, pooling)} instead of the paper's "
                f"{POOLING_WORDS.get(cls.paper_pooling, cls.paper_pooling)}"
            )
        return found

    def __init__(self, encoder: nn.Module, cfg: dict, task: TaskInfo):
        task = dataclasses.replace(task, spec=resolve_task_type(task))
        super().__init__(encoder, cfg, task)
        if not task.spec.supervised:
            raise ValueError(f"{type(self).__name__} needs a supervised task type, got {task.task!r}")
        self.loss_name = cfg.get("loss", DEFAULT_LOSS)
        if self.loss_name not in LOSSES:
            raise ValueError(f"{self.name}: loss must be one of {LOSSES}, got {self.loss_name!r}")
        self.pooling = cfg.get("pooling", DEFAULT_POOLING)
        if self.pooling not in POOLINGS:
            raise ValueError(f"{self.name}: pooling must be one of {POOLINGS}, got {self.pooling!r}")
        self.head = task.spec.build_head(task, int(encoder.hidden_size))
        if self.freeze_encoder:
            for p in self.encoder.parameters():
                p.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode: bool = True):  # noqa: D401 - nn.Module API
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()  # a frozen encoder runs without dropout
        return self

    def encode(self, batch: dict[str, torch.Tensor], with_negatives: bool = True) -> TaskForward:
        opts = {"pooling": self.pooling, "loss": self.loss_name}
        if self.freeze_encoder:
            with torch.no_grad():
                return self.task.spec.encode(self.encoder, batch, self.task, opts, training=with_negatives)
        return self.task.spec.encode(self.encoder, batch, self.task, opts, training=with_negatives)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        spec = self.task.spec
        fwd = self.encode(batch)
        logits = spec.logits(self.head, fwd, self.task)
        out = {"loss_task": spec.loss(self.task, logits, spec.target(fwd), {"loss": self.loss_name})}
        out.update(self.extra_logs(logits, fwd))
        self.after_task_forward(fwd, logits)
        return out

    def extra_logs(self, logits: torch.Tensor, fwd: TaskForward) -> dict[str, torch.Tensor]:
        """Training accuracy (argmax == target over usable rows), logged only."""
        target = self.task.spec.target(fwd)
        if target is None or logits.dim() != 2 or target.shape[0] != logits.shape[0]:
            return {}
        with torch.no_grad():
            valid = target >= 0
            if not bool(valid.any()):
                return {}
            hit = (logits.argmax(-1) == target)[valid].float().mean()
        return {"train_acc": hit}

    def after_task_forward(self, fwd: TaskForward, logits: torch.Tensor) -> None:
        """Hook for subclasses (GM-Coord records modality contributions here)."""

    def predict(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        spec = self.task.spec
        fwd = self.encode(batch, with_negatives=False)
        return spec.predict(self.task, spec.logits(self.head, fwd, self.task))

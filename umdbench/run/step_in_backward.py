"""The optimiser step inside the backward pass: parameters are updated, and their gradients freed,
in buckets as soon as their gradients are complete.

A plain step holds every gradient (1.28 GiB at the paper preset) until backward ends. Here a
post-accumulate-grad hook marks a parameter complete once autograd has summed all of its
contributions (so every node that read it has run); when the complete gradients reach
:data:`BUCKET_BYTES`, the optimiser steps exactly those parameters and drops their gradients, so at
most about one bucket of gradients is alive at once. (Stepping each parameter alone costs one
optimiser call per tensor, ~500 at the paper preset; buckets keep it to ~20.) The update of each
parameter is the one the whole-model step would make (same gradient, same AdamW state, same lr),
which a test checks bit for bit.

It needs the whole gradient of no two parameters at once, so it is used only where nothing does:
no gradient clipping (global norm), no gradient modulation (:meth:`Strategy.modulate_gradients`
overridden, as GM-Coord does), no gradient accumulation and no distributed all-reduce.
``train.step_in_backward``: ``"auto"`` (default) = where compatible and the stage trains under
bf16 autocast (the paper presets); ``True`` = wherever compatible (an error naming the reason
elsewhere); ``False`` = never.
"""

from __future__ import annotations

import weakref
from functools import lru_cache

import torch

from umdbench.errors import ConfigError

__all__ = ["BUCKET_BYTES", "check_processes", "incompatibility", "step_in_backward_class", "wants_step_in_backward"]

#: gradient bytes stepped together (the last bucket of a backward pass may be smaller)
BUCKET_BYTES = 64 << 20


def incompatibility(strategy, train: dict) -> str | None:
    """Why the step cannot move into backward for this stage, or None when it can."""
    from umdbench.api import Strategy

    if train.get("grad_clip"):
        return "train.grad_clip needs every gradient at once (global norm)"
    if getattr(type(strategy), "modulate_gradients", Strategy.modulate_gradients) is not Strategy.modulate_gradients:
        return f"strategy {type(strategy).__name__} modulates gradients between backward and the step"
    if int(train.get("accumulative_counts", 1)) != 1:
        return "gradient accumulation steps once per several backward passes"
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return "distributed training all-reduces gradients after backward"
    return None


def wants_step_in_backward(strategy, train: dict, amp: bool) -> bool:
    mode = train.get("step_in_backward", "auto")
    if mode is False:
        return False
    reason = incompatibility(strategy, train)
    if mode is True:
        if reason:
            raise ConfigError(
                f"train.step_in_backward=true cannot be used here: {reason}. "
                f"Set train.step_in_backward=auto (or false)."
            )
        return True
    if mode != "auto":
        raise ConfigError(f"train.step_in_backward={mode!r}: use auto, true or false.")
    return amp and reason is None


@lru_cache(maxsize=None)
def step_in_backward_class(base: type) -> type:
    """``base`` (an mmengine ``OptimWrapper`` class) with the step moved into backward."""

    class StepInBackward(base):
        bucket_bytes = BUCKET_BYTES

        def __init__(self, optimizer, *args, **kwargs):
            super().__init__(optimizer, *args, **kwargs)
            self._armed = False
            self._ready: list[torch.Tensor] = []
            self._ready_bytes = 0
            # the hooks reach the wrapper through a weak reference, so a replaced wrapper (and its
            # optimiser state) is freed; its hooks are removed when it is
            target = weakref.WeakMethod(self._grad_complete)

            def hook(param, target=target):
                method = target()
                if method is not None:
                    method(param)

            self._handles = [
                p.register_post_accumulate_grad_hook(hook) for group in optimizer.param_groups for p in group["params"]
            ]

        def __del__(self):
            for handle in getattr(self, "_handles", ()):
                handle.remove()

        def _grad_complete(self, param: torch.Tensor) -> None:
            if not self._armed:  # a backward outside update_params/backward (none in a stage)
                return
            self._ready.append(param)
            self._ready_bytes += param.grad.numel() * param.grad.element_size()
            if self._ready_bytes >= self.bucket_bytes:
                self._step_ready()

        def _step_ready(self) -> None:
            # the only gradients alive are the complete ones in _ready (every earlier bucket was
            # stepped and dropped, later ones are not produced yet), so this steps exactly them
            if self._ready:
                self.optimizer.step()
            for param in self._ready:
                param.grad = None
            self._ready, self._ready_bytes = [], 0

        def backward(self, loss: torch.Tensor, **kwargs) -> None:
            self._armed = True
            try:
                super().backward(loss, **kwargs)
                self._step_ready()
            finally:
                self._armed = False
                self._ready, self._ready_bytes = [], 0

        def step(self, **kwargs) -> None:
            """Nothing left to do: each parameter was stepped during backward."""

    StepInBackward.__name__ = f"StepInBackward{base.__name__}"
    return StepInBackward


def check_processes(config: dict, processes: int) -> None:
    """At planning: ``train.step_in_backward: true`` cannot train with several processes (the ranks
    would fail at their first step, after the torchrun job started), so it is refused here."""
    if processes <= 1:
        return
    stages = [("pretrain", config.get("pretrain")), *((f"tune.{i}", s) for i, s in enumerate(config.get("tune") or []))]
    for label, stage in stages:
        if stage and (stage.get("train") or {}).get("step_in_backward") is True:
            raise ConfigError(
                f"{label}.train.step_in_backward=true cannot be used with {processes} processes: "
                f"distributed training all-reduces the gradients after backward, so no parameter can "
                f"be stepped inside it. Set {label}.train.step_in_backward=auto (off under DDP) or false."
            )

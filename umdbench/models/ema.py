"""Exponential moving average of weights (the UMD teacher, Eq. 5)."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """In place: ``theta_bar <- decay * theta_bar + (1 - decay) * theta`` for every parameter and
    floating-point buffer (integer buffers are copied). Both modules must share names/shapes."""
    t_state = dict(teacher.named_parameters())
    t_state.update(dict(teacher.named_buffers()))
    s_state = dict(student.named_parameters())
    s_state.update(dict(student.named_buffers()))
    if t_state.keys() != s_state.keys():
        missing = sorted(set(s_state) ^ set(t_state))[:5]
        raise ValueError(f"teacher and student differ in parameters/buffers, e.g. {missing}")
    floats_t, floats_s = [], []
    for name, t in t_state.items():
        s = s_state[name]
        if t.is_floating_point():
            floats_t.append(t)
            floats_s.append(s.detach())
        else:
            t.copy_(s)
    if floats_t:
        # one multi-tensor kernel: t + (1 - decay) * (s - t) == decay * t + (1 - decay) * s
        torch._foreach_lerp_(floats_t, floats_s, 1.0 - decay)


@torch.no_grad()
def copy_weights_(teacher: nn.Module, student: nn.Module) -> None:
    """Make ``teacher`` an exact copy of ``student``'s weights and buffers."""
    teacher.load_state_dict(student.state_dict(), strict=True)

"""A stage's optimisation: AdamW over the strategy's parameter groups, wrapped for mmengine (bf16
autocast, gradient accumulation, stepping inside backward), and the learning-rate schedule.
Settings a ``train`` dict leaves out are :data:`umdbench.api.TRAIN_DEFAULTS`'
(:func:`~umdbench.run.train_settings.train_setting`)."""

from __future__ import annotations

from functools import lru_cache

import torch

from umdbench.api import Strategy
from umdbench.errors import UmdbenchError
from umdbench.run.train_settings import accumulation, train_setting, use_amp

__all__ = ["adamw_options", "bf16_optim_wrapper_class", "build_optim_wrapper", "lr_schedule", "param_groups"]


@lru_cache(maxsize=None)
def bf16_optim_wrapper_class():
    """An mmengine ``OptimWrapper`` whose forward runs under bf16 autocast on the model's device
    (CPU or CUDA). No loss scaler: bf16 has fp32's exponent range. (mmengine's AmpOptimWrapper
    refuses CPUs and adds a GradScaler, which bf16 does not need.)"""
    import contextlib

    from mmengine.optim import OptimWrapper

    class Bf16OptimWrapper(OptimWrapper):
        cast_dtype = torch.bfloat16

        @contextlib.contextmanager
        def optim_context(self, model):
            param = next(model.parameters(), None)
            device = param.device.type if param is not None else "cpu"
            with super().optim_context(model), torch.autocast(device_type=device, dtype=torch.bfloat16):
                yield

    return Bf16OptimWrapper


def param_groups(strategy: Strategy, train: dict) -> list[dict]:
    """AdamW parameter groups: each lr group of the strategy (:meth:`Strategy.param_group_of`) at
    ``lr x lr_mult[group]``, split into decayed weights and undecayed biases and normalisation
    weights. Frozen parameters and those under :meth:`transient_state_prefixes` are left out."""
    transient = tuple(strategy.transient_state_prefixes())
    decay: dict[str, list] = {}
    no_decay: dict[str, list] = {}
    for name, param in strategy.named_parameters():
        if not param.requires_grad or (transient and name.startswith(transient)):
            continue
        group = strategy.param_group_of(name)
        # upstream convention: no weight decay on biases and normalisation weights
        target = no_decay if (param.ndim <= 1 or name.endswith(".bias")) else decay
        target.setdefault(group, []).append(param)
    lr = float(train["lr"])
    mult = train_setting(train, "lr_mult")
    groups = []
    for store, wd in ((decay, float(train_setting(train, "weight_decay"))), (no_decay, 0.0)):
        for group, params in store.items():
            groups.append({"params": params, "lr": lr * float(mult.get(group, 1.0)), "weight_decay": wd})
    if not groups:
        raise UmdbenchError("the strategy has no trainable parameters")
    return groups


def adamw_options(train: dict) -> dict:
    """``torch.optim.AdamW`` keyword arguments besides the parameter groups: betas, eps and the
    implementation (fused, foreach or the per-tensor loop)."""
    options = {"betas": tuple(train_setting(train, "betas")), "eps": float(train_setting(train, "eps"))}
    if train_setting(train, "fused") in ("auto", True):
        # one fused kernel per parameter on CUDA and on CPU (torch >= 2.4): on this project's
        # 2-core CPU it steps 88 M parameters 3.4x faster than the per-tensor loop and 6x faster
        # than foreach, whose CPU path is a slow per-tensor fallback (BENCHMARKS.md)
        options["fused"] = True
    else:
        options["foreach"] = train_setting(train, "foreach") is not False
    return options


def build_optim_wrapper(strategy: Strategy, train: dict):
    """AdamW over the strategy's parameter groups (:func:`param_groups`), wrapped for mmengine.

    Performance options: ``fused`` ("auto": the fused AdamW kernel, CUDA or CPU), ``foreach``
    ("auto": multi-tensor AdamW when ``fused`` is False; False = the per-tensor loop) and ``amp``
    (see :func:`~umdbench.run.train_settings.use_amp`: bf16 autocast of the forward; weights,
    gradients and optimiser state stay fp32), ``step_in_backward`` (see
    :mod:`umdbench.run.step_in_backward`: parameters stepped and their gradients freed in buckets
    during backward; "auto" = under bf16 autocast where nothing needs all gradients at once).
    """
    from mmengine.optim import OptimWrapper

    from umdbench.run.step_in_backward import step_in_backward_class, wants_step_in_backward

    optimizer = torch.optim.AdamW(param_groups(strategy, train), **adamw_options(train))
    clip = train_setting(train, "grad_clip")
    clip_grad = {"max_norm": float(clip)} if clip else None
    amp = use_amp(train)
    wrapper = bf16_optim_wrapper_class() if amp else OptimWrapper
    if wants_step_in_backward(strategy, train, amp):
        wrapper = step_in_backward_class(wrapper)
    return wrapper(optimizer, clip_grad=clip_grad, accumulative_counts=accumulation(train))


def lr_schedule(train: dict) -> list[dict]:
    """Warm-up then decay, in loop iterations: with gradient accumulation a loop iteration is one
    micro-batch, so the bounds are optimiser steps x ``accumulative_counts``."""
    accum = accumulation(train)
    total = int(train["max_iters"]) * accum
    warm = int(round(float(train_setting(train, "warmup_ratio")) * int(train["max_iters"]))) * accum
    schedule = []
    if warm > 0:
        schedule.append(
            {"type": "LinearLR", "start_factor": 1e-3, "end_factor": 1.0, "by_epoch": False, "begin": 0, "end": warm}
        )
    if train_setting(train, "schedule") == "cosine":
        schedule.append(
            {
                "type": "CosineAnnealingLR",
                "T_max": total - warm,
                "eta_min": 0.0,
                "by_epoch": False,
                "begin": warm,
                "end": total,
            }
        )
    else:
        schedule.append(
            {"type": "LinearLR", "start_factor": 1.0, "end_factor": 0.0, "by_epoch": False, "begin": warm, "end": total}
        )
    return schedule

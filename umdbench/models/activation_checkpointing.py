"""Activation checkpointing (``train.activation_checkpointing``): a batch larger than memory
otherwise allows, with the same updates.

A plain step keeps every intermediate tensor of every encoder block from the forward until backward
reads it; at the paper preset these activations, not the weights, are what grows with the batch
(MR-Pretrain's batch of 256 does not fit one GPU). A checkpointed block keeps only its inputs: its
forward runs again, block by block, when backward reaches it (``torch.utils.checkpoint``,
non-reentrant), so at most one block's activations are alive at once, for one more forward of
the blocks per step (1.21x the FLOPs of the paper MR step; its memory: BENCHMARKS.md).

The recomputation is the same computation: the RNG state is stashed before each block and restored
for its replay (dropout and drop path draw the same masks) and autocast is replayed as it was, so
gradients and updates equal those of the plain step (tests/models/test_activation_checkpointing.py). It
therefore stays out of the stage key (:data:`umdbench.plan.stage_plan.NON_NUMERIC_TRAIN`). With the
optimiser stepped in backward (``train.step_in_backward``) a parameter is stepped once its gradient
is complete, which for a block's weights is after the block's replay, so the replay reads this
step's weights (tested too).

Which blocks: the encoder's :meth:`checkpoint_targets` (``coattn``: the ViT blocks, the BERT /
RoBERTa layers and the co-attention layers). A block's forward must be a function of its inputs
and weights only (no running statistics, no cache it writes), since it runs twice.
"""

from __future__ import annotations

import types

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from umdbench.errors import ConfigError

__all__ = [
    "COMPILE_CONFLICT",
    "apply_activation_checkpointing",
    "checkpoint_blocks",
    "checkpoint_targets",
    "is_checkpointed",
]


# torch.compile'd blocks draw dropout and drop-path masks from inductor's generator, and the
# recomputation inside a compiled checkpoint draws them anew: with dropout on, two tiny direct steps
# gave parameters 4e-3 apart (the same bit for bit with dropout off). A setting kept out of the stage
# key must not change numbers, so the two are not combined.
COMPILE_CONFLICT = (
    "train.activation_checkpointing=true cannot be combined with train.compile=true: compiled "
    "blocks draw their dropout masks again when they are recomputed, so the updates would differ "
    "from the plain step's. Set train.compile=false (eager was also the faster on the GPU, "
    "BENCHMARKS.md) or train.activation_checkpointing=false."
)


def _checkpointed_forward(self: nn.Module, *args, **kwargs):
    """Installed as a block's own ``forward``: its class's forward, recomputed in backward. Without
    autograd (evaluation, the EMA teacher) nothing would be replayed, so it runs as is."""
    forward = type(self).forward
    if not torch.is_grad_enabled():
        return forward(self, *args, **kwargs)
    return checkpoint(forward, self, *args, use_reentrant=False, preserve_rng_state=True, **kwargs)


def is_checkpointed(module: nn.Module) -> bool:
    forward = module.__dict__.get("forward")
    return isinstance(forward, types.MethodType) and forward.__func__ is _checkpointed_forward


def checkpoint_blocks(blocks, enabled: bool = True) -> int:
    """Turn checkpointing of each block on (or off). Works on the instance, like
    ``nn.Module.compile``: parameter names and state dicts are unchanged, and a bound method (not a
    closure) so that a ``copy.deepcopy`` of the module calls the copy's own weights. Returns the
    number of blocks changed."""
    changed = 0
    for block in blocks:
        if enabled and not is_checkpointed(block):
            block.forward = types.MethodType(_checkpointed_forward, block)
            changed += 1
        elif not enabled and is_checkpointed(block):
            del block.forward
            changed += 1
    return changed


def checkpoint_targets(strategy) -> list[nn.Module]:
    """The blocks to checkpoint: the strategy's own ``checkpoint_targets()`` if it has one, else
    its encoder's. An encoder without the method has no blocks known to be safe to replay."""
    for owner in (strategy, getattr(strategy, "encoder", None)):
        method = getattr(owner, "checkpoint_targets", None)
        if callable(method):
            return list(method())
    return []


def apply_activation_checkpointing(strategy, train: dict) -> bool:
    """``train.activation_checkpointing`` (default False; True = checkpoint the encoder's blocks),
    applied in place once the strategy is built. Refused with ``train.compile`` (see
    :data:`COMPILE_CONFLICT`). Returns whether anything is checkpointed."""
    mode = train.get("activation_checkpointing", False)
    if mode is False or mode is None:
        return False
    if mode is not True:
        raise ConfigError(
            f"train.activation_checkpointing={mode!r}: use true (recompute the encoder blocks' "
            f"activations in backward: less memory, same updates) or false."
        )
    if train.get("compile", False):
        raise ConfigError(COMPILE_CONFLICT)
    targets = checkpoint_targets(strategy)
    if not targets:
        encoder = getattr(strategy, "encoder", None)
        raise ConfigError(
            f"train.activation_checkpointing=true: the encoder {type(encoder).__name__} names no blocks "
            f"to checkpoint (it has no checkpoint_targets()). Set train.activation_checkpointing=false, "
            f"or give the encoder a checkpoint_targets() method listing blocks whose forward depends "
            f"only on their inputs and weights."
        )
    checkpoint_blocks(targets)
    return True

"""Data-parallel training that computes what one process computes.

* :class:`StageDistributedDataParallel`: the model wrapper of every multi-process stage (CPU/gloo and
  CUDA/nccl). mmengine's own wrapper replaces the model's ``train_step`` with its own, which would
  skip the strategy hooks; this one runs :meth:`StageModel.train_step` with DDP's forward, so the
  hooks run where they run in one process: ``modulate_gradients`` after the gradient all-reduce and
  before the optimiser step, ``after_optimizer_step`` after it.
* :class:`GlobalBatchNorm`: BatchNorm whose batch statistics cover the global batch (torch's
  ``SyncBatchNorm`` refuses CPU tensors); :func:`convert_batch_norm` swaps it in under DDP.
* :class:`GlobalBatchSampler` and :class:`KeyedItems`: every rank and micro-batch reads its chunk of
  the one-process batch, and each sample carries its step and position in that batch, which key its
  random draws (:mod:`umdbench.draws`).
"""

from __future__ import annotations

import itertools

import torch
import torch.distributed as dist
from mmengine.model import MMDistributedDataParallel
from torch import nn
from torch.utils.data import Sampler

from umdbench import draws
from umdbench.run.stage_model import POSITION_KEY, STEP_KEY

__all__ = [
    "GlobalBatchNorm",
    "GlobalBatchSampler",
    "KeyedCollate",
    "KeyedItems",
    "StageDistributedDataParallel",
    "convert_batch_norm",
    "wrapper_cfg",
]


class StageDistributedDataParallel(MMDistributedDataParallel):
    """DDP whose training step is the stage model's own (strategy hooks included)."""

    def train_step(self, data, optim_wrapper):
        return self.module.train_step(data, optim_wrapper, forward=self)


def wrapper_cfg(cuda: bool) -> dict:
    """mmengine ``model_wrapper_cfg`` of a multi-process stage. Parameters a strategy leaves unused
    (MAE never runs the text tower) are allowed; buffers are not broadcast from rank 0, so a rank
    whose state drifted would show in the equivalence tests instead of being papered over."""
    import os

    cfg = {"type": StageDistributedDataParallel, "find_unused_parameters": True, "broadcast_buffers": False}
    cfg["device_ids"] = [int(os.environ.get("LOCAL_RANK", 0))] if cuda else None
    return cfg


# -- batch normalisation over the global batch ------------------------------------------------------
class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm (any dimensionality) whose training statistics are those of the global batch:
    per-channel sums are all-reduced with gradients, so each rank normalises with the statistics,
    and back-propagates through them, as one process on the whole batch would. Two passes (mean,
    then centred squares) keep it as accurate as ``F.batch_norm``. Outside a group of two or more
    ranks, or in eval mode, it is plain BatchNorm."""

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and draws.world()[1] > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x if x.dtype == torch.float64 else x.float()
        count = torch.tensor([x.numel() / x.shape[1]], dtype=xf.dtype, device=x.device)
        total = all_reduce(torch.cat([xf.sum(dims), count]))
        n = total[-1]
        mean = total[:-1] / n
        centred = xf - mean.view(shape)
        var = all_reduce((centred * centred).sum(dims)) / n
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach().to(self.running_mean.dtype), alpha=m)
                unbiased = var.detach() * n / (n - 1).clamp_min(1.0)
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def per_process_randomness(module: nn.Module) -> list[str]:
    """What of a stage still draws from each process's own RNG under DDP, in words: dropout and
    drop-path layers with a nonzero rate. Their masks would have to be drawn per sample from keyed
    generators on the host, which at the paper's sizes costs more than the step; so a multi-process
    stage with them records that its update differs from one process's (statistically the same)."""
    layers = []
    for name, sub in module.named_modules():
        rate = getattr(sub, "p", None) if isinstance(sub, nn.Dropout) else getattr(sub, "drop_prob", None)
        if rate is None:
            rate = getattr(sub, "dropout", None)  # layers that apply F.dropout themselves keep a float rate
        if isinstance(rate, float) and rate > 0:
            layers.append(name)
    if not layers:
        return []
    return [
        f"{len(layers)} dropout / drop-path layers (e.g. {layers[0]}) draw their masks from each process's "
        f"RNG, not per sample, so the update differs from one process's on the same batch"
    ]


def convert_batch_norm(module: nn.Module) -> list[str]:
    """Replace every BatchNorm1d/2d/3d under ``module`` by :class:`GlobalBatchNorm` in place (same
    parameters and running statistics). Returns the names of the layers replaced."""
    replaced = []
    for name, child in list(module.named_modules()):
        for attr, sub in list(child.named_children()):
            if isinstance(sub, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)) and not isinstance(
                sub, GlobalBatchNorm
            ):
                new = GlobalBatchNorm(
                    sub.num_features,
                    sub.eps,
                    sub.momentum,
                    sub.affine,
                    sub.track_running_stats,
                    device=sub.weight.device if sub.affine else None,
                )
                new.load_state_dict(sub.state_dict())
                new.train(sub.training)
                setattr(child, attr, new)
                replaced.append(f"{name}.{attr}" if name else attr)
    return replaced


# -- the keyed training loader ----------------------------------------------------------------------
class GlobalBatchSampler(Sampler):
    """Infinite shuffled sampler of a stage's training set that splits each step's global batch
    the same way at any world size.

    The index stream is the one-process stream (a permutation per pass over the data from one
    generator seeded with the stage's seed). Step ``t`` takes its next ``global_batch`` indices; of
    those, micro-batch ``m`` of rank ``r`` (``W`` ranks, ``A`` micro-batches, ``b = B / (W A)``)
    reads the contiguous chunk ``m W + r``. Each element is ``(index, step, position)``: the
    position of the sample in the step's one-process batch keys its random draws."""

    def __init__(self, dataset, global_batch: int, micro_batches: int = 1, seed: int = 0, shuffle: bool = True):
        from mmengine.dist import get_dist_info

        self.size = len(dataset)
        self.rank, self.world = get_dist_info()
        self.global_batch, self.micro_batches = int(global_batch), int(micro_batches)
        if self.global_batch % (self.world * self.micro_batches):
            raise ValueError(
                f"batch {global_batch} does not split into {self.world} rank(s) x {micro_batches} micro-batch(es)"
            )
        self.local = self.global_batch // (self.world * self.micro_batches)
        self.seed, self.shuffle = int(seed), bool(shuffle)

    def _indices(self):
        g = torch.Generator().manual_seed(self.seed)
        while True:
            yield from (torch.randperm(self.size, generator=g).tolist() if self.shuffle else range(self.size))

    def __iter__(self):
        stream = self._indices()
        for step in itertools.count():
            batch = list(itertools.islice(stream, self.global_batch))
            for m in range(self.micro_batches):
                start = (m * self.world + self.rank) * self.local
                for pos in range(start, start + self.local):
                    yield batch[pos], step, pos

    def __len__(self) -> int:
        return self.size

    def set_epoch(self, epoch: int) -> None:  # the stream is one infinite sequence
        pass


class KeyedItems(torch.utils.data.Dataset):
    """A training set read through :class:`GlobalBatchSampler`: loads item ``index`` inside its
    draw context (:func:`umdbench.draws.item_rng`) and hands on its step and position."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed = dataset, int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index, step, pos = key
        with draws.item_context(self.seed, step, pos):
            return self.dataset[index], step, pos


class KeyedCollate:
    """The task type's collate, plus the step and positions of the batch's samples."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, items):
        batch = self.collate([item for item, _, _ in items])
        batch[STEP_KEY] = torch.tensor([step for _, step, _ in items], dtype=torch.long)
        batch[POSITION_KEY] = torch.tensor([pos for _, _, pos in items], dtype=torch.long)
        return batch


def init_process_group() -> None:
    """The process group of a torchrun rank, before mmengine's Runner (which then skips its own):
    gloo on CPU (mmengine insists on CUDA), nccl on the rank's GPU."""
    import os

    if dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")

"""Task heads, losses and predictions shared by the supervised tuning strategies.

One place for what every supervised tuning strategy (``direct``, ``linear``, ``gmcoord``) does
with a downstream task, so that each strategy file only says what is special about it:

* :func:`build_task_head` -- the task head ``H`` on the concatenated pooled features
  ``[text; image]`` (``2D``): ``Linear(2D,2D) -> LayerNorm -> GELU -> Linear(2D,C)`` for vqa and
  classification, ``Linear(2D,1)`` (a pair score) for retrieval.
* :func:`encode_task` -- run the encoder on a batch and return the per-modality features
  (for retrieval training: the positive caption and the K negatives of every image, positive first).
* :func:`head_logits` / :func:`task_logits` -- apply the head.
* :func:`task_loss` -- ``"ce"`` (default) or ``"bce"`` (upstream M3AE VQA loss) with label ``-1``
  ignored; retrieval is always cross-entropy over the ``1+K`` pair scores with the positive at 0.
* :func:`task_predict` -- ``{"logits": [B,C]}`` or ``{"score": [B]}`` for the metrics.

Feature order: ``EncoderOutput.pooled`` is ``cat(text_pooled, image_pooled)``, so the first ``D``
input columns of every head layer that reads the features belong to text, the last ``D`` to image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from umdbench import draws
from umdbench.api import TaskInfo

LOSSES = ("ce", "bce")
# The paper fine-tunes "with the cross-entropy loss" (Sec. 4.3.1, GM-Coord Sec. 3.3.2); upstream
# M3AE/UMD code uses BCE-with-logits on one-hot targets x number of answers for VQA.
DEFAULT_LOSS = "ce"
POOLINGS = ("pooler", "mean")
# "pooler": the encoder's pooled CLS/<s> features (upstream, and CONTRACT's EncoderOutput.pooled).
# "mean":   masked average of the fused token features (what the paper gives GM-Coord's head,
#           Sec. 3.1.2: averaged Z^I and Z^T, concatenated).
DEFAULT_POOLING = "pooler"
POOLING_WORDS = {
    "pooler": "the poolers' outputs (Tanh on the first token of each stream)",
    "mean": "the average embeddings of Z^I and Z^T",
}


# --------------------------------------------------------------------------------------------
# Heads
# --------------------------------------------------------------------------------------------
def init_head_weights(module: nn.Module) -> None:
    """Upstream init for new modules: Linear/Embedding N(0, 0.02), zero bias, LayerNorm 1/0."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def build_task_head(task: TaskInfo, hidden: int) -> nn.Sequential:
    """The task head on the ``2*hidden`` concatenated ``[text; image]`` features.

    vqa / classification: ``Linear(2D,2D) -> LayerNorm -> GELU -> Linear(2D,C)`` (C = num_classes).
    retrieval: ``Linear(2D,1)`` (one score per image-text pair).
    The last module is always the Linear that produces the outputs (GM-Coord's upstream variant
    splits it into text/image halves).
    """
    width = 2 * hidden
    if task.task in ("vqa", "classification"):
        if task.num_classes <= 0:
            raise ValueError(
                f"a {task.task} head needs TaskInfo.num_classes > 0 (answer vocabulary / class count), "
                f"got {task.num_classes}"
            )
        head = nn.Sequential(
            nn.Linear(width, width), nn.LayerNorm(width), nn.GELU(), nn.Linear(width, task.num_classes)
        )
    elif task.task == "retrieval":
        head = nn.Sequential(nn.Linear(width, 1))
    else:
        raise ValueError(f"no built-in task head for task {task.task!r}; its task type builds its own")
    init_head_weights(head)
    return head


def last_linear(head: nn.Sequential) -> nn.Linear:
    layer = head[-1]
    if not isinstance(layer, nn.Linear):
        raise TypeError(f"the task head's last module is {type(layer).__name__}, expected nn.Linear")
    return layer


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------
@dataclass
class TaskForward:
    """Per-modality features of one batch, ready for the head.

    ``text_feat``/``image_feat`` are ``[N, D]``; ``N = B * group``. For retrieval training
    ``group = 1 + K`` (the positive caption first, then the K negatives of the same image);
    otherwise ``group = 1``. ``target`` is the label ``[B]`` (vqa/classification), zeros ``[B]``
    for retrieval training (the positive is at index 0), or None.
    """

    text_feat: torch.Tensor
    image_feat: torch.Tensor
    target: torch.Tensor | None
    group: int = 1


def pool_features(
    out: Any, text_mask: torch.Tensor, pooling: str = DEFAULT_POOLING
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(text [N,D], image [N,D])`` from an ``EncoderOutput``."""
    if pooling == "pooler":
        return out.text_pooled, out.image_pooled
    if pooling == "mean":
        mask = text_mask.to(out.text_feats.dtype).unsqueeze(-1)
        text = (out.text_feats * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        image = out.image_feats.mean(1)
        return text, image
    raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")


def encode_task(
    encoder: nn.Module,
    batch: dict[str, torch.Tensor],
    task: TaskInfo,
    pooling: str = DEFAULT_POOLING,
    with_negatives: bool = True,
) -> TaskForward:
    """Run the encoder on a batch.

    Retrieval batches that carry ``neg_text_ids``/``neg_text_mask`` [B,K,L] (and
    ``with_negatives``) are expanded to ``B*(1+K)`` image-text pairs, row ``b*(1+K)`` being the
    positive of image ``b``.
    """
    image, ids, mask = batch["image"], batch["text_ids"], batch["text_mask"]
    group = 1
    target = None
    if task.task == "retrieval":
        if with_negatives and "neg_text_ids" in batch:
            neg_ids, neg_mask = batch["neg_text_ids"], batch["neg_text_mask"]
            if neg_ids.dim() != 3:
                raise ValueError(f"neg_text_ids must be [B,K,L], got shape {tuple(neg_ids.shape)}")
            group = 1 + neg_ids.shape[1]
            ids = torch.cat([ids.unsqueeze(1), neg_ids], dim=1).flatten(0, 1)
            mask = torch.cat([mask.unsqueeze(1), neg_mask], dim=1).flatten(0, 1)
            image = image.repeat_interleave(group, dim=0)
            target = torch.zeros(batch["image"].shape[0], dtype=torch.long, device=image.device)
    elif "label" in batch:
        target = batch["label"].long()
    # the poolers read first tokens only: an encoder that takes ``pooled_only`` (MultimodalEncoder,
    # whose own switch decides) may skip the rest of its last fusion layer
    trim = pooling == "pooler" and hasattr(encoder, "trim_pooled_only")
    out = encoder(image=image, text_ids=ids, text_mask=mask, **({"pooled_only": True} if trim else {}))
    text_feat, image_feat = pool_features(out, mask, pooling)
    return TaskForward(text_feat=text_feat, image_feat=image_feat, target=target, group=group)


def head_logits(head: nn.Module, text_feat: torch.Tensor, image_feat: torch.Tensor) -> torch.Tensor:
    """``head(cat(text, image))``: ``[N, C]`` (or ``[N, 1]`` for a retrieval head)."""
    return head(torch.cat([text_feat, image_feat], dim=-1))


def group_scores(logits: torch.Tensor, task: TaskInfo, group: int) -> torch.Tensor:
    """Retrieval: pair scores ``[N,1]`` -> ``[B, group]`` (or ``[N]`` when group == 1)."""
    if task.task != "retrieval":
        return logits
    scores = logits.squeeze(-1)
    return scores.view(-1, group) if group > 1 else scores


def task_logits(head: nn.Module, fwd: TaskForward, task: TaskInfo) -> torch.Tensor:
    """vqa/classification ``[B,C]``; retrieval training ``[B,1+K]``; retrieval pairs ``[B]``."""
    return group_scores(head_logits(head, fwd.text_feat, fwd.image_feat), task, fwd.group)


# --------------------------------------------------------------------------------------------
# Losses and predictions
# --------------------------------------------------------------------------------------------
def task_loss(
    task: TaskInfo, logits: torch.Tensor, target: torch.Tensor | None, loss: str = DEFAULT_LOSS
) -> torch.Tensor:
    """The supervised loss.

    vqa / classification: rows with ``target == -1`` (answer outside a train-only vocabulary) are
    ignored; ``"ce"`` = mean cross-entropy over the remaining rows; ``"bce"`` = upstream M3AE:
    ``BCEWithLogits(logits, one_hot(target))`` averaged over rows and classes, times ``C``. A batch
    with no usable row gives a zero loss that still depends on the logits (so backward works).
    retrieval: cross-entropy over the ``[B, 1+K]`` pair scores with the positive at index 0
    (``loss`` is ignored).
    """
    if target is None:
        need = "neg_text_ids/neg_text_mask [B,K,L] (negative captions)" if task.task == "retrieval" else "label [B]"
        raise ValueError(f"task {task.task!r}: training needs {need} in the batch")
    if task.task == "retrieval":
        if logits.dim() != 2 or logits.shape[1] < 2:
            raise ValueError(
                "retrieval training needs neg_text_ids/neg_text_mask [B,K,L] in the batch "
                f"(scores of shape [B,1+K]); got scores of shape {tuple(logits.shape)}"
            )
        return F.cross_entropy(logits, torch.zeros_like(target))
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    valid = target >= 0
    count = valid.sum()  # the mean is over the usable rows of the global batch (umdbench.draws)
    if not bool(valid.any()):
        return draws.global_mean(logits.sum() * 0.0, count)
    logits, target = logits[valid], target[valid]
    if loss == "ce":
        return draws.global_mean(F.cross_entropy(logits, target, reduction="sum"), count)
    onehot = F.one_hot(target, logits.shape[1]).to(logits.dtype)
    per_row = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none").sum(dim=1)
    return draws.global_mean(per_row.sum(), count)


def task_predict(task: TaskInfo, logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """Metric inputs: ``{"logits": [B,C]}`` (vqa/classification) or ``{"score": [B]}`` (retrieval)."""
    if task.task == "retrieval":
        return {"score": logits.reshape(-1)}
    return {"logits": logits}

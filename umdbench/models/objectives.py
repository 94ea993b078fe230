"""Loss functions shared by the pre-training and tuning strategies."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def normalise_patches(target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-patch normalisation of pixel targets (MAE ``norm_pix_loss``; unbiased variance)."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return (target - mean) / (var + eps) ** 0.5


def mim_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool = False) -> torch.Tensor:
    """Eq. 1: squared error averaged over the p*p*3 values of a patch, then over masked patches.

    ``pred``/``target`` [B, N, p*p*3], ``mask`` [B, N] with 1 = masked (the patches that count).
    """
    if norm_pix:
        target = normalise_patches(target)
    per_patch = ((pred - target) ** 2).mean(dim=-1)
    mask = mask.to(per_patch.dtype)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)


def mlm_loss(head, feats: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 2: cross-entropy on the masked positions only (``labels != -100``).

    The head runs only on those positions. Returns ``(loss, accuracy)``; with no masked token in
    the batch the loss is a zero that still depends on ``feats`` (keeps the graph connected).
    """
    sel = labels != -100
    if not bool(sel.any()):
        zero = feats.sum() * 0.0
        return zero, zero.detach()
    logits = head(feats[sel])
    target = labels[sel]
    loss = F.cross_entropy(logits.float(), target)
    acc = (logits.argmax(-1) == target).float().mean()
    return loss, acc.detach()


def itm_sources(batch_size: int, device=None, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """ITM pairing of a batch: a random half of the texts get their neighbour's image.

    Returns ``(src, labels)``: text ``i`` is paired with image ``src[i]`` (``i`` or ``i - 1``,
    rolled), label 1 = matched pair, 0 = mismatched.
    """
    src = torch.arange(batch_size, device=device)
    labels = torch.ones(batch_size, dtype=torch.long, device=device)
    if batch_size < 2:
        return src, labels
    neg = torch.randperm(batch_size, generator=generator)[: batch_size // 2].to(src.device)
    src[neg] = (neg - 1) % batch_size
    labels[neg] = 0
    return src, labels


def itm_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 6: binary cross-entropy (2-way softmax) of the ITM head. Returns ``(loss, accuracy)``."""
    loss = F.cross_entropy(logits.float(), labels)
    acc = (logits.argmax(-1) == labels).float().mean()
    return loss, acc.detach()


def feature_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 4: squared error averaged over feature dims, then over tokens (weighted by ``weight``
    [B, L] when given, e.g. the real-token mask)."""
    per_token = ((pred - target) ** 2).mean(dim=-1)
    if weight is None:
        return per_token.mean()
    weight = weight.to(per_token.dtype)
    return (per_token * weight).sum() / weight.sum().clamp_min(1.0)


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor):
    """Symmetric InfoNCE on L2-normalised embeddings; ``logit_scale`` is the (already clamped)
    log inverse temperature. Returns ``(loss, image->text accuracy)``."""
    image_emb = F.normalize(image_emb.float(), dim=-1)
    text_emb = F.normalize(text_emb.float(), dim=-1)
    logits = logit_scale.exp() * image_emb @ text_emb.t()
    target = torch.arange(logits.shape[0], device=logits.device)
    loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
    acc = (logits.argmax(-1) == target).float().mean()
    return loss, acc.detach()

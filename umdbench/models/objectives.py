"""Loss functions shared by the pre-training and tuning strategies."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from umdbench import draws


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
    return draws.global_mean((per_patch * mask).sum(), mask.sum())


def mlm_loss(head, feats: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 2: cross-entropy on the masked positions only (``labels != -100``).

    The head runs only on those positions. Returns ``(loss, accuracy)``; with no masked token in
    the batch the loss is a zero that still depends on ``feats`` (keeps the graph connected).
    The mean is over the masked tokens of the global batch (:func:`umdbench.draws.global_mean`):
    data-parallel ranks hold different numbers of them.
    """
    sel = labels != -100
    count = sel.sum()
    if not bool(sel.any()):
        zero = feats.sum() * 0.0
        draws.global_mean(zero, count)  # a collective call every rank makes
        return zero, zero.detach()
    logits = head(feats[sel])
    target = labels[sel]
    loss = draws.global_mean(F.cross_entropy(logits.float(), target, reduction="sum"), count)
    acc = (logits.argmax(-1) == target).float().mean()
    return loss, acc.detach()


def same_rows(x: torch.Tensor) -> torch.Tensor:
    """[B, B] bool: ``out[i, j]`` when sample ``i`` and sample ``j`` of ``x`` ([B, ...]) are
    identical, element for element (the diagonal is always true).

    Statistics of a sample of each row (16 contiguous blocks of 256 values, spread over the row)
    pick the candidate pairs; only those are compared in full, so a batch without duplicates costs
    next to nothing.
    """
    b = x.shape[0]
    flat = x.detach().reshape(b, -1)
    n = flat.shape[1]
    if n > 16 * 256:
        starts = torch.linspace(0, n - 256, 16).long().tolist()
        stats = torch.cat([flat[:, s : s + 256] for s in starts], dim=1)
    else:
        stats = flat
    stats = stats if stats.is_floating_point() else stats.float()
    # identical rows give identical statistics; close ones are only candidates, checked in full below
    sums = torch.stack([stats.sum(1, dtype=torch.float32), torch.linalg.vector_norm(stats, dim=1).float()], dim=1)
    close = torch.isclose(sums[:, None, :], sums[None, :, :], rtol=1e-5, atol=1e-5).all(-1)
    out = torch.eye(b, dtype=torch.bool, device=x.device)
    for i, j in close.nonzero().tolist():
        if i < j and torch.equal(flat[i], flat[j]):
            out[i, j] = out[j, i] = True
    return out


def itm_sources(
    batch_size: int,
    device=None,
    generator: torch.Generator | None = None,
    *,
    image: torch.Tensor | None = None,
    text_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ITM pairing of a batch: a random half of the texts get another sample's image.

    Returns ``(src, labels)``: text ``i`` is paired with image ``src[i]``, label 1 = matched pair,
    0 = mismatched. A mismatched text takes the image of the nearest preceding sample (batch order,
    rolled) whose pair with it is not a true pair of the batch.

    With ``image`` ([B, ...]) and ``text_ids`` ([B, L]) given, "true pair" is checked on content:
    image ``j`` with text ``i`` matches when some sample ``k`` of the batch has image ``k`` identical
    to image ``j`` (every pixel) and text ``k`` identical to text ``i`` (every token id). So a batch
    holding the same image twice (several questions about one image), or the same caption twice,
    never yields a "mismatched" pair that is in fact a real pair. Texts without any valid partner
    (a batch of one image only) stay matched; the negatives are drawn among the others, half the
    batch where possible. Without ``image``/``text_ids`` every other sample counts as a different
    image (the batch is assumed duplicate-free).
    """
    src = torch.arange(batch_size, device=device)
    labels = torch.ones(batch_size, dtype=torch.long, device=device)
    if batch_size < 2:
        return src, labels
    if image is not None or text_ids is not None:
        same_img = (
            same_rows(image).to(device) if image is not None else torch.eye(batch_size, dtype=torch.bool, device=device)
        )
        same_txt = (
            same_rows(text_ids).to(device)
            if text_ids is not None
            else torch.eye(batch_size, dtype=torch.bool, device=device)
        )
        # matched[i, j]: text i with image j is a real pair (some k has img_k == img_j, txt_k == txt_i)
        matched = (same_txt.float() @ same_img.float().t()) > 0
    else:
        matched = torch.eye(batch_size, dtype=torch.bool, device=device)
    # candidate images for text i in preference order: i-1, i-2, ... (rolled)
    offsets = torch.arange(1, batch_size, device=device)
    order = (src[:, None] - offsets[None, :]) % batch_size  # [B, B-1]
    valid = ~matched.gather(1, order)
    has_partner = valid.any(1)
    candidates = has_partner.nonzero().flatten().cpu()
    if candidates.numel() == 0:
        return src, labels
    pick = torch.randperm(candidates.numel(), generator=generator)[: min(batch_size // 2, candidates.numel())]
    neg = candidates[pick].to(src.device)
    first = valid[neg].float().argmax(1)  # first valid offset of each negative text
    src[neg] = order[neg, first]
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
        return draws.global_mean(per_token.sum(), per_token.numel())
    weight = weight.to(per_token.dtype)
    return draws.global_mean((per_token * weight).sum(), weight.sum())


def global_itm_sources(image: torch.Tensor, text_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ITM pairing drawn over the step's global batch, as one process on the whole batch draws it.

    The images and texts of every rank are gathered (no gradient: they are inputs) and put in the
    order of the one-process batch; :func:`itm_sources` pairs them with a generator drawn once per
    step (the same on every rank). Returns ``(candidates, src, labels)``: local text ``i`` is
    paired with image ``candidates[src[i]]``, label 1 = matched. In one process ``candidates`` is
    the batch's own images."""
    n = image.shape[0]
    every_image, every_text = draws.gather_nograd(image), draws.gather_nograd(text_ids)
    positions, mine = draws.global_positions(n, device=image.device)
    order = positions.argsort()
    where = order.argsort()[mine]  # local sample i sits at where[i] of the ordered batch
    candidates = every_image[order]
    src, labels = itm_sources(
        candidates.shape[0], image.device, draws.step_generator("itm"), image=candidates, text_ids=every_text[order]
    )
    return candidates, src[where], labels[where]


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor):
    """Symmetric InfoNCE on L2-normalised embeddings; ``logit_scale`` is the log inverse
    temperature (used as given: bounds belong to the optimiser step, see the CLIP strategy).
    Returns ``(loss, image->text accuracy)``."""
    image_emb = F.normalize(image_emb.float(), dim=-1)
    text_emb = F.normalize(text_emb.float(), dim=-1)
    logits = logit_scale.exp() * image_emb @ text_emb.t()
    target = torch.arange(logits.shape[0], device=logits.device)
    loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
    acc = (logits.argmax(-1) == target).float().mean()
    return loss, acc.detach()

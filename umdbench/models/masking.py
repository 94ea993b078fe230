"""Image patch masking (MAE-style) and text token masking (BERT-style MLM)."""

from __future__ import annotations

import torch

from umdbench import draws


def num_visible(num_patches: int, ratio: float) -> int:
    """Patches kept at mask ``ratio``: ``int(N * (1 - ratio))`` (the MAE / M3AE rule)."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"image mask ratio must be in [0, 1), got {ratio}")
    return int(num_patches * (1.0 - ratio))


def random_masking(x: torch.Tensor, ratio: float, noise: torch.Tensor | None = None):
    """Per-sample random shuffle keeping ``int(N * (1 - ratio))`` tokens of ``x`` [B, N, D].

    Returns ``(x_visible [B, K, D], mask [B, N] (1 = dropped), ids_restore [B, N], ids_keep [B, K])``.
    ``noise`` [B, N] fixes the shuffle (lowest noise is kept); when None it is drawn per sample
    (:func:`umdbench.draws.rand`, keyed by the sample's step and position in a training step).
    """
    B, N, D = x.shape
    keep = num_visible(N, ratio)
    if noise is None:
        noise = draws.rand(B, N, stream="image_mask", device=x.device)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :keep]
    x_vis = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, D))
    mask = torch.ones(B, N, device=x.device, dtype=x.dtype)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return x_vis, mask, ids_restore, ids_keep


def ids_keep_from_restore(ids_restore: torch.Tensor, num_keep: int) -> torch.Tensor:
    """Recover the kept patch indices (in encoder order) from ``ids_restore``."""
    return torch.argsort(ids_restore, dim=1)[:, :num_keep]


def mask_tokens(
    text_ids: torch.Tensor,
    text_mask: torch.Tensor,
    special_ids: dict,
    prob: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT-style MLM masking.

    Each real (``text_mask == 1``), non-special token is selected with probability ``prob``;
    selected tokens become ``[MASK]`` 80 % of the time, a random non-special token 10 %, and stay
    unchanged 10 %. Returns ``(masked_ids, labels)`` with ``labels = -100`` where not selected.
    ``special_ids`` is the strategy config's ``special_ids`` dict (keys mask, pad, cls, sep,
    vocab_size, all_special). Without ``generator`` each sample's draws are its own
    (:mod:`umdbench.draws`), so a sample is masked the same way whatever batch it is in.
    """
    device = text_ids.device
    specials = torch.tensor(sorted(set(int(i) for i in special_ids["all_special"])), device=device)
    allowed = _allowed_random_ids(int(special_ids["vocab_size"]), specials)
    eligible = text_mask.bool() & ~torch.isin(text_ids, specials)
    if generator is None:
        b, length = text_ids.shape
        rand = draws.rand(b, length, stream="text_mask", device=device)
        action = draws.rand(b, length, stream="text_mask_action", device=device)
        replacement = draws.randint(0, allowed.numel(), b, length, stream="text_mask_random", device=device)
    else:
        rand = torch.rand(text_ids.shape, generator=generator, device=device)
        action = torch.rand(text_ids.shape, generator=generator, device=device)
        replacement = torch.randint(0, allowed.numel(), text_ids.shape, generator=generator, device=device)
    selected = eligible & (rand < prob)
    labels = torch.where(selected, text_ids, torch.full_like(text_ids, -100))
    to_mask = selected & (action < 0.8)
    to_random = selected & (action >= 0.8) & (action < 0.9)
    masked = text_ids.clone()
    masked[to_mask] = int(special_ids["mask"])
    masked = torch.where(to_random, allowed.to(device)[replacement], masked)
    return masked, labels


_ALLOWED_CACHE: dict[tuple, torch.Tensor] = {}


def _allowed_random_ids(vocab_size: int, specials: torch.Tensor) -> torch.Tensor:
    key = (vocab_size, tuple(specials.tolist()))
    if key not in _ALLOWED_CACHE:
        ids = torch.arange(vocab_size)
        _ALLOWED_CACHE[key] = ids[~torch.isin(ids, specials.cpu())]
    return _ALLOWED_CACHE[key]

"""Vision tower: a timm VisionTransformer (patch 16) with a MAE-style masked forward."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from timm.models.vision_transformer import VisionTransformer

# timm is imported where a tower is built or resampled, not at module import: importing it pulls
# torchvision and torch._dynamo (~2 s), which planning (`--dry-run`, sweeps) never needs.

from .masking import random_masking


def build_vision_tower(vcfg: dict, image_size: int, patch_size: int) -> VisionTransformer:
    """A timm ViT with no classifier; key names are timm's, so timm checkpoints load as they are."""
    from timm.models.vision_transformer import VisionTransformer

    depth = int(vcfg["depth"])
    if vcfg.get("num_blocks_upstream_11", False):
        depth -= 1  # the released code builds layers - 1 blocks (the last CLIP block is dropped)
    style = vcfg.get("style", "clip")
    if style == "clip":
        extra = dict(pre_norm=True, norm_layer=partial(nn.LayerNorm, eps=1e-5), act_layer="quick_gelu")
    elif style == "vit":
        extra = dict(pre_norm=False, norm_layer=partial(nn.LayerNorm, eps=1e-6), act_layer="gelu")
    else:
        raise ValueError(f"vision.style must be 'clip' or 'vit', got {style!r}")
    vit = VisionTransformer(
        img_size=image_size,
        patch_size=patch_size,
        embed_dim=int(vcfg["embed_dim"]),
        depth=depth,
        num_heads=int(vcfg["num_heads"]),
        mlp_ratio=float(vcfg.get("mlp_ratio", 4.0)),
        qkv_bias=True,
        class_token=True,
        global_pool="token",
        num_classes=0,
        drop_path_rate=float(vcfg.get("drop_path", 0.0)),
        **extra,
    )
    # Images of another size are accepted; the position embedding is resampled on the fly.
    vit.patch_embed.strict_img_size = False
    return vit


def grid_of(vit: VisionTransformer) -> tuple[int, int]:
    return tuple(vit.patch_embed.grid_size)


def position_embedding(vit: VisionTransformer, grid: tuple[int, int]) -> torch.Tensor:
    """``vit.pos_embed`` [1, 1+N, D] for a ``grid`` of patches (bicubic resample if it differs)."""
    if tuple(grid) == grid_of(vit):
        return vit.pos_embed
    from timm.layers import resample_abs_pos_embed

    return resample_abs_pos_embed(vit.pos_embed, new_size=list(grid), old_size=list(grid_of(vit)), num_prefix_tokens=1)


MASKED_PATHS = ("drop", "mask_tokens")


def vision_forward(
    vit: VisionTransformer,
    image: torch.Tensor,
    mask_ratio: float = 0.0,
    noise: torch.Tensor | None = None,
    masked_path: str = "drop",
):
    """Encode ``image``; with ``mask_ratio > 0`` only the visible patches go through the blocks.

    Returns ``(tokens [B, 1+K, D], mask [B, N] | None, ids_restore [B, N] | None)``.

    ``masked_path="mask_tokens"`` is the slow reference used by the benchmarks (SimMIM/BEiT
    style): every patch goes through the blocks, dropped ones as a zero token plus its position,
    and the visible outputs are gathered afterwards, so shapes match the default ``"drop"`` path.
    """
    if masked_path not in MASKED_PATHS:
        raise ValueError(f"masked_path must be one of {MASKED_PATHS}, got {masked_path!r}")
    p = vit.patch_embed.patch_size
    grid = (image.shape[-2] // p[0], image.shape[-1] // p[1])
    x = vit.patch_embed(image)  # [B, N, D]
    pos = position_embedding(vit, grid)
    x = x + pos[:, 1:]
    mask = ids_restore = ids_keep = None
    if mask_ratio > 0:
        if masked_path == "drop":
            x, mask, ids_restore, _ = random_masking(x, mask_ratio, noise)
        else:
            _, mask, ids_restore, ids_keep = random_masking(x, mask_ratio, noise)
            x = torch.where(mask.bool().unsqueeze(-1), pos[:, 1:].expand_as(x), x)
    cls = (vit.cls_token + pos[:, :1]).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1)
    x = vit.pos_drop(x)
    x = vit.norm_pre(x)
    x = vit.blocks(x)
    x = vit.norm(x)
    if ids_keep is not None:
        vis = torch.gather(x[:, 1:], 1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        x = torch.cat([x[:, :1], vis], dim=1)
    return x, mask, ids_restore

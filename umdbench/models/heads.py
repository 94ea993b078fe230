"""Strategy heads: MIM decoder D^I, MLM head D^T, ITM head, feature projections h^I / h^T."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .encoder import _init_new_module


def sincos_pos_embed_2d(dim: int, grid: tuple[int, int], cls_token: bool = True) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding [(1+)h*w, dim] (half the dims per axis)."""
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs dim % 4 == 0, got {dim}")
    h, w = grid
    gy, gx = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")

    def one_axis(pos: np.ndarray, d: int) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([one_axis(gy, dim // 2), one_axis(gx, dim // 2)], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros((1, dim)), emb], axis=0)
    return torch.from_numpy(emb).float()


class MIMDecoder(nn.Module):
    """MAE-style decoder: embed -> append mask tokens -> un-shuffle -> + fixed sin-cos position
    -> transformer blocks -> LayerNorm -> per-patch pixels (p*p*3). CLS is dropped at the end."""

    def __init__(
        self,
        in_dim: int,
        dim: int,
        depth: int,
        num_heads: int,
        patch_size: int,
        grid: tuple[int, int],
        mlp_ratio: float = 4.0,
    ):
        super().__init__()
        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        from timm.models.vision_transformer import Block  # lazily: see umdbench/models/vision.py

        self.blocks = nn.ModuleList([Block(dim, num_heads, mlp_ratio, qkv_bias=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.pred = nn.Linear(dim, patch_size * patch_size * 3)
        self.dim = dim
        self.grid = tuple(grid)
        # fixed, so not saved (keeps the head resolution-independent in checkpoints)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(dim, self.grid)[None], persistent=False)
        _init_new_module(self)
        nn.init.normal_(self.mask_token, std=0.02)

    def _pos(self, n: int) -> torch.Tensor:
        if n == self.pos_embed.shape[1] - 1:
            return self.pos_embed
        side = int(round(n**0.5))
        return sincos_pos_embed_2d(self.dim, (side, n // side))[None].to(self.pos_embed)

    def unshuffle(self, x: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """``x`` [B, 1+K, dim] (embedded) -> [B, 1+N, dim] with mask tokens at dropped positions."""
        B, N = ids_restore.shape
        k = x.shape[1] - 1
        fill = self.mask_token.expand(B, N - k, -1).to(x.dtype)
        seq = torch.cat([x[:, 1:], fill], dim=1)
        seq = torch.gather(seq, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        return torch.cat([x[:, :1], seq], dim=1)

    def forward(self, feats: torch.Tensor, ids_restore: torch.Tensor | None) -> torch.Tensor:
        """``feats`` [B, 1+K, in_dim] (CLS first) -> predicted patches [B, N, p*p*3]."""
        x = self.embed(feats)
        if ids_restore is not None:
            x = self.unshuffle(x, ids_restore)
        x = x + self._pos(x.shape[1] - 1)
        for blk in self.blocks:
            x = blk(x)
        return self.pred(self.norm(x))[:, 1:]


class MLMHead(nn.Module):
    """Transform (dense, GELU, LayerNorm) then an untied vocabulary projection with its own bias."""

    def __init__(self, dim: int, vocab_size: int):
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=1e-12)
        self.decoder = nn.Linear(dim, vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        _init_new_module(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(F.gelu(self.dense(x)))) + self.bias


def itm_head(dim: int) -> nn.Linear:
    """ITM head on the pooled concat [B, 2D] -> 2 logits (0 = mismatched, 1 = matched)."""
    head = nn.Linear(2 * dim, 2)
    _init_new_module(head)
    return head


def projection(in_dim: int, out_dim: int) -> nn.Linear:
    head = nn.Linear(in_dim, out_dim)
    _init_new_module(head)
    return head

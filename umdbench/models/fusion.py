"""Co-attention fusion (METER / M3AE style): two stacks of [self-attn, cross-attn, FFN], post-LN."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def math_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0
) -> torch.Tensor:
    """Plain matmul + softmax attention (the eager reference of ``scaled_dot_product_attention``;
    ``attn_mask`` is boolean, True = attend)."""
    scores = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, torch.finfo(scores.dtype).min)
    probs = scores.softmax(dim=-1)
    if dropout_p > 0.0:
        probs = F.dropout(probs, dropout_p)
    return probs @ v


def dropout_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None, dropout_p: float
) -> torch.Tensor:
    """Attention with dropout on the probabilities, in the inputs' dtype: the fast path for
    training on the CPU. torch 2.14 has no fused CPU kernel with dropout (its flash kernel refuses
    ``dropout_p > 0``), so ``scaled_dot_product_attention`` falls back to its math kernel, which
    upcasts bf16 inputs to fp32: twice the time and memory of this bf16 path under autocast
    (measured at the paper geometry). Same mathematics; the query is scaled before the product."""
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, torch.finfo(scores.dtype).min)
    return F.dropout(scores.softmax(dim=-1), dropout_p) @ v


class Attention(nn.Module):
    """Multi-head attention on ``scaled_dot_product_attention`` with a key padding mask,
    followed (BERT style) by an output projection, dropout, residual and LayerNorm.

    ``attn_impl`` ("sdpa", default, or "math") selects the kernel; "math" is the plain eager
    reference used by the benchmarks (same weights, same result up to rounding)."""

    def __init__(self, dim: int, num_heads: int, dropout: float):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"fusion width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=1e-12)
        self.dropout = dropout
        self.attn_impl = "sdpa"

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        return x.view(B, L, self.num_heads, D // self.num_heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        q, k, v = self._split(self.query(x)), self._split(self.key(context)), self._split(self.value(context))
        attn_mask = None
        if key_mask is not None:
            attn_mask = key_mask.bool()[:, None, None, :]  # True = attend
        p = self.dropout if self.training else 0.0
        if self.attn_impl == "math":
            h = math_attention(q, k, v, attn_mask, p)
        elif p > 0.0 and q.device.type == "cpu":
            h = dropout_attention(q, k, v, attn_mask, p)  # no fused CPU kernel has dropout
        else:
            # flash / memory-efficient kernels on CUDA (dropout included), the fused CPU kernel
            # (flash attention) without dropout
            h = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
        h = h.transpose(1, 2).reshape(x.shape)
        h = F.dropout(self.out(h), p, self.training)
        return self.norm(x + h)


class CoAttentionLayer(nn.Module):
    """One layer of one stream: self-attention, cross-attention to the other stream, FFN."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.self_attn = Attention(dim, num_heads, dropout)
        self.cross_attn = Attention(dim, num_heads, dropout)
        hidden = int(dim * mlp_ratio)
        self.ffn_in = nn.Linear(dim, hidden)
        self.ffn_out = nn.Linear(hidden, dim)
        self.ffn_norm = nn.LayerNorm(dim, eps=1e-12)
        self.dropout = dropout

    def forward(self, x, x_mask, y, y_mask, query_len: int | None = None):
        """``query_len`` k: outputs for the first k positions only (keys and values still cover
        the whole stream), for a last layer whose other positions nobody reads."""
        q = x if query_len is None else x[:, :query_len]
        x = self.self_attn(q, x, x_mask)
        x = self.cross_attn(x, y, y_mask)
        h = self.ffn_out(F.gelu(self.ffn_in(x)))
        return self.ffn_norm(x + F.dropout(h, self.dropout, self.training))


class Pooler(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dense = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(x[:, 0]))


class Fusion(nn.Module):
    """Projects each uni-modal stream to the fusion width and runs the two co-attention stacks
    in parallel (both streams of layer i read the outputs of layer i-1)."""

    def __init__(self, text_dim: int, image_dim: int, fcfg: dict):
        super().__init__()
        dim = int(fcfg["hidden_size"])
        heads, ratio, drop = int(fcfg["num_heads"]), float(fcfg.get("mlp_ratio", 4.0)), float(fcfg.get("dropout", 0.1))
        self.hidden_size = dim
        self.text_proj = nn.Linear(text_dim, dim)
        self.image_proj = nn.Linear(image_dim, dim)
        n = int(fcfg["num_layers"])
        self.text_layers = nn.ModuleList([CoAttentionLayer(dim, heads, ratio, drop) for _ in range(n)])
        self.image_layers = nn.ModuleList([CoAttentionLayer(dim, heads, ratio, drop) for _ in range(n)])
        self.text_pooler = Pooler(dim)
        self.image_pooler = Pooler(dim)

    def forward(
        self,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        image: torch.Tensor,
        capture_layer: int | None = None,
        first_tokens_only: bool = False,
    ):
        """``text``/``image`` are already projected and type-embedded. Returns
        ``(text_feats, image_feats, captured_image)`` where ``captured_image`` is the image stream
        after ``capture_layer`` layers (None if not asked). ``first_tokens_only``: the last layer
        computes only each stream's first token (``[B,1,D]`` out), all a pooler reads; the
        poolers' outputs are unchanged and about three quarters of that layer's work is skipped."""
        captured = image if capture_layer == 0 else None
        last = len(self.text_layers) - 1
        for i, (tl, il) in enumerate(zip(self.text_layers, self.image_layers)):
            k = 1 if first_tokens_only and i == last else None
            text, image = tl(text, text_mask, image, None, k), il(image, None, text, text_mask, k)
            if capture_layer is not None and capture_layer == i + 1:
                captured = image
        return text, image, captured

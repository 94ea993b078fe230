"""GM-Coord (UMD paper Sec. 3.3.2, Eq. 9-13) as pure functions.

Notation: ``u`` in {I (image), T (text)}.

* Eq. 10  ``C^u = softmax(H^u(Z^u))[j]``, j the ground-truth class -- :func:`contribution`
* Eq. 11  ``rho^I = sum C^I / sum C^T``, ``rho^T = sum C^T / sum C^I`` -- :func:`ratios`
* Eq. 12  ``k^u = 1 - tanh(beta * rho^u)`` if ``rho^u > rho^other`` else 1 -- :func:`coefficients`
* Eq. 13  ``g <- k^u g + N(0, Var(g))`` per parameter tensor -- :func:`modulate_`

Per-modality logits ``H^u(Z^u)``: :func:`unimodal_logits_masked` (paper default here) and
:func:`unimodal_logits_last_linear` (released code). Nothing here knows about the encoder: the
caller passes the parameters of each modality (from ``encoder.modality_parameters()``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

RULES = ("paper", "upstream")
DEFAULT_BETA = 0.1


def contribution(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 10 summed over the batch: ``sum_i softmax(logits_i)[target_i]``.

    ``logits`` [B, C]; ``target`` [B] (rows with ``target < 0`` are skipped: no ground truth).
    For retrieval pass the ``[B, 1+K]`` pair scores and a zero target (positive at index 0).
    """
    valid = target >= 0
    probs = F.softmax(logits[valid].to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    return probs.gather(1, target[valid].unsqueeze(1)).sum()


def ratios(c_image: float, c_text: float, eps: float = 1e-12) -> tuple[float, float]:
    """Eq. 11: ``(rho^I, rho^T)`` from the summed contributions."""
    c_image, c_text = float(c_image), float(c_text)
    return c_image / max(c_text, eps), c_text / max(c_image, eps)


def coefficients(
    rho_image: float, rho_text: float, beta: float = DEFAULT_BETA, rule: str = "paper"
) -> tuple[float, float]:
    """Eq. 12: ``(k^I, k^T)``.

    ``rule="paper"``: the modality with the strictly larger ratio gets ``1 - tanh(beta*rho)``, the
    other 1; on a tie (equal contributions) both are 1.
    ``rule="upstream"`` (released code / OGM-GE): ``if rho^T > 1: k^T = 1 - tanh(beta*relu(rho^T))``
    else ``k^I = 1 - tanh(beta*relu(rho^I))``. ``relu`` is the identity for the (positive) ratios, so
    the only numerical difference is the tie: at ``rho = 1`` upstream still damps the image,
    ``k^I = 1 - tanh(beta)``.
    """
    if rule == "paper":
        if rho_text > rho_image:
            return 1.0, 1.0 - math.tanh(beta * rho_text)
        if rho_image > rho_text:
            return 1.0 - math.tanh(beta * rho_image), 1.0
        return 1.0, 1.0
    if rule == "upstream":
        if rho_text > 1:
            return 1.0, 1.0 - math.tanh(beta * max(rho_text, 0.0))
        return 1.0 - math.tanh(beta * max(rho_image, 0.0)), 1.0
    raise ValueError(f"rule must be one of {RULES}, got {rule!r}")


def modulate_(
    params: Iterable[nn.Parameter],
    k: float,
    noise: bool,
    std_eps: float = 0.0,
    generator: torch.Generator | None = None,
) -> int:
    """Eq. 13 in place on every ``p.grad``: ``g <- k*g + N(0, (std(g) + std_eps)^2)``.

    ``std(g)`` is the standard deviation of the *original* gradient tensor (over its elements), so
    the noise has the variance of the gradient. Tensors with one element (no spread) or a
    non-finite std get no noise (the released code skips NaN std the same way). Parameters without
    a gradient are skipped. ``k == 1`` without noise leaves gradients bit-identical.
    Returns the number of gradient tensors changed.
    """
    changed = 0
    for p in params:
        g = p.grad
        if g is None:
            continue
        if k == 1.0 and not noise:
            continue
        std = None
        if noise and g.numel() > 1:
            # kept on the device (no host sync per tensor); a non-finite std means no noise
            s = g.detach().to(torch.promote_types(g.dtype, torch.float32)).std()
            std = torch.where(torch.isfinite(s), s + std_eps, torch.zeros_like(s))
        if k != 1.0:
            g.mul_(k)
        if std is not None:
            on = "cpu" if generator is not None else g.device  # a keyed generator lives on the CPU
            n = torch.randn(g.shape, generator=generator, device=on, dtype=s.dtype).to(g.device)
            g.add_(n.mul_(std).to(g.dtype))
        changed += 1
    return changed


# --------------------------------------------------------------------------------------------
# Per-modality logits H^u(Z^u)
# --------------------------------------------------------------------------------------------
def unimodal_logits_masked(
    head: nn.Module, text_feat: torch.Tensor, image_feat: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paper default: ``H^u(Z^u) = H(Z)`` with the other modality's half of the input zeroed.

    The whole trained head ``H`` (as used for the task loss, input ``[text; image]``) is split by
    its input: ``H^T = H([z^T; 0])``, ``H^I = H([0; z^I])``. For a single Linear head this is
    OGM-GE's decomposition (up to how the bias is shared). Returns ``(logits_image, logits_text)``.
    """
    zt, zi = torch.zeros_like(text_feat), torch.zeros_like(image_feat)
    return head(torch.cat([zt, image_feat], -1)), head(torch.cat([text_feat, zi], -1))


def unimodal_logits_last_linear(
    linear: nn.Linear, text_feat: torch.Tensor, image_feat: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Released code: pooled half x matching input half of the head's LAST Linear + bias/2.

    The head's first Linear / LayerNorm / GELU are skipped (not a decomposition of a 2-layer head).
    Requires ``linear.in_features == text_dim + image_dim``. Returns ``(logits_image, logits_text)``.
    """
    d_t = text_feat.shape[-1]
    if linear.in_features != d_t + image_feat.shape[-1]:
        raise ValueError(f"last Linear takes {linear.in_features} inputs, features are {d_t}+{image_feat.shape[-1]}")
    w, b = linear.weight, linear.bias
    half_b = b / 2 if b is not None else 0.0
    return image_feat @ w[:, d_t:].t() + half_b, text_feat @ w[:, :d_t].t() + half_b

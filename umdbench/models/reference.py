"""The plain eager reference of the training hot paths, as toggles on the SAME modules.

The benchmarks (``benchmarks/``) time every training step twice on one set of weights: once as
umdbench runs it, once as a plain eager implementation would. :func:`set_reference_mode` flips a
built strategy (or encoder) between the two; nothing here is used by training itself.

Each hot path, fast (default) -> reference:

- attention (fusion, ViT, MIM decoder, text tower): ``scaled_dot_product_attention`` -> matmul +
  softmax ("math" / transformers "eager");
- masked image path: dropped patches never enter the ViT -> they go through the ViT as mask tokens;
- EMA teacher pass (MR / TD-Calib): ``torch.no_grad()`` -> autograd on (teacher weights require
  grad, graph built);
- ITM pass (MR / M3AE): each distinct image through the ViT once -> one ViT pass per (image, text)
  pair;
- passes that read only pooled features (ITM, pooler-pooled task heads): last fusion layer on the
  first tokens -> the whole last layer;
- AdamW: fused kernel (CUDA and CPU) -> per-tensor loop (``foreach=False``), see
  :func:`reference_train_options`.

The reference keeps the model's mathematics except for the masked path: with mask tokens the
visible patches also attend to the (position-only) dropped ones, as in SimMIM/BEiT, so its
outputs differ; its cost is what the benchmark compares.
"""

from __future__ import annotations

from torch import nn

from .fusion import Attention as FusionAttention


def set_attention_impl(module: nn.Module, impl: str) -> None:
    """``impl`` "sdpa" (default) or "math" for every attention inside ``module``: the fusion
    layers, timm ViT / decoder blocks (``fused_attn``) and transformers text towers."""
    if impl not in ("sdpa", "math"):
        raise ValueError(f"attention impl must be 'sdpa' or 'math', got {impl!r}")
    for m in module.modules():
        if isinstance(m, FusionAttention):
            m.attn_impl = impl
        elif hasattr(m, "fused_attn") and hasattr(m, "qkv"):  # timm Attention
            m.fused_attn = impl == "sdpa"
        config = getattr(m, "config", None)
        if config is not None and hasattr(config, "_attn_implementation") and hasattr(m, "embeddings"):
            hf_impl = "sdpa" if impl == "sdpa" else "eager"
            if hasattr(m, "set_attn_implementation"):
                m.set_attn_implementation(hf_impl)
            else:  # older transformers read the config attribute at forward time
                config._attn_implementation = hf_impl


def attention_impls(module: nn.Module) -> set[str]:
    """The attention implementations in use inside ``module`` (for checks)."""
    found = set()
    for m in module.modules():
        if isinstance(m, FusionAttention):
            found.add(m.attn_impl)
        elif hasattr(m, "fused_attn") and hasattr(m, "qkv"):
            found.add("sdpa" if m.fused_attn else "math")
        config = getattr(m, "config", None)
        if config is not None and hasattr(m, "embeddings") and hasattr(config, "_attn_implementation"):
            found.add("sdpa" if config._attn_implementation == "sdpa" else "math")
    return found


def set_reference_mode(module: nn.Module, reference: bool = True) -> nn.Module:
    """Switch a strategy (or a bare encoder) to the eager reference (``reference=True``) or back
    to the default fast paths. Weights are untouched. Returns ``module``."""
    set_attention_impl(module, "math" if reference else "sdpa")
    for m in module.modules():
        if hasattr(m, "masked_path") and hasattr(m, "vision"):  # MultimodalEncoder (student and teacher)
            m.masked_path = "mask_tokens" if reference else "drop"
            m.share_pair_images = not reference
            m.trim_pooled_only = not reference
        if hasattr(m, "teacher_no_grad") and hasattr(m, "teacher"):  # MultiLevelReconstruction
            m.teacher_no_grad = not reference
            m.teacher.requires_grad_(reference)
    return module


def reference_train_options(train: dict, reference: bool = True) -> dict:
    """``train`` with the optimiser of the reference: per-tensor AdamW (no fused / foreach kernel),
    no mixed precision, no compile."""
    if not reference:
        return dict(train)
    return {**train, "fused": False, "foreach": False, "amp": False, "compile": False}

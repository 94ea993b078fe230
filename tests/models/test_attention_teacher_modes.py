"""Attention dropout on the CPU takes the bf16-capable explicit path (not torch's upcasting math
fallback) with the same mathematics, and the EMA teacher pass runs under inference_mode unless a
quirk needs its graph."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from umdbench.models import build_encoder
from umdbench.models.fusion import Attention, math_attention
from umdbench.models.reference import set_reference_mode
from umdbench.models.tiny_fixtures import synthetic_pairs, tiny_encoder_cfg


def _qkv(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 9, 8, generator=g, dtype=dtype) for _ in range(3))
    mask = torch.ones(2, 1, 1, 9, dtype=torch.bool)
    mask[1, ..., 6:] = False
    return q, k, v, mask


def test_training_attention_with_dropout_skips_sdpa_and_matches_math(monkeypatch):
    torch.manual_seed(0)
    attn = Attention(32, 4, dropout=0.3).train()
    x, ctx = torch.randn(2, 5, 32), torch.randn(2, 9, 32)
    key_mask = torch.ones(2, 9)
    key_mask[1, 6:] = 0

    def no_sdpa(*a, **k):
        raise AssertionError("SDPA called with dropout on the CPU (its math fallback upcasts bf16)")

    monkeypatch.setattr(F, "scaled_dot_product_attention", no_sdpa)
    torch.manual_seed(1)
    fast = attn(x, ctx, key_mask)
    monkeypatch.undo()
    attn.attn_impl = "math"  # the eager reference, same dropout draws under the same seed
    torch.manual_seed(1)
    ref = attn(x, ctx, key_mask)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    attn.attn_impl = "sdpa"
    attn.eval()  # no dropout: the fused kernel again, same numbers as the reference
    torch.testing.assert_close(attn(x, ctx, key_mask), math_attention_out(attn, x, ctx, key_mask), atol=1e-5, rtol=1e-5)


def math_attention_out(attn, x, ctx, key_mask):
    attn.attn_impl = "math"
    try:
        return attn(x, ctx, key_mask)
    finally:
        attn.attn_impl = "sdpa"


def test_dropout_attention_keeps_bf16_and_masks():
    from umdbench.models.fusion import dropout_attention

    q, k, v, mask = _qkv(torch.bfloat16)
    torch.manual_seed(3)
    out = dropout_attention(q, k, v, mask, 0.2)
    assert out.dtype == torch.bfloat16
    torch.manual_seed(3)
    ref = math_attention(q.float(), k.float(), v.float(), mask, 0.2)
    torch.testing.assert_close(out.float(), ref, atol=5e-2, rtol=5e-2)
    # masked keys get no weight: changing their values changes nothing
    v2 = v.clone()
    v2[1, :, 6:] = 100.0
    torch.manual_seed(3)
    assert torch.equal(dropout_attention(q, k, v2, mask, 0.2)[1], out[1])


def _mr(quirks=None):
    from plugins.pretrain.mr import MRPretrain

    torch.manual_seed(0)
    enc = build_encoder(tiny_encoder_cfg())
    batch, special = synthetic_pairs(4)
    cfg = {"special_ids": special, "decoder": {"dim": 32, "depth": 1, "heads": 2}, "fea_dim": 16}
    if quirks:
        cfg["quirks"] = quirks
    return MRPretrain(enc, cfg).train(), batch


def test_teacher_pass_under_inference_mode_and_training_still_works():
    s, batch = _mr()
    r = s.reconstruction_terms(batch)
    assert r["teacher"].image_feats.is_inference() and r["teacher"].text_feats.is_inference()
    loss = r["mim"] + r["mlm"] + r["feamim"] + r["feamlm"]
    loss.backward()
    assert any(p.grad is not None for p in s.fea_proj_image.parameters())
    assert all(p.grad is None for p in s.teacher.parameters())
    # the eager reference records the teacher graph (no inference tensors there)
    set_reference_mode(s, True)
    r = s.reconstruction_terms(batch)
    assert not r["teacher"].image_feats.is_inference() and r["teacher"].text_feats.grad_fn is not None


def test_teacher_pass_with_target_gradient_quirk_uses_no_grad():
    s, batch = _mr({"fea_target_grad": True})
    assert s.quirks["fea_target_grad"]
    r = s.reconstruction_terms(batch)
    assert not r["teacher"].image_feats.is_inference() and r["teacher"].image_feats.grad_fn is None
    (r["feamim"] + r["feamlm"]).backward()  # the target side's projection records a graph: no error
    assert any(p.grad is not None for p in s.fea_proj_text.parameters())


def test_inference_mode_teacher_gives_the_same_losses_as_no_grad():
    s, batch = _mr()
    noise = torch.rand(4, s.encoder.vision.patch_embed.num_patches, generator=torch.Generator().manual_seed(5))
    torch.manual_seed(7)
    a = s.reconstruction_terms(batch, noise)
    s._teacher_mode = lambda: torch.no_grad()  # the previous mode, on this instance
    torch.manual_seed(7)
    b = s.reconstruction_terms(batch, noise)
    for key in ("mim", "mlm", "feamim", "feamlm"):
        assert torch.equal(a[key], b[key]), key

"""Masking, loss functions and the EMA update against hand computations."""

import math

import pytest
import torch
from torch import nn

from umdbench.models.ema import copy_weights_, ema_update_
from umdbench.models.masking import ids_keep_from_restore, mask_tokens, num_visible, random_masking
from umdbench.models.objectives import (
    clip_loss,
    feature_mse,
    itm_loss,
    itm_sources,
    mim_loss,
    mlm_loss,
    normalise_patches,
)

SPECIAL = {"mask": 103, "pad": 0, "cls": 101, "sep": 102, "vocab_size": 30522, "all_special": [0, 100, 101, 102, 103]}


# -- image masking ---------------------------------------------------------------------------
@pytest.mark.parametrize("n,ratio,keep", [(36, 0.75, 9), (576, 0.75, 144), (16, 0.5, 8), (196, 0.75, 49)])
def test_image_mask_exact_count(n, ratio, keep):
    x = torch.randn(5, n, 4)
    vis, mask, ids_restore, ids_keep = random_masking(x, ratio)
    assert num_visible(n, ratio) == keep
    assert vis.shape == (5, keep, 4)
    assert (mask.sum(1) == n - keep).all()
    assert torch.equal(ids_keep_from_restore(ids_restore, keep), ids_keep)
    for b in range(5):
        torch.testing.assert_close(vis[b], x[b, ids_keep[b]])
        assert mask[b, ids_keep[b]].sum() == 0


def test_image_masks_differ_per_sample():
    _, mask, _, _ = random_masking(torch.zeros(8, 36, 2), 0.75)
    assert len({tuple(m.tolist()) for m in mask}) > 1


# -- text masking ----------------------------------------------------------------------------
def _text_batch(B=400, L=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(5, L + 1, (B,), generator=g)
    ids = torch.randint(1000, 30000, (B, L), generator=g)
    mask = (torch.arange(L)[None] < lengths[:, None]).long()
    ids[:, 0] = 101
    ids[torch.arange(B), lengths - 1] = 102
    ids[mask == 0] = 0
    ids[::7, 3] = 100  # some [UNK] (special too)
    return ids, mask


def test_text_mask_ratio_and_never_specials():
    torch.manual_seed(0)
    ids, mask = _text_batch()
    masked, labels = mask_tokens(ids, mask, SPECIAL, 0.15)
    selected = labels != -100
    special = torch.isin(ids, torch.tensor(SPECIAL["all_special"]))
    eligible = mask.bool() & ~special
    assert not (selected & ~eligible).any()  # never pad / CLS / SEP / UNK
    assert torch.equal(masked[~selected], ids[~selected])  # untouched elsewhere
    assert torch.equal(labels[selected], ids[selected])
    rate = selected.sum().item() / eligible.sum().item()
    assert abs(rate - 0.15) < 0.01, rate
    # 80 / 10 / 10
    n = selected.sum().item()
    to_mask = (masked[selected] == 103).float().mean().item()
    kept = (masked[selected] == ids[selected]).float().mean().item()
    assert abs(to_mask - 0.8) < 0.03 and abs(kept - 0.1) < 0.03, (to_mask, kept, n)
    random_ids = masked[selected & (masked != 103) & (masked != ids)]
    assert not torch.isin(random_ids, torch.tensor(SPECIAL["all_special"])).any()
    assert (random_ids < 30522).all()


# -- MIM -------------------------------------------------------------------------------------
def test_mim_loss_hand_computed():
    pred = torch.tensor([[[1.0, 2.0], [0.0, 0.0], [3.0, 3.0]]])
    target = torch.tensor([[[0.0, 0.0], [5.0, 5.0], [1.0, 2.0]]])
    mask = torch.tensor([[1.0, 0.0, 1.0]])
    # masked patches 0 and 2: ((1 + 4) / 2 + (4 + 1) / 2) / 2 = 2.5
    assert mim_loss(pred, target, mask).item() == pytest.approx(2.5)


def test_mim_norm_pix_hand_computed():
    target = torch.tensor([[[1.0, 3.0, 5.0]]])
    mean, std = 3.0, math.sqrt(4.0 + 1e-6)  # unbiased variance of (1, 3, 5) is 4
    normed = torch.tensor([[[(1 - mean) / std, 0.0, (5 - mean) / std]]])
    torch.testing.assert_close(normalise_patches(target), normed)
    pred = torch.zeros(1, 1, 3)
    expect = ((normed**2).mean()).item()
    assert mim_loss(pred, target, torch.ones(1, 1), norm_pix=True).item() == pytest.approx(expect, rel=1e-5)


# -- MLM -------------------------------------------------------------------------------------
def test_mlm_loss_hand_computed():
    torch.manual_seed(0)
    head = nn.Linear(4, 6)
    feats = torch.randn(2, 3, 4)
    labels = torch.tensor([[-100, 2, -100], [5, -100, -100]])
    loss, acc = mlm_loss(head, feats, labels)
    l1 = -torch.log_softmax(head(feats[0, 1]), -1)[2]
    l2 = -torch.log_softmax(head(feats[1, 0]), -1)[5]
    assert loss.item() == pytest.approx(((l1 + l2) / 2).item(), rel=1e-6)
    expect_acc = ((head(feats[0, 1]).argmax() == 2).float() + (head(feats[1, 0]).argmax() == 5).float()) / 2
    assert acc.item() == pytest.approx(expect_acc.item())


def test_mlm_loss_without_masked_tokens_is_zero_and_connected():
    feats = torch.randn(2, 3, 4, requires_grad=True)
    loss, _ = mlm_loss(nn.Linear(4, 6), feats, torch.full((2, 3), -100))
    assert loss.item() == 0.0 and loss.requires_grad


# -- ITM -------------------------------------------------------------------------------------
def test_itm_sources_half_mismatched():
    torch.manual_seed(0)
    img = torch.arange(8.0).view(8, 1, 1, 1).expand(8, 3, 2, 2).clone()
    src, labels = itm_sources(8)
    out = img[src]
    assert labels.sum() == 4
    for i in range(8):
        src = out[i, 0, 0, 0].item()
        assert src == (i if labels[i] == 1 else (i - 1) % 8)


def test_itm_loss_hand_computed():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 3.0]])
    labels = torch.tensor([0, 1, 0])
    expect = -(torch.log_softmax(logits, -1)[torch.arange(3), labels]).mean()
    loss, acc = itm_loss(logits, labels)
    assert loss.item() == pytest.approx(expect.item())
    assert acc.item() == pytest.approx(2 / 3)


# -- features / CLIP ---------------------------------------------------------------------------
def test_feature_mse_hand_computed():
    pred = torch.tensor([[[1.0, 1.0], [2.0, 0.0]]])
    target = torch.zeros(1, 2, 2)
    assert feature_mse(pred, target).item() == pytest.approx((1.0 + 2.0) / 2)
    assert feature_mse(pred, target, torch.tensor([[1, 0]])).item() == pytest.approx(1.0)


def test_clip_loss_hand_computed():
    img = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    txt = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    scale = torch.tensor(math.log(10.0))
    i = img / img.norm(dim=1, keepdim=True)
    t = txt / txt.norm(dim=1, keepdim=True)
    sims = 10.0 * (i @ t.T)
    i2t = -(sims[0, 0] - torch.logsumexp(sims[0], 0) + sims[1, 1] - torch.logsumexp(sims[1], 0)) / 2
    t2i = -(sims[0, 0] - torch.logsumexp(sims[:, 0], 0) + sims[1, 1] - torch.logsumexp(sims[:, 1], 0)) / 2
    loss, acc = clip_loss(img, txt, scale)
    assert loss.item() == pytest.approx(((i2t + t2i) / 2).item(), rel=1e-6)
    assert acc.item() == 1.0


# -- EMA -------------------------------------------------------------------------------------
def test_ema_update_formula_exact():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    teacher = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    student[1].running_mean.fill_(2.0)
    student[1].num_batches_tracked.fill_(7)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    ema_update_(teacher, student, 0.995)
    for k, v in teacher.state_dict().items():
        s = student.state_dict()[k]
        if v.is_floating_point():
            torch.testing.assert_close(v, 0.995 * before[k] + 0.005 * s, rtol=0, atol=1e-7)
        else:
            assert torch.equal(v, s)
    copy_weights_(teacher, student)
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, student.state_dict()[k])


def test_ema_twice_is_compounded():
    a, b = nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False)
    w0 = a.weight.detach().clone()
    ema_update_(a, b, 0.9)
    ema_update_(a, b, 0.9)
    torch.testing.assert_close(a.weight, 0.81 * w0 + 0.19 * b.weight, rtol=0, atol=1e-7)


def test_forward_pairs_shares_images_without_changing_outputs_or_gradients():
    # ITM's repeated images go through the ViT once; outputs and gradients equal the per-pair pass
    from umdbench.models import build_encoder
    from umdbench.models.objectives import itm_sources
    from umdbench.models.tiny_fixtures import synthetic_pairs, tiny_encoder_cfg

    torch.manual_seed(0)
    enc = build_encoder(tiny_encoder_cfg())
    enc.train()
    batch, _ = synthetic_pairs(6, cfg=enc.cfg, seed=1)
    src, labels = itm_sources(6, generator=torch.Generator().manual_seed(3))
    assert len(torch.unique(src)) < 6 and labels.sum() == 3  # some images repeat, some unused
    grads = []
    for share in (True, False):
        enc.share_pair_images = share
        enc.zero_grad(set_to_none=True)
        out = enc.forward_pairs(batch["image"], src, batch["text_ids"], batch["text_mask"])
        out.pooled.pow(2).sum().backward()
        grads.append(
            (out.pooled.detach(), {n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None})
        )
    (a, ga), (b, gb) = grads
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert ga.keys() == gb.keys() and any(n.startswith("vision.") for n in ga)
    for n in ga:
        torch.testing.assert_close(ga[n], gb[n], rtol=1e-4, atol=1e-6)


def test_pooled_only_forward_keeps_pooled_outputs_and_gradients():
    # the last fusion layer on the first tokens only: what the poolers read is unchanged
    from umdbench.models import build_encoder
    from umdbench.models.tiny_fixtures import synthetic_pairs, tiny_encoder_cfg

    torch.manual_seed(0)
    enc = build_encoder(tiny_encoder_cfg())
    enc.train()
    batch, _ = synthetic_pairs(4, cfg=enc.cfg, seed=2)
    results = []
    for trim in (True, False):
        enc.zero_grad(set_to_none=True)
        out = enc(batch["image"], batch["text_ids"], batch["text_mask"], pooled_only=trim)
        out.pooled.pow(2).sum().backward()
        results.append((out, {n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None}))
    (trimmed, g_trim), (full, g_full) = results
    assert trimmed.text_feats.shape[1] == 1 and full.text_feats.shape[1] == batch["text_ids"].shape[1]
    torch.testing.assert_close(trimmed.pooled, full.pooled, rtol=1e-5, atol=1e-6)
    assert g_trim.keys() == g_full.keys()
    for n in g_full:
        torch.testing.assert_close(g_trim[n], g_full[n], rtol=1e-4, atol=1e-6)
    enc.trim_pooled_only = False  # the reference switch computes the whole layer
    assert enc(batch["image"], batch["text_ids"], batch["text_mask"], pooled_only=True).text_feats.shape[1] > 1

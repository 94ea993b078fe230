"""GM-Coord (UMD Eq. 9-13): umdbench.kit.gradmod and the ``gmcoord`` tuning strategy."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.kit.test_tasks import ToyEncoder, task_info, toy_batch
from umdbench.kit import gradmod
from umdbench_plugins.tune.gmcoord import GMCoord

BETA = 0.1


# --------------------------------------------------------------------------------------------
# Eq. 10-12
# --------------------------------------------------------------------------------------------
def _text_ahead_logits(b=8, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, c, (b,), generator=g)
    logits_t = torch.randn(b, c, generator=g) * 0.1
    logits_t[torch.arange(b), target] += 4.0  # text predicts the answer confidently
    logits_i = torch.randn(b, c, generator=g) * 0.1  # image is near chance
    return logits_i, logits_t, target


def test_text_ahead_gives_exact_eq12_coefficient():
    logits_i, logits_t, target = _text_ahead_logits()
    c_i = gradmod.contribution(logits_i, target)
    c_t = gradmod.contribution(logits_t, target)
    # Eq. 10 by hand
    manual_t = sum(float(F.softmax(logits_t[n], 0)[target[n]]) for n in range(len(target)))
    manual_i = sum(float(F.softmax(logits_i[n], 0)[target[n]]) for n in range(len(target)))
    assert float(c_t) == pytest.approx(manual_t, rel=1e-6) and float(c_i) == pytest.approx(manual_i, rel=1e-6)
    rho_i, rho_t = gradmod.ratios(c_i, c_t)
    assert rho_t == pytest.approx(manual_t / manual_i) and rho_i == pytest.approx(manual_i / manual_t)
    assert rho_t > 3  # clearly ahead
    k_i, k_t = gradmod.coefficients(rho_i, rho_t, BETA)
    assert k_i == 1.0
    assert k_t == pytest.approx(1 - math.tanh(BETA * manual_t / manual_i), rel=1e-6)
    assert k_t < 1


def test_image_ahead_is_symmetric():
    logits_i, logits_t, target = _text_ahead_logits()
    rho_i, rho_t = gradmod.ratios(gradmod.contribution(logits_t, target), gradmod.contribution(logits_i, target))
    k_i, k_t = gradmod.coefficients(rho_i, rho_t, BETA)
    assert k_t == 1.0 and k_i == pytest.approx(1 - math.tanh(BETA * rho_i)) and k_i < 1


def test_equal_contributions_give_both_one_paper_but_damp_image_upstream():
    logits = torch.randn(6, 4)
    target = torch.randint(0, 4, (6,))
    c = gradmod.contribution(logits, target)
    rho_i, rho_t = gradmod.ratios(c, c)
    assert rho_i == rho_t == 1.0
    assert gradmod.coefficients(rho_i, rho_t, BETA, "paper") == (1.0, 1.0)
    # released code: `if ratio_t > 1 ... else` -> the tie falls into the image branch
    k_i, k_t = gradmod.coefficients(rho_i, rho_t, BETA, "upstream")
    assert k_t == 1.0 and k_i == pytest.approx(1 - math.tanh(BETA))


def test_upstream_relu_is_identity_for_positive_ratios():
    for rho_t in (0.3, 0.9, 1.5, 4.0):
        rho_i = 1 / rho_t
        assert gradmod.coefficients(rho_i, rho_t, BETA, "upstream") == pytest.approx(
            gradmod.coefficients(rho_i, rho_t, BETA, "paper")
        )
    with pytest.raises(ValueError):
        gradmod.coefficients(1.0, 1.0, BETA, "ogm")


def test_contribution_skips_unseen_labels():
    logits = torch.randn(4, 3)
    target = torch.tensor([0, -1, 2, -1])
    expected = F.softmax(logits[0], 0)[0] + F.softmax(logits[2], 0)[2]
    torch.testing.assert_close(gradmod.contribution(logits, target), expected)


# --------------------------------------------------------------------------------------------
# Eq. 13
# --------------------------------------------------------------------------------------------
def test_modulated_gradient_has_mean_kg_and_variance_of_g():
    gen = torch.Generator().manual_seed(1234)
    g0 = torch.randn(20000, generator=gen) * 2.0 + 0.5
    s = float(g0.std())
    k, draws = 0.7, 200
    p = torch.nn.Parameter(torch.zeros_like(g0))
    out = torch.empty(draws, g0.numel())
    for d in range(draws):
        p.grad = g0.clone()
        gradmod.modulate_([p], k, noise=True, generator=gen)
        out[d] = p.grad
    resid = out - k * g0
    n = resid.numel()
    # over all draws: mean k*g, variance Var(g)
    assert abs(float(resid.mean())) < 5 * s / math.sqrt(n)
    assert float(resid.var()) == pytest.approx(s**2, rel=0.02)
    # per element, the mean over draws is k*g (6-sigma band for the max over 20000 elements)
    assert float((out.mean(0) - k * g0).abs().max()) < 6 * s / math.sqrt(draws)
    # the noise is independent of g (no correlation between residual and g)
    corr = torch.corrcoef(torch.stack([resid.mean(0), g0]))[0, 1]
    assert abs(float(corr)) < 0.05


def test_modulate_without_noise_and_edge_cases():
    p = torch.nn.Parameter(torch.zeros(5))
    p.grad = torch.arange(5.0)
    gradmod.modulate_([p], 0.5, noise=False)
    torch.testing.assert_close(p.grad, torch.arange(5.0) * 0.5)
    q = torch.nn.Parameter(torch.zeros(1))  # one element: no spread, no noise, no NaN
    q.grad = torch.tensor([2.0])
    gradmod.modulate_([q], 0.5, noise=True)
    assert float(q.grad) == 1.0
    r = torch.nn.Parameter(torch.zeros(3))  # no grad: skipped
    assert gradmod.modulate_([r], 0.5, noise=True) == 0 and r.grad is None
    u = torch.nn.Parameter(torch.zeros(4))
    u.grad = torch.ones(4)
    assert gradmod.modulate_([u], 1.0, noise=False) == 0 and torch.equal(u.grad, torch.ones(4))


# --------------------------------------------------------------------------------------------
# Per-modality logits
# --------------------------------------------------------------------------------------------
def test_unimodal_logits_masked_and_last_linear():
    torch.manual_seed(0)
    enc = ToyEncoder()
    s = GMCoord(enc, {}, task_info("vqa", 5))
    t, i = torch.randn(3, 16), torch.randn(3, 16)
    li, lt = gradmod.unimodal_logits_masked(s.head, t, i)
    torch.testing.assert_close(lt, s.head(torch.cat([t, torch.zeros_like(i)], -1)))
    torch.testing.assert_close(li, s.head(torch.cat([torch.zeros_like(t), i], -1)))
    w, b = s.head[-1].weight, s.head[-1].bias
    ui, ut = gradmod.unimodal_logits_last_linear(s.head[-1], t, i)
    torch.testing.assert_close(ut, t @ w[:, :16].T + b / 2)
    torch.testing.assert_close(ui, i @ w[:, 16:].T + b / 2)
    # the 2-layer head makes the two definitions differ
    assert not torch.allclose(lt, ut)
    # for a single-Linear head the upstream halves sum exactly to the fused logits
    lin = torch.nn.Linear(32, 4)
    ui, ut = gradmod.unimodal_logits_last_linear(lin, t, i)
    torch.testing.assert_close(ui + ut, lin(torch.cat([t, i], -1)))


# --------------------------------------------------------------------------------------------
# The strategy
# --------------------------------------------------------------------------------------------
def _step(strategy, batch):
    strategy.train()
    strategy.zero_grad(set_to_none=True)
    out = strategy(batch)
    sum(v for k, v in out.items() if k.startswith("loss")).backward()
    return {n: p.grad.clone() for n, p in strategy.named_parameters() if p.grad is not None}


def _modality_names(strategy):
    groups = strategy.encoder.modality_parameters()
    return {m: {"encoder." + n for n, _ in groups[m]} for m in ("image", "text")}


def test_only_modality_parameters_are_modulated_exact_k():
    torch.manual_seed(0)
    s = GMCoord(ToyEncoder(), {"noise": "none"}, task_info("vqa", 5))
    before = _step(s, toy_batch("vqa"))
    s._contrib = [2.0, 6.0]  # text clearly ahead: rho_T = 3
    logs = s.modulate_gradients()
    assert set(logs) == {"k_I", "k_T", "rho_I", "rho_T"} and all(isinstance(v, float) for v in logs.values())
    k_t = 1 - math.tanh(BETA * 3.0)
    assert logs["k_T"] == pytest.approx(k_t) and logs["k_I"] == 1.0
    names = _modality_names(s)
    assert names["text"] and names["image"]
    for n, p in s.named_parameters():
        if p.grad is None:
            continue
        if n in names["text"]:
            torch.testing.assert_close(p.grad, before[n] * k_t)
        else:  # image (k = 1), heads, poolers, type embedding: bit-identical
            assert torch.equal(p.grad, before[n]), n
    assert any(n.startswith("head.") for n in before) and any("pooler" in n for n in before)


def test_paper_noise_only_on_the_modulated_modality():
    torch.manual_seed(0)
    s = GMCoord(ToyEncoder(), {}, task_info("vqa", 5))
    assert (s.unimodal, s.rule, s.noise) == ("masked", "paper", "modulated")
    before = _step(s, toy_batch("vqa"))
    s._contrib = [6.0, 2.0]  # image ahead
    logs = s.modulate_gradients()
    k_i = 1 - math.tanh(BETA * 3.0)
    assert logs["k_I"] == pytest.approx(k_i) and logs["k_T"] == 1.0
    names = _modality_names(s)
    changed = {n for n, p in s.named_parameters() if p.grad is not None and not torch.equal(p.grad, before[n])}
    multi = {n for n in names["image"] if n in before and before[n].numel() > 1}
    assert changed == multi  # noisy image grads; text, heads, poolers untouched
    # equal contributions: nothing at all changes in the paper variant
    before = _step(s, toy_batch("vqa", seed=1))
    s._contrib = [3.0, 3.0]
    assert s.modulate_gradients() == {"k_I": 1.0, "k_T": 1.0, "rho_I": 1.0, "rho_T": 1.0}
    assert all(torch.equal(p.grad, before[n]) for n, p in s.named_parameters() if p.grad is not None)


def test_upstream_variant_noise_on_both_and_tie_damps_image():
    torch.manual_seed(0)
    s = GMCoord(ToyEncoder(), {"variant": "upstream"}, task_info("vqa", 5))
    assert (s.unimodal, s.rule, s.noise, s.std_eps) == ("last_linear", "upstream", "both", 1e-8)
    before = _step(s, toy_batch("vqa"))
    s._contrib = [3.0, 3.0]  # a tie
    logs = s.modulate_gradients()
    assert logs["k_T"] == 1.0 and logs["k_I"] == pytest.approx(1 - math.tanh(BETA))
    names = _modality_names(s)
    changed = {n for n, p in s.named_parameters() if p.grad is not None and not torch.equal(p.grad, before[n])}
    # noise reaches the text modality too although k_T = 1; heads/poolers still untouched
    assert any(n in changed for n in names["text"]) and any(n in changed for n in names["image"])
    assert changed <= names["text"] | names["image"]
    # individual knobs override the variant's defaults
    s2 = GMCoord(ToyEncoder(), {"variant": "upstream", "noise": "modulated"}, task_info("vqa", 5))
    assert (s2.unimodal, s2.rule, s2.noise) == ("last_linear", "upstream", "modulated")
    with pytest.raises(ValueError, match="variant"):
        GMCoord(ToyEncoder(), {"variant": "ogm"}, task_info("vqa", 5))


def test_forward_records_contributions_and_modulate_logs_every_step():
    torch.manual_seed(0)
    s = GMCoord(ToyEncoder(dropout=0.0), {}, task_info("vqa", 5))
    batch = toy_batch("vqa")
    _step(s, batch)
    fwd = s.encode(batch)
    assert s._contrib is not None
    logs = s.modulate_gradients()
    assert set(logs) == {"k_I", "k_T", "rho_I", "rho_T"}
    assert logs["rho_I"] * logs["rho_T"] == pytest.approx(1.0)
    assert s.modulate_gradients() == {}  # consumed; nothing until the next forward
    # two forwards (gradient accumulation) before one modulation: contributions are summed
    s.eval()
    one = s.contributions(fwd)
    s.train()
    s(batch)
    s(batch)
    assert s._contrib[0] == pytest.approx(2 * one[0], rel=1e-4) and s._contrib[1] == pytest.approx(2 * one[1], rel=1e-4)
    # a batch whose labels are all unseen (-1): neutral coefficients, gradients untouched
    s._contrib = None
    unseen = dict(batch, label=torch.full_like(batch["label"], -1))
    before = _step(s, unseen)
    assert s.modulate_gradients() == {"k_I": 1.0, "k_T": 1.0, "rho_I": 1.0, "rho_T": 1.0}
    assert all(torch.equal(p.grad, before[n]) for n, p in s.named_parameters() if p.grad is not None)
    # no recording in eval mode / under no_grad
    s._contrib = None
    s.eval()
    with torch.no_grad():
        s(batch)
    assert s._contrib is None


def test_masked_contribution_matches_head_with_other_half_zeroed():
    torch.manual_seed(0)
    s = GMCoord(ToyEncoder(), {}, task_info("vqa", 5)).eval()
    batch = toy_batch("vqa")
    fwd = s.encode(batch)
    c_i, c_t = s.contributions(fwd)
    z = torch.zeros_like(fwd.text_feat)
    with torch.no_grad():
        pt = F.softmax(s.head(torch.cat([fwd.text_feat, z], -1)), -1)
        pi = F.softmax(s.head(torch.cat([z, fwd.image_feat], -1)), -1)
    y = batch["label"]
    assert c_t == pytest.approx(float(pt[torch.arange(len(y)), y].sum()), rel=1e-5)
    assert c_i == pytest.approx(float(pi[torch.arange(len(y)), y].sum()), rel=1e-5)


def test_retrieval_contribution_softmax_over_pairs_positive_first():
    torch.manual_seed(0)
    s = GMCoord(ToyEncoder(), {}, task_info("retrieval")).eval()
    batch = toy_batch("retrieval", b=3, k=4)
    fwd = s.encode(batch)
    c_i, c_t = s.contributions(fwd)
    w, b = s.head[0].weight, s.head[0].bias
    with torch.no_grad():
        st = (fwd.text_feat @ w[:, :16].T + b).view(3, 5)
        si = (fwd.image_feat @ w[:, 16:].T + b).view(3, 5)
    assert c_t == pytest.approx(float(F.softmax(st, -1)[:, 0].sum()), rel=1e-5)
    assert c_i == pytest.approx(float(F.softmax(si, -1)[:, 0].sum()), rel=1e-5)
    s.train()
    _step(s, batch)
    assert set(s.modulate_gradients()) == {"k_I", "k_T", "rho_I", "rho_T"}


def test_paper_preset_hyperparameters():
    cfg = GMCoord.default_config("paper", "vqa-med-2019")
    assert cfg["variant"] == "paper" and cfg["beta"] == 0.1 and cfg["loss"] == "ce"
    t = cfg["train"]
    assert (t["lr"], t["warmup_ratio"], t["schedule"], t["weight_decay"]) == (5e-6, 0.1, "linear", 0.1)
    assert t["max_iters"] == 300 * 20 and t["batch_size"] == 32
    wd = {
        ds: GMCoord.default_config("paper", ds)["train"]["weight_decay"]
        for ds in ("vqa-rad", "slake", "melinda", "roco")
    }
    assert wd == {"vqa-rad": 0.1, "slake": 0.01, "melinda": 0.01, "roco": 0.1}
    for ds in ("vqa-rad", "slake", "melinda", "roco"):
        assert GMCoord.default_config("paper", ds)["train"]["schedule"] == "cosine"
    assert GMCoord.default_config("paper", "vqa-rad")["train"]["max_iters"] == 48 * 60
    assert GMCoord.default_config("paper", "roco")["train"]["batch_size"] == 128


def _real_tiny_encoder():
    models = pytest.importorskip("umdbench.models")
    if not hasattr(models, "build_encoder") or "tiny" not in getattr(models, "ENCODER_PRESETS", {}):
        pytest.skip("umdbench.models.build_encoder / ENCODER_PRESETS['tiny'] not available yet")
    return models.build_encoder(models.ENCODER_PRESETS["tiny"]), models.ENCODER_PRESETS["tiny"]


def _real_batch(preset, b=4, num_classes=5):
    size, length = preset["image_size"], min(int(preset["max_text_len"]), 12)
    ids = torch.randint(5, 100, (b, length))
    return {
        "image": torch.randn(b, 3, size, size),
        "text_ids": ids,
        "text_mask": torch.ones(b, length, dtype=torch.long),
        "label": ids[:, 1] % num_classes,
    }


def test_gmcoord_with_real_tiny_encoder():
    torch.manual_seed(0)
    enc, preset = _real_tiny_encoder()
    s = GMCoord(enc, {"noise": "none"}, task_info("vqa", 5))
    before = _step(s, _real_batch(preset))
    s._contrib = [1.0, 4.0]
    logs = s.modulate_gradients()
    k_t = 1 - math.tanh(BETA * 4.0)
    assert logs["k_T"] == pytest.approx(k_t)
    names = _modality_names(s)
    assert names["text"] and names["image"] and not names["text"] & names["image"]
    for n, p in s.named_parameters():
        if p.grad is None:
            continue
        if n in names["text"]:
            torch.testing.assert_close(p.grad, before[n] * k_t)
        else:
            assert torch.equal(p.grad, before[n]), n


def test_pooling_default_and_deviation_follow_the_paper_per_strategy():
    # GM-Coord: the paper feeds H averaged Z^I, Z^T; direct (M3AE fine-tuning): the poolers
    from umdbench_plugins.tune.direct import DirectTune

    gm = GMCoord.default_config("tiny", "vqa-rad")
    assert gm["pooling"] == "mean" and not any("head reads" in d for d in GMCoord.deviations(gm))
    assert any(
        "poolers' outputs" in d and "average embeddings" in d for d in GMCoord.deviations({**gm, "pooling": "pooler"})
    )
    direct = DirectTune.default_config("tiny", "vqa-rad")
    assert direct["pooling"] == "pooler" and not DirectTune.deviations(direct)
    assert any("average embeddings" in d for d in DirectTune.deviations({**direct, "pooling": "mean"}))

"""MR-Pretrain (Eq. 1-7): each term by hand, alpha weighting, EMA teacher, released-code quirks."""

import pytest
import torch

from umdbench.api import deep_merge
from umdbench.models import build_encoder
from umdbench.models.tiny_fixtures import synthetic_pairs, tiny_encoder_cfg
from umdbench_plugins.pretrain.mr import MRPretrain


def make(**overrides):
    torch.manual_seed(0)
    enc = build_encoder(tiny_encoder_cfg())
    batch, special = synthetic_pairs(4)
    cfg = deep_merge(MRPretrain.default_config("tiny"), overrides)
    cfg["special_ids"] = special
    return MRPretrain(enc, cfg), batch


def total(out):
    return sum(v for k, v in out.items() if k.startswith("loss"))


def test_terms_against_hand_computation():
    strat, batch = make()
    strat.eval()  # no dropout anyway in tiny; the terms are the same in train mode
    torch.manual_seed(1)
    noise = torch.rand(4, 36)
    with torch.no_grad():
        r = strat.reconstruction_terms(batch, mask_noise=noise)
    enc, s, t = strat.encoder, r["student"], r["teacher"]
    image, ids, mask = batch["image"], batch["text_ids"], batch["text_mask"]
    keep = noise.argsort(1)[:, :9]
    with torch.no_grad():
        # the student saw the masked pair, the teacher (a copy of the student) the full pair
        s_ref = enc(image, r["mlm_ids"], mask, image_mask_ratio=0.75, mask_noise=noise)
        t_ref = enc(image, ids, mask)
    torch.testing.assert_close(s.image_feats, s_ref.image_feats)
    torch.testing.assert_close(t.image_feats, t_ref.image_feats)
    assert (r["mlm_labels"] != -100).any()

    # Eq. 1: raw pixels (norm_pix_loss False by default) of masked patches only
    errs = []
    for b in range(4):
        for n in range(36):
            if n in keep[b]:
                continue
            row, col = divmod(n, 6)
            pix = image[b, :, row * 16 : (row + 1) * 16, col * 16 : (col + 1) * 16].permute(1, 2, 0).reshape(-1)
            errs.append(((r["mim_pred"][b, n] - pix) ** 2).mean())
    assert len(errs) == 4 * 27
    assert r["mim"].item() == pytest.approx(torch.stack(errs).mean().item(), rel=1e-5)

    # Eq. 2: cross-entropy over the masked tokens
    nll = []
    for b in range(4):
        for pos in range(ids.shape[1]):
            lab = r["mlm_labels"][b, pos].item()
            if lab != -100:
                assert mask[b, pos] == 1
                nll.append(-torch.log_softmax(strat.mlm_head(s.text_feats[b, pos]), -1)[lab])
    assert r["mlm"].item() == pytest.approx(torch.stack(nll).mean().item(), rel=1e-5)

    # Eq. 4, image: h^I on the student's CLS + visible tokens vs h^I on the teacher's same tokens
    hI, hT = strat.fea_proj_image, strat.fea_proj_text
    # the teacher runs under inference_mode (its outputs are targets, never differentiated), so
    # the hand computation, which only compares values, runs without autograd too
    with torch.no_grad():
        fea = []
        for b in range(4):
            positions = [0] + [1 + int(i) for i in keep[b]]
            for j, p in enumerate(positions):
                fea.append(((hI(s.image_feats[b, j]) - hI(t.image_feats[b, p])) ** 2).mean())
        assert r["feamim"].item() == pytest.approx(torch.stack(fea).mean().item(), rel=1e-5)

        # Eq. 4, text: every real token (padding excluded)
        fea = [
            ((hT(s.text_feats[b, p]) - hT(t.text_feats[b, p])) ** 2).mean()
            for b in range(4)
            for p in range(ids.shape[1])
            if mask[b, p]
        ]
        assert r["feamlm"].item() == pytest.approx(torch.stack(fea).mean().item(), rel=1e-5)


@pytest.mark.parametrize("alpha", [0.2, 0.5, 0.8])
def test_alpha_weighting(alpha):
    strat, batch = make(alpha=alpha)
    out = strat(batch)
    for k in ("mim", "mlm"):
        assert out[f"loss_{k}"].item() == pytest.approx((1 - alpha) * out[k].item(), rel=1e-6)
    for k in ("feamim", "feamlm"):
        assert out[f"loss_{k}"].item() == pytest.approx(alpha * out[k].item(), rel=1e-6)
    assert out["loss_itm"].item() == pytest.approx(out["itm"].item())
    assert set(k for k in out if k.startswith("loss")) == {
        "loss_mim",
        "loss_mlm",
        "loss_feamim",
        "loss_feamlm",
        "loss_itm",
    }


def test_upstream_fixed_half_weights():
    strat, batch = make(alpha=0.8, quirks={"fixed_half_weights": True})
    out = strat(batch)
    for k in ("mim", "mlm", "feamim", "feamlm"):
        assert out[f"loss_{k}"].item() == pytest.approx(0.5 * out[k].item(), rel=1e-6)


def test_bad_alpha():
    with pytest.raises(ValueError):
        make(alpha=1.5)


def test_teacher_is_frozen_copy_and_gets_no_gradient():
    strat, batch = make()
    assert all(not p.requires_grad for p in strat.teacher.parameters())
    for (n, p), (_, q) in zip(strat.teacher.state_dict().items(), strat.encoder.state_dict().items()):
        assert torch.equal(p, q), n
    strat.train()
    assert not strat.teacher.training and strat.encoder.training
    total(strat(batch)).backward()
    assert all(p.grad is None for p in strat.teacher.parameters())
    # resumable state keeps the teacher; the artifact and the optimiser do not (declared transient)
    keys = strat.state_dict().keys()
    assert any(k.startswith("teacher.") for k in keys)
    assert strat.transient_state_prefixes() == ("teacher.",)
    assert all(k.startswith("teacher.") for k in keys if k.startswith(strat.transient_state_prefixes()))


def test_teacher_ema_after_optimizer_step():
    strat, batch = make(ema_decay=0.9)
    strat.train()
    opt = torch.optim.SGD([p for p in strat.parameters() if p.requires_grad], lr=0.1)
    total(strat(batch)).backward()
    opt.step()
    before = {k: v.clone() for k, v in strat.teacher.state_dict().items()}
    student = {k: v.clone() for k, v in strat.encoder.state_dict().items()}
    assert any(not torch.equal(before[k], student[k]) for k in before)  # the step moved the student
    strat.after_optimizer_step()
    for k, v in strat.teacher.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, 0.9 * before[k] + 0.1 * student[k], rtol=0, atol=1e-6)


def test_teacher_resynced_when_encoder_reloaded_after_construction():
    strat, batch = make()
    other = build_encoder(tiny_encoder_cfg())  # different random weights
    strat.encoder.load_state_dict(other.state_dict())
    assert int(strat.teacher_synced) == 0
    strat.train()
    strat(batch)
    assert int(strat.teacher_synced) == 1
    for k, v in strat.teacher.state_dict().items():
        assert torch.equal(v, other.state_dict()[k]), k
    # once synced (also after a resume: the flag is saved), it is not copied again
    strat.teacher.type_embed.weight.data.add_(1.0)
    strat(batch)
    assert not torch.equal(strat.teacher.type_embed.weight, strat.encoder.type_embed.weight)


def test_per_term_gradient_targets():
    strat, batch = make()
    strat.train()
    torch.manual_seed(5)
    out = strat(batch)
    heads = {
        "mim": "mim_decoder.",
        "mlm": "mlm_head.",
        "feamim": "fea_proj_image.",
        "feamlm": "fea_proj_text.",
        "itm": "itm_head.",
    }
    params = dict(strat.named_parameters())
    for term, own in heads.items():
        strat.zero_grad(set_to_none=True)
        out[f"loss_{term}"].backward(retain_graph=True)
        for name, p in params.items():
            got = p.grad is not None and bool(p.grad.any())
            if name.startswith("teacher."):
                assert not got, (term, name)
            elif any(name.startswith(h) for h in heads.values()):
                assert got == name.startswith(own), (term, name)
        # every reconstruction term also trains the encoder (vision, text and fusion)
        for part in ("encoder.vision.blocks.0.", "encoder.text.encoder.layer.0.", "encoder.fusion.image_layers.0."):
            assert any(params[n].grad is not None and params[n].grad.any() for n in params if n.startswith(part)), (
                term,
                part,
            )


def test_quirk_feamim_bypass_decoder_trains_only_decoder_input():
    strat, batch = make(quirks={"feamim_bypass_decoder": True, "fea_target_grad": True})
    strat.train()
    out = strat(batch)
    out["loss_feamim"].backward()
    enc_grads = [p.grad for p in strat.encoder.parameters() if p.grad is not None]
    assert all(not g.any() for g in enc_grads)  # masked positions are just the mask token
    assert strat.mim_decoder.mask_token.grad.abs().sum() > 0
    assert strat.mim_decoder.embed.weight.grad.abs().sum() > 0
    assert strat.fea_proj_image.weight.grad is None


def test_quirk_fresh_teacher_and_per_micro_batch_ema():
    strat, batch = make(upstream_quirks=True)
    assert strat.quirks["fresh_teacher"] and strat.quirks["ema_per_micro_batch"]
    assert int(strat.teacher_synced) == 1
    assert not torch.equal(strat.teacher.fusion.text_pooler.dense.weight, strat.encoder.fusion.text_pooler.dense.weight)
    strat.train()
    assert strat.teacher.training  # the released teacher follows train(): dropout active
    strat(batch)
    before = {k: v.clone() for k, v in strat.teacher.state_dict().items()}
    strat.after_optimizer_step()  # no-op under the quirk
    assert all(torch.equal(before[k], v) for k, v in strat.teacher.state_dict().items())
    strat(batch)  # the next micro-batch updates the teacher first
    w = strat.teacher.type_embed.weight
    torch.testing.assert_close(w, 0.995 * before["type_embed.weight"] + 0.005 * strat.encoder.type_embed.weight)


def test_unknown_quirk_rejected():
    with pytest.raises(KeyError, match="unknown quirks"):
        make(quirks={"nonsense": True})


def test_special_ids_key_checked_and_derived():
    torch.manual_seed(0)
    enc = build_encoder(tiny_encoder_cfg())
    cfg = MRPretrain.default_config("tiny")
    strat = MRPretrain(enc, cfg)  # no special_ids: derived from the encoder's tokenizer
    assert strat.special_ids["mask"] == 103 and strat.special_ids["pad"] == 0
    cfg["special_ids"] = {"mask": 103}
    with pytest.raises(KeyError, match="special_ids"):
        MRPretrain(enc, cfg)


def test_freeze_text_keeps_the_text_tower_and_is_a_recorded_deviation():
    from benchmarks.cases import encoder_cfg, synthetic_batch
    from umdbench.models import build_encoder, build_tokenizer
    from umdbench.plan.config import CellSpec, resolve
    from umdbench.plugin import get_registries
    from umdbench.run.build_optim import build_optim_wrapper
    from umdbench.run.build_strategy import special_ids
    from umdbench_plugins.pretrain.mr import MRPretrain

    torch.manual_seed(0)
    ecfg = encoder_cfg("tiny")
    cfg = {**MRPretrain.default_config("tiny"), "freeze_text": True, "special_ids": special_ids(build_tokenizer(ecfg))}
    strategy = MRPretrain(build_encoder(ecfg), cfg)
    optim = build_optim_wrapper(strategy, {**cfg["train"], "amp": False, "step_in_backward": False})
    before = {k: v.clone() for k, v in strategy.encoder.text.state_dict().items()}
    fusion = {k: v.clone() for k, v in strategy.encoder.fusion.state_dict().items()}
    out = strategy(synthetic_batch(ecfg, 4, with_labels=False))
    sum(v for k, v in out.items() if k.startswith("loss")).backward()
    optim.step()
    after = strategy.encoder.text.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(not torch.equal(fusion[k], v) for k, v in strategy.encoder.fusion.state_dict().items())
    registries = get_registries()
    run = resolve(CellSpec("mr", ("direct",), "medsynth", overrides=(("pretrain.freeze_text", True),)), registries)
    assert any(d.startswith("pretrain (mr): freeze_text") for d in run.deviations)
    assert resolve(CellSpec("mr", ("direct",), "medsynth"), registries).config["pretrain"]["freeze_text"] is False

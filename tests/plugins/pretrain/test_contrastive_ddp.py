"""CLIP / FLIP's learned temperature, and their in-batch negatives under data parallelism.

The logit scale is clamped after the optimiser step (OpenCLIP), so the forward pass never cuts its
gradient. Two torchrun ranks on the halves of a batch train as one process on the whole batch
(embeddings gathered across ranks with their gradients): the equivalence harness checks that for
CLIP and FLIP, and that ``global_negatives=false`` does not (tests/run/test_world_size_invariance.py).
"""

import math

import pytest
import torch

from umdbench.plan.config import CellSpec, resolve
from umdbench.plugin import get_registries


def _clip(**cfg):
    from umdbench.models import build_encoder
    from umdbench.models.tiny_fixtures import synthetic_pairs, tiny_encoder_cfg
    from umdbench_plugins.pretrain.clip import CLIPPretrain

    torch.manual_seed(0)
    enc_cfg = tiny_encoder_cfg(image_size=64, vision={"embed_dim": 64, "depth": 1, "num_heads": 2})
    strat = CLIPPretrain(build_encoder(enc_cfg), {**CLIPPretrain.default_config("tiny"), **cfg})
    batch, _ = synthetic_pairs(4, image_size=64, max_len=enc_cfg["max_text_len"], seed=1)
    return strat, batch


def test_logit_scale_past_the_bound_gets_gradient_and_is_clamped_after_the_step():
    strat, batch = _clip()
    bound = math.log(100.0)
    assert strat.max_log_scale == pytest.approx(bound)
    with torch.no_grad():
        strat.logit_scale.fill_(math.log(250.0))  # e.g. an optimiser step overshot the bound
    out = strat(batch)
    assert out["logit_scale"].item() == pytest.approx(250.0, rel=1e-5)  # the forward uses it as it is
    out["loss_clip"].backward()
    assert strat.logit_scale.grad is not None and strat.logit_scale.grad.abs().item() > 0
    strat.after_optimizer_step()
    assert strat.logit_scale.item() == pytest.approx(bound)
    # at the bound it still receives gradient (a clamp in the forward would give exactly zero)
    strat.zero_grad(set_to_none=True)
    strat(batch)["loss_clip"].backward()
    assert strat.logit_scale.grad.abs().item() > 0
    # below zero (temperature above 1) comes back to 0
    with torch.no_grad():
        strat.logit_scale.fill_(-0.5)
    strat.after_optimizer_step()
    assert strat.logit_scale.item() == 0.0
    # inside the bounds the step leaves it alone
    with torch.no_grad():
        strat.logit_scale.fill_(2.0)
    strat.after_optimizer_step()
    assert strat.logit_scale.item() == 2.0


def test_logit_scale_can_come_back_under_an_optimiser():
    # a scale pushed past the bound and then clamped keeps learning: plain SGD on a loss that wants
    # a lower scale moves it below the bound (a forward clamp would leave it stuck at exactly ln 100)
    strat, batch = _clip()
    with torch.no_grad():
        strat.logit_scale.fill_(math.log(300.0))
    opt = torch.optim.SGD([strat.logit_scale], lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        out = strat(batch)
        # the loss a model with random embeddings wants: a smaller scale (flatter softmax) on these pairs
        out["loss_clip"].backward()
        opt.step()
        strat.after_optimizer_step()
        assert 0.0 <= strat.logit_scale.item() <= math.log(100.0) + 1e-6
    assert strat.logit_scale.item() < math.log(100.0) - 1e-3


def test_initial_scale_is_within_the_bounds():
    strat, _ = _clip(init_temperature=0.001)  # 1/0.001 = 1000 > 100
    assert strat.logit_scale.item() == pytest.approx(math.log(100.0))


def test_per_rank_infonce_is_a_recorded_deviation():
    registries = get_registries()
    for name in ("clip", "flip"):
        run = resolve(CellSpec(name, ("direct",), "medsynth"), registries)
        assert not any("global_negatives" in d for d in run.deviations)
        assert run.config["pretrain"]["global_negatives"] is True
        run = resolve(
            CellSpec(name, ("direct",), "medsynth", overrides=(("pretrain.global_negatives", False),)), registries
        )
        assert any(d.startswith(f"pretrain ({name}): global_negatives=false") for d in run.deviations)

"""The optimiser step inside backward (umdbench.run.step_in_backward): the same updates as the
whole-model step, bit for bit, and used only where nothing needs every gradient at once."""

import pytest
import torch

from umdbench.api import deep_merge
from umdbench.errors import ConfigError
from umdbench.kit.tasktypes import ImageTextPairs
from umdbench.models import build_encoder
from umdbench.models.tiny_fixtures import synthetic_pairs, tiny_encoder_cfg
from umdbench.run.build_optim import build_optim_wrapper
from umdbench.run.stage_model import StageModel
from umdbench_plugins.pretrain.mr import MRPretrain
from umdbench_plugins.tune.gmcoord import GMCoord


def _mr_model(train: dict):
    torch.manual_seed(0)
    enc = build_encoder(tiny_encoder_cfg())
    batch, special = synthetic_pairs(4)
    cfg = MRPretrain.default_config("tiny")
    cfg["special_ids"] = special
    cfg["train"] = deep_merge(cfg["train"], train)
    strategy = MRPretrain(enc, cfg)
    model = StageModel(strategy, ImageTextPairs())
    model.train()
    return model, build_optim_wrapper(strategy, cfg["train"]), batch


@pytest.mark.parametrize("bucket_bytes", [1, 64 << 20])  # one parameter per step call / all in one bucket
def test_updates_are_bit_identical_to_the_whole_model_step(bucket_bytes, monkeypatch):
    plain, plain_opt, batch = _mr_model({"grad_clip": None, "step_in_backward": False})
    moved, moved_opt, _ = _mr_model({"grad_clip": None, "step_in_backward": True})
    assert type(moved_opt).__name__.startswith("StepInBackward")
    assert not type(plain_opt).__name__.startswith("StepInBackward")
    monkeypatch.setattr(type(moved_opt), "bucket_bytes", bucket_bytes)
    start = {k: v.clone() for k, v in plain.state_dict().items()}
    for _ in range(3):
        # mmengine's loop: torch.manual_seed fixes the masks of both runs alike
        torch.manual_seed(1)
        plain.train_step(batch, plain_opt)
        torch.manual_seed(1)
        moved.train_step(batch, moved_opt)
    after_plain, after_moved = plain.state_dict(), moved.state_dict()
    assert any(not torch.equal(start[k], after_plain[k]) for k in start)  # training moved the weights
    for key, value in after_plain.items():
        assert torch.equal(value, after_moved[key]), key  # student, heads and EMA teacher alike
    for p in moved.parameters():
        assert p.grad is None  # every gradient was dropped after its step
    state_plain = plain_opt.optimizer.state_dict()["state"]
    state_moved = moved_opt.optimizer.state_dict()["state"]
    assert state_plain.keys() == state_moved.keys()
    for idx, st in state_plain.items():
        for name, value in st.items():
            assert torch.equal(value, state_moved[idx][name]), (idx, name)


def test_auto_uses_it_only_under_bf16_and_where_compatible():
    model, opt, _ = _mr_model({"grad_clip": None})  # tiny: fp32, "auto" -> not used
    assert not type(opt).__name__.startswith("StepInBackward")
    strategy = model.strategy
    bf16 = build_optim_wrapper(strategy, {**strategy.cfg["train"], "grad_clip": None, "amp": "bf16"})
    assert type(bf16).__name__ == "StepInBackwardBf16OptimWrapper"
    clipped = build_optim_wrapper(strategy, {**strategy.cfg["train"], "grad_clip": 1.0, "amp": "bf16"})
    assert not type(clipped).__name__.startswith("StepInBackward")  # global-norm clipping needs all


def test_forcing_it_where_it_cannot_work_is_one_paragraph():
    model, _, _ = _mr_model({"grad_clip": None})
    with pytest.raises(ConfigError, match=r"grad_clip.*step_in_backward=auto"):
        build_optim_wrapper(model.strategy, {**model.strategy.cfg["train"], "grad_clip": 1.0, "step_in_backward": True})
    # GM-Coord rescales the gradients between backward and the step
    assert GMCoord.modulate_gradients is not MRPretrain.modulate_gradients
    from umdbench.run.step_in_backward import incompatibility

    gm = GMCoord.__new__(GMCoord)
    assert "modulates gradients" in incompatibility(gm, {})
    with pytest.raises(ConfigError, match="auto, true or false"):
        build_optim_wrapper(
            model.strategy, {**model.strategy.cfg["train"], "grad_clip": None, "step_in_backward": "sometimes"}
        )


def test_a_replaced_wrapper_and_its_optimiser_state_are_freed():
    import gc
    import weakref

    model, opt, batch = _mr_model({"grad_clip": None, "step_in_backward": True})
    model.train_step(batch, opt)
    gone = weakref.ref(opt.optimizer)
    hooks_before = sum(len(p._post_accumulate_grad_hooks or {}) for p in model.parameters())
    opt = build_optim_wrapper(model.strategy, model.strategy.cfg["train"])  # the old one is dropped
    gc.collect()
    assert gone() is None
    assert sum(len(p._post_accumulate_grad_hooks or {}) for p in model.parameters()) == hooks_before
    model.train_step(batch, opt)  # the new wrapper steps alone
    assert all(p.grad is None for p in model.parameters())


def test_step_in_backward_true_with_several_processes_is_refused_at_planning(tmp_path, capsys):
    from umdbench.cli import main

    args = [
        "run",
        "--pretrain",
        "none",
        "--tune",
        "direct",
        "--dataset",
        "medsynth",
        "--work-dir",
        str(tmp_path),
        "--nproc-per-node",
        "2",
        "--dry-run",
        "--cfg-options",
    ]
    assert main(args + ["tune.0.train.step_in_backward=true"]) == 2
    # the error is one line (a note about an unrelated plugin that failed to load may come before it)
    (err,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("umdbench: error:")]
    assert "tune.0.train.step_in_backward=true cannot be used with 2 processes" in err
    assert main(args + ["tune.0.train.step_in_backward=auto"]) == 0

"""``direct`` (full fine-tuning) and ``linear`` (frozen encoder) tuning strategies."""

from __future__ import annotations

import pytest
import torch

from tests.kit.test_tasks import ToyEncoder, task_info, toy_batch
from umdbench.api import TRAIN_KEYS, TuneStrategy
from umdbench_plugins.tune.direct import DirectTune
from umdbench_plugins.tune.gmcoord import GMCoord
from umdbench_plugins.tune.linear import LinearProbe

DATASETS = ("vqa-rad", "slake", "vqa-med-2019", "roco", "melinda", "medsynth")


def _train(strategy, batch, steps=40, lr=1e-2):
    params = list(strategy.parameters())  # frozen ones included: they must simply not move
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    strategy.train()
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        out = strategy(batch)
        loss = sum(v for k, v in out.items() if k.startswith("loss"))
        loss.backward()
        strategy.modulate_gradients()
        opt.step()
        strategy.after_optimizer_step()
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize("cls", [DirectTune, LinearProbe, GMCoord])
@pytest.mark.parametrize("task", ["vqa", "classification", "retrieval"])
def test_a_few_steps_reduce_the_loss(cls, task):
    torch.manual_seed(0)
    strategy = cls(ToyEncoder(dropout=0.0), {}, task_info(task, 5))
    batch = toy_batch(task, b=16, k=3)
    losses = _train(strategy, batch)
    # a linear pair scorer on frozen random features learns retrieval slowly (no interaction term)
    factor = 0.85 if (cls is LinearProbe and task == "retrieval") else 0.7
    assert losses[-1] < factor * losses[0], losses[::10]


def test_linear_leaves_encoder_unchanged_and_trains_head():
    torch.manual_seed(0)
    enc = ToyEncoder()
    strategy = LinearProbe(enc, {}, task_info("vqa", 5))
    enc_before = {n: p.detach().clone() for n, p in enc.named_parameters()}
    head_before = {n: p.detach().clone() for n, p in strategy.head.named_parameters()}
    assert all(not p.requires_grad for p in enc.parameters())
    assert all(p.requires_grad for p in strategy.head.parameters())
    _train(strategy, toy_batch("vqa", b=16), steps=5)
    for n, p in enc.named_parameters():
        assert torch.equal(p, enc_before[n]), n
        assert p.grad is None
    assert any(not torch.equal(p, head_before[n]) for n, p in strategy.head.named_parameters())
    # the frozen encoder runs in eval mode (no dropout) even while the strategy trains
    strategy.train()
    assert not enc.training and strategy.head.training
    batch = toy_batch("vqa", b=4)
    torch.testing.assert_close(strategy(batch)["loss_task"], strategy(batch)["loss_task"])
    # only head parameters would reach an optimiser that filters on requires_grad
    trainable = [n for n, p in strategy.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("head.") for n in trainable)


def test_direct_trains_encoder_and_head():
    torch.manual_seed(0)
    strategy = DirectTune(ToyEncoder(dropout=0.0), {}, task_info("vqa", 5))
    before = {n: p.detach().clone() for n, p in strategy.named_parameters()}
    _train(strategy, toy_batch("vqa", b=16), steps=3)
    moved = {n for n, p in strategy.named_parameters() if not torch.equal(p, before[n])}
    assert any(n.startswith("encoder.text.") for n in moved)
    assert any(n.startswith("encoder.fusion.") for n in moved)
    assert any(n.startswith("head.") for n in moved)
    assert strategy.param_group_of("head.0.weight") == "head"
    assert strategy.param_group_of("encoder.fusion.text_layer.weight") == "fusion"
    assert strategy.transient_state_prefixes() == () and strategy.head_state_prefixes() == ()


def test_vqa_predict_shape_and_bce_option():
    torch.manual_seed(0)
    strategy = DirectTune(ToyEncoder(), {"loss": "bce"}, task_info("vqa", 9)).eval()
    batch = toy_batch("vqa", b=4, num_classes=9)
    with torch.no_grad():
        assert strategy.predict(batch)["logits"].shape == (4, 9)
        bce = strategy(batch)["loss_task"]
        strategy.loss_name = "ce"
        ce = strategy(batch)["loss_task"]
    # at init (logits ~ 0) BCE x C is ~ C*log 2, CE is ~ log C
    assert float(bce) == pytest.approx(9 * torch.log(torch.tensor(2.0)).item(), rel=0.1)
    assert float(ce) == pytest.approx(torch.log(torch.tensor(9.0)).item(), rel=0.1)


def test_unseen_labels_do_not_contribute():
    torch.manual_seed(0)
    strategy = DirectTune(ToyEncoder(), {}, task_info("vqa", 5)).eval()
    batch = toy_batch("vqa", b=6)
    batch["label"][[1, 4]] = -1
    keep = batch["label"] >= 0
    sub = {k: v[keep] for k, v in batch.items()}
    with torch.no_grad():
        torch.testing.assert_close(strategy(batch)["loss_task"], strategy(sub)["loss_task"])


def test_retrieval_predict_scores_pairs():
    torch.manual_seed(0)
    strategy = DirectTune(ToyEncoder(), {}, task_info("retrieval")).eval()
    batch = {k: v for k, v in toy_batch("retrieval", b=5).items() if not k.startswith("neg_")}
    with torch.no_grad():
        out = strategy.predict(batch)
    assert set(out) == {"score"} and out["score"].shape == (5,)
    with pytest.raises(ValueError, match="neg_text_ids"):
        strategy(batch)


@pytest.mark.parametrize("cls", [DirectTune, LinearProbe, GMCoord])
def test_presets_are_well_formed(cls):
    assert issubclass(cls, TuneStrategy) and cls.supervised
    assert set(cls.presets) == {"tiny", "small", "paper"}
    for preset in ("tiny", "small", "paper"):
        for ds in (None,) + DATASETS:
            cfg = cls.default_config(preset, ds)
            assert set(cfg["train"]) == set(TRAIN_KEYS), (preset, ds)
            assert "per_dataset" not in cfg
            assert cfg["train"]["max_iters"] > 0 and cfg["train"]["batch_size"] > 0
            assert set(cfg["train"]["lr_mult"]) == {"encoder", "fusion", "head"}
            cls(ToyEncoder(), cfg, task_info("retrieval" if ds == "roco" else "vqa", 3))


def test_direct_paper_preset_is_the_m3ae_recipe():
    expect = {  # dataset: (batch, epochs, head multiplier)
        "vqa-rad": (64, 50, 50.0),
        "slake": (32, 15, 50.0),
        "vqa-med-2019": (32, 10, 50.0),
        "melinda": (16, 20, 10.0),
        "roco": (256, 10, 5.0),
    }
    sizes = {"vqa-rad": 3064, "slake": 4919, "vqa-med-2019": 9600, "melinda": 4352, "roco": 65450}
    for ds, (batch, epochs, head) in expect.items():
        t = DirectTune.default_config("paper", ds)["train"]
        assert t["batch_size"] == batch and t["lr"] == 5e-6 and t["warmup_ratio"] == 0.1
        assert t["lr_mult"] == {"encoder": 1.0, "fusion": 5.0, "head": head}
        assert t["schedule"] == "linear"
        assert t["max_iters"] == -(-sizes[ds] // batch) * epochs


def _real_tiny():
    models = pytest.importorskip("umdbench.models")
    if not hasattr(models, "build_encoder") or "tiny" not in getattr(models, "ENCODER_PRESETS", {}):
        pytest.skip("umdbench.models.build_encoder / ENCODER_PRESETS['tiny'] not available yet")
    preset = models.ENCODER_PRESETS["tiny"]
    return models.build_encoder(preset), preset


@pytest.mark.parametrize("cls", [DirectTune, LinearProbe])
def test_real_tiny_encoder_vqa_and_retrieval(cls):
    torch.manual_seed(0)
    enc, preset = _real_tiny()
    size, length, b = preset["image_size"], min(int(preset["max_text_len"]), 12), 4
    ids = torch.randint(5, 100, (b, length))
    batch = {
        "image": torch.randn(b, 3, size, size),
        "text_ids": ids,
        "text_mask": torch.ones(b, length, dtype=torch.long),
        "label": ids[:, 1] % 5,
        "neg_text_ids": torch.randint(5, 100, (b, 2, length)),
        "neg_text_mask": torch.ones(b, 2, length, dtype=torch.long),
    }
    s = cls(enc, {}, task_info("vqa", 5))
    assert s.head[0].in_features == 2 * enc.hidden_size
    enc_before = {n: p.detach().clone() for n, p in enc.named_parameters()}
    losses = _train(s, batch, steps=8, lr=3e-3)
    assert losses[-1] < losses[0]
    unchanged = all(torch.equal(p, enc_before[n]) for n, p in enc.named_parameters())
    assert unchanged == (cls is LinearProbe)
    s.eval()
    with torch.no_grad():
        assert s.predict(batch)["logits"].shape == (b, 5)
    r = cls(enc, {}, task_info("retrieval"))
    r.train()
    assert r(batch)["loss_task"].dim() == 0
    r.eval()
    with torch.no_grad():
        pair = {k: v for k, v in batch.items() if not k.startswith("neg_")}
        assert r.predict(pair)["score"].shape == (b,)

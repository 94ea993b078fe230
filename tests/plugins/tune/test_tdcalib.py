"""TD-Calib (Eq. 8): the four reconstruction terms on downstream data, without labels."""

import pytest
import torch

from umdbench.api import TaskInfo, TuneStrategy, deep_merge
from umdbench.models import build_encoder
from umdbench.models.reconstruction import MultiLevelReconstruction
from umdbench.models.tiny_fixtures import synthetic_pairs, tiny_encoder_cfg
from umdbench_plugins.pretrain.mr import MRPretrain
from umdbench_plugins.tune.tdcalib import TDCalib


class NoLabelBatch(dict):
    """A batch whose labels must never be looked at."""

    def __getitem__(self, key):
        if key in ("label", "answer_type"):
            raise AssertionError(f"TD-Calib read batch[{key!r}]")
        return super().__getitem__(key)

    def get(self, key, default=None):
        if key in ("label", "answer_type"):
            raise AssertionError(f"TD-Calib read batch.get({key!r})")
        return super().get(key, default)

    def items(self):
        raise AssertionError("TD-Calib iterated over the batch")


def make(enc=None, **overrides):
    torch.manual_seed(0)
    enc = enc or build_encoder(tiny_encoder_cfg())
    batch, special = synthetic_pairs(4)
    cfg = deep_merge(TDCalib.default_config("tiny"), overrides)
    cfg["special_ids"] = special
    return TDCalib(enc, cfg, TaskInfo("vqa", 7, [str(i) for i in range(7)])), batch


def test_is_unsupervised_tuning_reusing_mr():
    assert issubclass(TDCalib, TuneStrategy) and issubclass(TDCalib, MultiLevelReconstruction)
    assert issubclass(MRPretrain, MultiLevelReconstruction)
    assert TDCalib.supervised is False and TDCalib.version == "1"
    strat, batch = make()
    with pytest.raises(NotImplementedError):
        strat.predict(batch)


def test_never_reads_labels():
    strat, batch = make()
    b = NoLabelBatch(batch, label=torch.zeros(4, dtype=torch.long), answer_type=torch.zeros(4, dtype=torch.long))
    strat.train()
    out = strat(b)
    assert set(k for k in out if k.startswith("loss")) == {"loss_mim", "loss_mlm", "loss_feamim", "loss_feamlm"}
    sum(v for k, v in out.items() if k.startswith("loss")).backward()


def test_equal_weights_by_default():
    strat, batch = make()
    out = strat(batch)
    for k in ("mim", "mlm", "feamim", "feamlm"):
        assert out[f"loss_{k}"].item() == pytest.approx(out[k].item())


@pytest.mark.parametrize("over", [{"upstream_feature_weight": True}, {"upstream_quirks": True}])
def test_upstream_feature_weight(over):
    strat, batch = make(**over)
    out = strat(batch)
    for k in ("feamim", "feamlm"):
        assert out[f"loss_{k}"].item() == pytest.approx(1e-5 * out[k].item(), rel=1e-6)
    for k in ("mim", "mlm"):
        assert out[f"loss_{k}"].item() == pytest.approx(out[k].item())
    if "upstream_quirks" in over:
        assert not strat.quirks["fresh_teacher"]  # MR-Pretrain-only behaviour


def test_alpha_option():
    strat, batch = make(alpha=0.2)
    out = strat(batch)
    assert out["loss_mim"].item() == pytest.approx(0.8 * out["mim"].item(), rel=1e-6)
    assert out["loss_feamlm"].item() == pytest.approx(0.2 * out["feamlm"].item(), rel=1e-6)


def test_same_terms_as_mr_pretrain():
    torch.manual_seed(0)
    enc = build_encoder(tiny_encoder_cfg())
    batch, special = synthetic_pairs(4)
    mr_cfg = MRPretrain.default_config("tiny")
    mr_cfg["special_ids"] = special
    mr = MRPretrain(enc, mr_cfg)
    td, _ = make(enc=enc)
    td.load_state_dict({k: v for k, v in mr.state_dict().items() if not k.startswith("itm_head.")}, strict=True)
    torch.manual_seed(9)
    a = mr.reconstruction_terms(batch)
    torch.manual_seed(9)
    b = td.reconstruction_terms(batch)
    for k in ("mim", "mlm", "feamim", "feamlm"):
        assert a[k].item() == pytest.approx(b[k].item(), rel=1e-6), k


def test_paper_hyper_parameters_per_dataset():
    expect = {"vqa-rad": 1e-5, "slake": 5e-6, "vqa-med-2019": 5e-6, "roco": 1e-5, "melinda": 1e-5}
    for name, lr in expect.items():
        cfg = TDCalib.default_config("paper", name)
        t = cfg["train"]
        assert t["lr"] == lr
        assert t["weight_decay"] == 0.01 and t["warmup_ratio"] == 0.1 and t["schedule"] == "linear"
        assert set(t["lr_mult"]) == {"encoder", "fusion", "head"}
        assert cfg["image_mask_ratio"] == 0.75 and cfg["text_mask_ratio"] == 0.15
        assert "per_dataset" not in cfg


def test_handoff_is_the_encoder_only():
    strat, batch = make()
    strat.train()
    opt = torch.optim.AdamW([p for p in strat.parameters() if p.requires_grad], lr=1e-3)
    sum(v for k, v in strat(batch).items() if k.startswith("loss")).backward()
    opt.step()
    strat.after_optimizer_step()
    assert strat.transient_state_prefixes() == ("teacher.",)
    state = {k[8:]: v for k, v in strat.state_dict().items() if k.startswith("encoder.")}
    fresh = build_encoder(tiny_encoder_cfg())
    fresh.load_state_dict(state, strict=True)
    assert all(p.grad is None for p in strat.teacher.parameters())


def test_updates_are_identical_when_labels_are_shuffled():
    """Three optimiser steps with true labels and with shuffled labels give bit-identical weights."""
    results = []
    for labels in (torch.tensor([0, 1, 2, 3]), torch.tensor([3, 0, 1, 2])):
        strat, batch = make()
        batch = dict(batch, label=labels, answer_type=torch.zeros(4, dtype=torch.long))
        optim = torch.optim.AdamW([p for p in strat.parameters() if p.requires_grad], lr=1e-3)
        strat.train()
        torch.manual_seed(123)  # the masks are random: same draws in both runs
        for _ in range(3):
            optim.zero_grad()
            out = strat(batch)
            sum(v for k, v in out.items() if k.startswith("loss")).backward()
            optim.step()
            strat.after_optimizer_step()
        results.append({k: v.clone() for k, v in strat.state_dict().items()})
    assert results[0].keys() == results[1].keys()
    for key in results[0]:
        assert torch.equal(results[0][key], results[1][key]), key

"""Config parsing, overrides and error messages (no training)."""

import pytest

from umdbench.errors import ConfigError
from umdbench.plan.config import apply_override, parse_override, parse_tune_chain


def test_tune_chain_parses_left_to_right():
    assert parse_tune_chain("tdcalib+gmcoord") == ("tdcalib", "gmcoord")
    assert parse_tune_chain("direct") == ("direct",)


@pytest.mark.parametrize("bad", ["", "+direct", "direct+", "a++b"])
def test_tune_chain_rejects_empty_parts(bad):
    with pytest.raises(ConfigError, match="chain of tuning strategy names"):
        parse_tune_chain(bad)


def test_tune_chain_rejects_repeats():
    with pytest.raises(ConfigError, match="names gmcoord more than once"):
        parse_tune_chain("gmcoord+tdcalib+gmcoord")


@pytest.mark.parametrize(
    "text,expected",
    [
        ("a.b=3", ("a.b", 3)),
        ("a.b=1e-4", ("a.b", 1e-4)),
        ("a=true", ("a", True)),
        ("a=[1, 2]", ("a", [1, 2])),
        ("a.b=cosine", ("a.b", "cosine")),
        ("a=None", ("a", None)),
        ("a=null", ("a", None)),
        ("a=none", ("a", "none")),
    ],
)
def test_parse_override_values(text, expected):
    assert parse_override(text) == expected


@pytest.mark.parametrize("bad", ["novalue", "=3", "a..b=1", "a=[1,"])
def test_parse_override_rejects_malformed(bad):
    with pytest.raises(ConfigError):
        parse_override(bad)


def test_apply_override_walks_dicts_and_lists():
    cfg = {"tune": [{"train": {"lr": 1.0}}], "dataset": {"options": {}}}
    apply_override(cfg, "tune.0.train.lr", 0.5)
    apply_override(cfg, "dataset.options.layout", "osf")  # free-form options may gain keys
    assert cfg["tune"][0]["train"]["lr"] == 0.5 and cfg["dataset"]["options"]["layout"] == "osf"


def test_apply_override_unknown_key_suggests():
    cfg = {"pretrain": {"train": {"max_iters": 10}}}
    with pytest.raises(ConfigError, match="Did you mean max_iters"):
        apply_override(cfg, "pretrain.train.max_iter", 5)
    with pytest.raises(ConfigError, match="use an index"):
        apply_override({"tune": [{}]}, "tune.3.x", 1)


def test_star_index_reaches_every_stage_that_has_the_key():
    """`run --cfg-options tune.*.KEY` reads as `sweep` reads it: every tuning stage that has KEY."""
    cfg = {
        "tune": [{"type": "tdcalib", "train": {"lr": 1.0}}, {"type": "direct", "pooling": "cls", "train": {"lr": 1.0}}]
    }
    apply_override(cfg, "tune.*.train.lr", 0.5)
    apply_override(cfg, "tune.*.pooling", "mean")  # TD-Calib has no task head: left alone
    assert [t["train"]["lr"] for t in cfg["tune"]] == [0.5, 0.5]
    assert "pooling" not in cfg["tune"][0] and cfg["tune"][1]["pooling"] == "mean"
    with pytest.raises(ConfigError, match="no element of tune .a list of 2. has 'train.lrr'"):
        apply_override(cfg, "tune.*.train.lrr", 1)


def test_resolved_config_records_deviations_and_appended_direct():
    from umdbench.plan.config import CellSpec, resolve
    from umdbench.plugin import get_registries

    cell = CellSpec(
        pretrain="mr",
        tune=("tdcalib",),
        dataset="medsynth",
        overrides=(("pretrain.norm_pix_loss", True), ("tune.0.upstream_feature_weight", 1e-5)),
    )
    run = resolve(cell, get_registries())
    assert [s["type"] for s in run.config["tune"]] == ["tdcalib", "direct"]  # direct appended for evaluation
    text = "\n".join(run.config["deviations"])
    assert "'direct' stage was appended" in text
    assert "per-patch normalised pixels" in text and "weighted 1e-05" in text
    clean = resolve(CellSpec(pretrain="mr", tune=("tdcalib", "gmcoord"), dataset="medsynth"), get_registries())
    assert clean.config["deviations"] == []

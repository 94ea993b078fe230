"""Suites: the paper's tables as compact grids (registry.toml), plugin suites, paper numbers."""

import pytest

from tests.support import write_plugin
from umdbench.errors import ConfigError
from umdbench.plan.suites import Suite, all_suites, get_suite
from umdbench.plugin import get_registries
from umdbench.results.paper_results import TABLES


@pytest.fixture(scope="module")
def registries():
    return get_registries()


def test_builtin_suites_are_declared(registries):
    names = {s.name for s in all_suites(registries)}
    assert {"table1", "table2", "table3", "table4", "table5", "fig5"} <= names


def test_table_grids(registries):
    t1 = get_suite(registries, "table1")
    assert [r.name for r in t1.rows] == ["MAE", "CLIP", "FLIP", "M3AE", "UMD"]
    assert t1.datasets == ("vqa-rad", "slake", "vqa-med-2019") and len(t1.grid()) == 15
    umd = t1.rows[-1]
    assert (umd.pretrain, umd.tune) == ("mr", ("tdcalib", "gmcoord"))
    assert all(r.tune == ("direct",) for r in t1.rows[:-1])
    assert get_suite(registries, "table2").datasets == ("roco",)
    assert get_suite(registries, "table3").metrics == ("accuracy",)


def test_table4_ablation_rows(registries):
    t4 = get_suite(registries, "table4")
    assert len(t4.grid()) == 24
    assert len(t4.cell_specs(seeds=2)) == 48
    rows = {r.paper_row: (r.pretrain, "+".join(r.tune), r.inferred) for r in t4.rows}
    assert rows == {
        "1": ("none", "direct", False),
        "2": ("mr", "direct", False),
        "3": ("none", "tdcalib", False),
        "4": ("none", "gmcoord", False),
        "5": ("none", "tdcalib+gmcoord", True),
        "6": ("mr", "tdcalib", True),
        "7": ("mr", "gmcoord", True),
        "8": ("mr", "tdcalib+gmcoord", False),
    }
    t5 = get_suite(registries, "table5")
    assert [r.paper_row for r in t5.rows] == list("12345678") and t5.datasets == ("melinda",)
    assert t5.metrics == ("accuracy", "auc", "sensitivity", "specificity")


def test_fig5_varies_alpha(registries):
    fig5 = get_suite(registries, "fig5")
    specs = fig5.cell_specs(seeds=1, user_overrides=(("tune.0.train.max_iters", 4),))
    assert len(specs) == 6
    assert {s.cell_name for s in specs} == {"UMD alpha=0.2", "UMD alpha=0.5", "UMD alpha=0.8"}
    alphas = sorted({dict(s.overrides)["pretrain.alpha"] for s in specs})
    assert alphas == [0.2, 0.5, 0.8]
    assert all(s.overrides[-1] == ("tune.0.train.max_iters", 4) for s in specs)  # user overrides last
    assert all(s.suite == "fig5" for s in specs)


def test_dataset_subset_and_unknown_dataset(registries):
    t4 = get_suite(registries, "table4")
    assert {p.dataset for p in t4.grid(["slake"])} == {"slake"}
    with pytest.raises(ConfigError, match="has no dataset"):
        t4.grid(["melinda"])


def test_extra_datasets_run_only_when_named(registries):
    """Fig. 5 is reported on VQA-RAD and SLAKE; VQA-Med-2019 is runnable beyond the paper, on request."""
    fig5 = get_suite(registries, "fig5")
    assert fig5.datasets == ("vqa-rad", "slake") and fig5.extra_datasets == ("vqa-med-2019",)
    assert {p.dataset for p in fig5.grid()} == {"vqa-rad", "slake"}  # the default is the paper's
    med = fig5.grid(["vqa-med-2019"])
    assert {p.dataset for p in med} == {"vqa-med-2019"} and len(med) == 3
    # the dataset's own options (validation split, skip records without images) come with it
    assert ("dataset.options.eval_split_fallback", "val") in med[0].overrides
    with pytest.raises(ConfigError, match="beyond the paper, vqa-med-2019"):
        fig5.grid(["roco"])
    assert fig5.shown_datasets({"vqa-rad"}) == ("vqa-rad", "slake")
    assert fig5.shown_datasets({"vqa-med-2019"}) == ("vqa-rad", "slake", "vqa-med-2019")


@pytest.mark.parametrize(
    "spec,message",
    [
        (
            {"datasets": ["a"], "extra_datasets": ["a"], "rows": [{"name": "a", "pretrain": "mr", "tune": "direct"}]},
            "in both 'datasets' and 'extra_datasets'",
        ),
        (
            {"datasets": ["a"], "extra_datasets": "b", "rows": [{"name": "a", "pretrain": "mr", "tune": "direct"}]},
            "'extra_datasets' must be a list",
        ),
        ({"rows": [{"name": "a", "pretrain": "mr", "tune": "direct"}]}, "datasets"),
        ({"datasets": ["medsynth"], "rows": []}, "rows"),
        ({"datasets": ["medsynth"], "rows": [{"name": "a", "pretrain": "mr"}]}, "needs name, pretrain and tune"),
        (
            {"datasets": ["medsynth"], "rows": [{"name": "a", "pretrain": "mr", "tune": "direct"}], "colour": 1},
            "unknown keys colour",
        ),
        ({"datasets": ["medsynth"], "rows": [{"name": "a", "pretrain": "mr", "tune": "direct"}] * 2}, "unique"),
        (
            {"datasets": ["medsynth"], "rows": [{"name": "a", "pretrain": "mr", "tune": "direct"}], "plot": "pie"},
            "plot",
        ),
    ],
)
def test_bad_suite_specs_are_explained(spec, message):
    with pytest.raises(ConfigError, match=message):
        Suite.from_spec("bad", spec)


def test_plugin_registers_a_suite(tmp_path):
    registries = get_registries((str(write_plugin(tmp_path)),))
    suite = get_suite(registries, "mini-ablation")
    assert suite.datasets == ("medsynth",) and len(suite.grid()) == 5
    assert registries.suite.origin("mini-ablation").startswith("path")
    get_registries(reload=True)


def test_paper_tables_are_consistent():
    for name, table in TABLES.items():
        for row, values in table.rows.items():
            assert len(values) == len(table.columns), (name, row)
    # UMD in Table 1 is the full pipeline, i.e. row 8 of Table 4 (same numbers in the paper)
    assert TABLES["table1"].rows["UMD"] == TABLES["table4"].rows["8"]
    assert TABLES["table3"].rows["UMD"][0] == TABLES["table5"].rows["8"][0]
    assert "inferred" in TABLES["table4"].notes[0]
    assert TABLES["table1"].value("UMD", "slake", "overall") == 84.73
    assert TABLES["table1"].value("MFB", "vqa-med-2019", "overall") is None


def test_a_sweep_runs_the_suites_seed_count_unless_told(capsys):
    from umdbench.cli import main
    from umdbench.plan.suites import get_suite
    from umdbench.plugin import get_registries

    registries = get_registries()
    assert {get_suite(registries, n).seeds for n in ("table1", "table2", "table3", "table4", "table5", "fig5")} == {3}
    assert main(["sweep", "--suite", "fig5", "--dry-run", "--datasets", "vqa-rad", "--data-root", "/nonexistent"]) in (
        0,
        2,
    )
    out = capsys.readouterr().out
    assert "seeds 3" in out
    assert main(
        [
            "sweep",
            "--suite",
            "fig5",
            "--dry-run",
            "--seeds",
            "1",
            "--datasets",
            "vqa-rad",
            "--data-root",
            "/nonexistent",
        ]
    ) in (0, 2)
    assert "seeds 1" in capsys.readouterr().out


def test_a_suite_seed_count_must_be_a_whole_number():
    from umdbench.errors import ConfigError
    from umdbench.plan.suites import Suite

    spec = {"datasets": ["medsynth"], "rows": [{"name": "a", "pretrain": "none", "tune": "direct"}]}
    assert Suite.from_spec("s", spec).seeds == 1
    with pytest.raises(ConfigError, match="'seeds' must be a whole number"):
        Suite.from_spec("s", {**spec, "seeds": 0})


def test_row_seeds_caps_one_row(registries):
    """A row's ``seeds`` runs it for seeds 0..N-1 only (an expensive point once); other rows get the
    sweep's seeds; a bad value is refused when the suite is read."""
    spec = {
        "datasets": ["slake"],
        "title": "t",
        "rows": [
            {"name": "a", "pretrain": "none", "tune": "direct"},
            {"name": "b", "pretrain": "mr", "tune": "direct", "seeds": 1},
        ],
    }
    specs = Suite.from_spec("capped", spec).cell_specs(seeds=3)
    assert sorted((s.cell_name, s.seed) for s in specs) == [("a", 0), ("a", 1), ("a", 2), ("b", 0)]
    with pytest.raises(ConfigError, match=r"rows\[1\].*'seeds'"):
        Suite.from_spec("bad", {**spec, "rows": [spec["rows"][0], {**spec["rows"][1], "seeds": 0}]})
    causes = get_suite(registries, "causes")
    assert {r.name: r.seeds for r in causes.rows}["MR 3000 steps"] == 1


def test_a_row_may_run_another_tune_chain_on_some_datasets():
    """``tune_by_dataset``: one row, one reference, on datasets of two task types; a vary key that
    names a tuning stage maps to that dataset's chain; a dataset outside the suite is refused."""
    spec = {
        "datasets": ["slake", "melinda"],
        "title": "t",
        "rows": [{"name": "a", "pretrain": "none", "tune": "direct", "tune_by_dataset": {"melinda": "tdcalib+direct"}}],
        "vary": {"key": "tune.direct.train.lr", "values": [1e-4]},
    }
    specs = Suite.from_spec("mixed", spec).cell_specs(seeds=1)
    by_dataset = {s.dataset: s for s in specs}
    assert by_dataset["slake"].tune == ("direct",) and by_dataset["melinda"].tune == ("tdcalib", "direct")
    assert dict(by_dataset["slake"].overrides)["tune.0.train.lr"] == 1e-4
    assert dict(by_dataset["melinda"].overrides)["tune.1.train.lr"] == 1e-4
    assert {s.cell_name for s in specs} == {"a lr=0.0001"}
    with pytest.raises(ConfigError, match="'tune_by_dataset' names vqa-rad"):
        Suite.from_spec("bad", {**spec, "rows": [{**spec["rows"][0], "tune_by_dataset": {"vqa-rad": "direct"}}]})
    with pytest.raises(ConfigError, match="names tuning stage 'direct'"):
        Suite.from_spec("bad", {**spec, "rows": [{**spec["rows"][0], "tune_by_dataset": {"melinda": "tdcalib"}}]})

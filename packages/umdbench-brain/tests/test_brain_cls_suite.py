"""The brain-cls suite (scratch, MAE-3D, SimCLR-3D, Models Genesis with `cls`; BrainMVP with
`cls-tmpl` and with `cls`) on brainsynth-grade and BraTS 2018 HGG/LGG: planned by `sweep --dry-run` (not run
here: the small preset takes hours), its pre-trainings shared with brain-seg."""

import re

import pytest
from test_releases import make_brats18

from umdbench.cli import main
from umdbench.plan.suites import Suite
from umdbench.plugin import get_registries

# every plan generates the phantom splits it checks: once per test worker (conftest.py)
pytestmark = pytest.mark.usefixtures("memo_phantoms")


def test_brain_cls_suite_rows_datasets_and_metrics():
    reg = get_registries()
    suite = Suite.from_spec("brain-cls", reg.suite.get("brain-cls"))
    assert [(r.name, r.pretrain, r.tune) for r in suite.rows] == [
        ("scratch", "none", ("cls",)),
        ("MAE-3D", "mae3d", ("cls",)),
        ("SimCLR-3D", "simclr3d", ("cls",)),
        ("Models Genesis", "models-genesis", ("cls",)),
        ("BrainMVP", "brainmvp", ("cls-tmpl",)),
        ("BrainMVP, cls", "brainmvp", ("cls",)),
    ]
    assert suite.datasets == ("brainsynth-grade", "brats2018-grade")
    assert suite.metrics == ("accuracy", "auc")


def test_sweep_dry_run_plans_brain_cls(tmp_path, capsys):
    assert main(["sweep", "--suite", "brain-cls", "--dry-run", "--work-dir", str(tmp_path / "work")]) == 0
    out = capsys.readouterr().out
    assert "sweep of suite brain-cls: 12 cells (6 to run, 0 finished, 6 data unavailable)" in out, out
    assert re.search(r"\[to run\] BrainMVP: brainmvp / cls-tmpl / brainsynth-grade", out)
    assert "[data unavailable] BrainMVP: brainmvp / cls-tmpl / brats2018-grade" in out
    assert "pre-trainings: 4 unique for 5 cells that pre-train" in out
    assert not (tmp_path / "work" / "stages").exists()  # a dry run trains nothing
    # with a BraTS 2018 copy every cell is planned, the pre-trainings on its own studies
    make_brats18(tmp_path / "data")
    assert (
        main(
            [
                "sweep",
                "--suite",
                "brain-cls",
                "--dry-run",
                "--work-dir",
                str(tmp_path / "work"),
                "--data-root",
                str(tmp_path / "data"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "12 cells (12 to run, 0 finished, 0 data unavailable)" in out, out
    assert "data brats2018-grade:train" in out


def test_brain_cls_shares_its_pre_trainings_with_brain_seg(tmp_path, capsys):
    keys = {}
    for suite in ("brain-cls", "brain-seg"):
        assert main(["sweep", "--suite", suite, "--dry-run", "--work-dir", str(tmp_path)]) == 0
        out = capsys.readouterr().out
        keys[suite] = set(re.findall(r"pretrain \S+\s+key (\w+)", out))
    assert len(keys["brain-cls"]) == 4 and keys["brain-cls"] == keys["brain-seg"]

"""The worked 3-D example package (packages/umdbench-brain/examples/umdbench-brain-example)
installed from a copy outside the repository: it imports only public modules, its pre-training
runs before `seg` on brainsynth, its metric scores the same cell with every trained stage reused
(eval.metric), and its suite sweeps with that metric, sharing the stages of the plain run."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1]
EXAMPLE = PACKAGE / "examples" / "umdbench-brain-example"
PUBLIC = {"umdbench.api", "umdbench.kit", "umdbench.hookspecs", "umdbench_brain.kit"}
THIRD_PARTY = {"numpy", "torch", "mmengine"}  # mmengine: a metric is a BaseMetric (docs/CONTRACT.md, Metrics)

# a 32^3 phantom, 16^3 crops, a few steps: each stage trains in seconds
BUDGET = [
    "data.num_workers=0",
    "data.eval_batch_size=6",
    "model.roi_size=16",
    "dataset.options.canvas=32",
    "dataset.options.n_train=12",
    "dataset.options.n_val=2",
    "dataset.options.n_test=4",
    "pretrain.corpus.options.canvas=32",
    "pretrain.corpus.options.n_train=4",
    "pretrain.train.max_iters=4",
    "pretrain.train.batch_size=2",
    "tune.0.train.max_iters=4",
    "tune.0.train.batch_size=2",
]
TRAINED = re.compile(r"(pretrain|tune) (\S+): (?:training|resuming)")


def test_example_imports_only_public_modules():
    files = list((EXAMPLE / "umdbench_brain_example").glob("*.py"))
    assert len(files) >= 3
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path.name}: a relative import"
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top in ("umdbench", "umdbench_brain"):
                    assert name in PUBLIC, (
                        f"{path.name}: imports {name}, which is not a public module ({sorted(PUBLIC)})"
                    )
                else:
                    assert top in THIRD_PARTY or top in sys.stdlib_module_names or top == "umdbench_brain_example", (
                        f"{path.name}: imports {name}"
                    )


def _example_module(name: str):
    """A module of the example, imported from its folder (no install) for unit tests."""
    import importlib

    if str(EXAMPLE) not in sys.path:
        sys.path.insert(0, str(EXAMPLE))
    return importlib.import_module(f"umdbench_brain_example.{name}")


def test_rotation_pretraining_on_the_kit_test_helpers():
    import torch

    from umdbench_brain.kit import check_pyramid, tiny_volume_batch, tiny_volume_encoder, tiny_volume_strategy

    rotation = _example_module("rotation").RotationPretrain
    for encoder in ("resunet3d", "uniformer3d"):
        enc = tiny_volume_encoder(encoder)
        check_pyramid(enc)
        strategy = tiny_volume_strategy(rotation, enc, turns=2)
        assert strategy.head.out_features == 2
        out = strategy(tiny_volume_batch("volumes", batch=3))
        assert torch.isfinite(out["loss_rotation"]) and 0.0 <= float(out["rotation_acc"]) <= 1.0
        out["loss_rotation"].backward()
        assert enc.hidden_size == strategy.head.in_features
    with pytest.raises(ValueError, match="turns must be 2 or 4"):
        tiny_volume_strategy(rotation, tiny_volume_encoder(), turns=3)


def test_region_sensitivity_counts_found_voxels_per_region():
    import torch

    metric = _example_module("sensitivity").RegionSensitivity()
    seg = torch.zeros(2, 3, 4, 4, 4)
    seg[0, 0, :2] = 1  # study 0: 32 voxels of WT, no TC, 16 of ET
    seg[0, 2, :1] = 1
    seg[1, :, :] = 1  # study 1: every voxel in every region
    logits = torch.full_like(seg, -1.0)
    logits[0, 0, :1] = 1  # half of WT found, ET missed, TC empty (scores 1)
    logits[1] = 1  # everything found
    metric.process({}, [{"seg_logits": logits, "seg": seg, "index": torch.tensor([0, 1])}])
    out = metric.compute_metrics(metric.results)
    assert out == pytest.approx(
        {"sensitivity_wt": 75.0, "sensitivity_tc": 100.0, "sensitivity_et": 50.0, "sensitivity": 75.0}
    )
    assert metric.per_example["sensitivity"].tolist() == pytest.approx([0.5, 1.0])


@pytest.fixture(scope="module")
def installed(install_package):
    # a folder of its own, not pytest's numbered tmp folders: pytest sessions started beside this one
    # (other checkouts on the machine) prune those while this module's runs still read their work dir
    with tempfile.TemporaryDirectory(prefix="umdbench-brain-example-") as folder:
        tmp = Path(folder)
        yield {"cli": install_package(EXAMPLE, tmp), "tmp": tmp}


def cli(args, installed, check=True) -> subprocess.CompletedProcess:
    """``umdbench <args>`` with the package on the path, in this process (the package's discovery
    through its entry point is what is under test, not a process start-up)."""
    return installed["cli"](args, check)


def test_plugins_lists_the_package_with_its_version(installed):
    out = cli(["plugins", "--strict"], installed)
    assert "brain-example 0.1.0  [entry point umdbench_brain_example (package umdbench-brain-example)]" in out.stdout
    assert "pretrain: rotation3d, metric: region-sensitivity, suite: brain-rotation" in out.stdout


def test_a_misspelt_metric_is_refused_naming_the_plugin_one(installed):
    out = cli(
        [
            "run",
            "--pretrain",
            "rotation3d",
            "--tune",
            "seg",
            "--dataset",
            "brainsynth",
            "--dry-run",
            "--cfg-options",
            "eval.metric=region-sensitivty",
        ],
        installed,
        check=False,
    )
    assert out.returncode == 2 and "Did you mean 'region-sensitivity'" in out.stderr


@pytest.mark.slow
def test_example_pretrains_scores_with_its_metric_and_sweeps_its_suite_on_shared_stages(installed):
    work = installed["tmp"] / "wd"
    run = [
        "run",
        "--pretrain",
        "rotation3d",
        "--tune",
        "seg",
        "--dataset",
        "brainsynth",
        "--work-dir",
        str(work),
        "--cfg-options",
        *BUDGET,
    ]
    first = cli(run, installed).stdout
    assert TRAINED.findall(first) == [("pretrain", "rotation3d"), ("tune", "seg")]
    assert "loss_rotation" in first and re.search(r"result: .* dice=", first)
    assert "got empty" not in first  # the prediction recorder of a segmentation evaluation stays quiet

    # the same cell scored by the example's metric: nothing trains, a second row is stored
    second = cli(run + ["eval.metric=region-sensitivity"], installed).stdout
    assert TRAINED.findall(second) == [], second
    assert second.count("reusing cached artifact") == 2
    assert re.search(r"result: .* sensitivity=[\d.]+ .*sensitivity_wt=", second)

    # the suite scores every cell with the example's metric: its `rotation` row is the cell above
    # (nothing left to run), `scratch` trains its one stage
    sweep = cli(
        ["sweep", "--suite", "brain-rotation", "--work-dir", str(work), "--cfg-options", *BUDGET], installed
    ).stdout
    assert "1 cells run, 1 already finished, 1 stages trained" in sweep, sweep
    assert TRAINED.findall(sweep) == [("tune", "seg")]

    from umdbench.results.store import ResultsStore

    rows = ResultsStore(work / "results.sqlite").rows()
    by_metric = {(r["pretrain"], r["config"]["eval"]["metric"]): r for r in rows}
    assert set(by_metric) == {
        ("rotation3d", "dice"),
        ("rotation3d", "region-sensitivity"),
        ("none", "region-sensitivity"),
    }
    plain, scored = by_metric[("rotation3d", "dice")], by_metric[("rotation3d", "region-sensitivity")]
    assert plain["stage_keys"] == scored["stage_keys"] and plain["cell_key"] != scored["cell_key"]
    assert {"dice", "dice_wt"} <= set(plain["metrics"]) and "sensitivity_tc" in scored["metrics"]
    assert scored["plugins"]["metric:region-sensitivity"] == "umdbench-brain-example 0.1.0"

    board = installed["tmp"] / "results"
    cli(["leaderboard", "--suite", "brain-rotation", "--work-dir", str(work), "--out", str(board)], installed)
    text = (board / "brain-rotation.md").read_text()
    assert "| rotation" in text and "sensitivity_wt" in text and "umdbench-brain-example 0.1.0" in text

"""The package plugs into an unmodified umdbench through its entry point, and `umdbench run`
pre-trains (mae3d), tunes (seg / cls) and evaluates on brainsynth. Budgets are cut with
--cfg-options (32^3 canvas, 16^3 crops) so the whole file stays around a minute on 2 cores."""

import re

import pytest
import torch

from umdbench.cli import main
from umdbench.plan.suites import Suite
from umdbench.plugin import get_registries

# small phantoms and crops: a 32^3 canvas evaluated with 16^3 windows (27 windows per study)
SMALL = [
    "data.num_workers=0",
    "data.eval_batch_size=6",
    "model.roi_size=16",
    "dataset.options.canvas=32",
    "dataset.options.n_train=12",
    "dataset.options.n_val=2",
    "dataset.options.n_test=6",
]
TUNE_ITERS = 40


def run_cli(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def metrics_of(out: str) -> dict[str, float]:
    line = re.search(r"result: .*", out).group(0)
    return {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+|nan)", line)}


def test_entry_point_registers_every_kind_and_a_valid_suite(capsys):
    reg = get_registries(reload=True)
    assert reg.dataset.origin("brainsynth").startswith("entry point umdbench_brain.plugin")
    for kind, name in [
        ("dataset", "brats2021"),
        ("dataset", "brats2023"),
        ("task", "segmentation"),
        ("task", "scan-classification"),
        ("task", "volumes"),
        ("encoder", "resunet3d"),
        ("encoder", "swinvit3d"),
        ("metric", "dice"),
        ("tune", "seg"),
        ("tune", "cls"),
        ("tune", "seg-tmpl"),
        ("tune", "cls-tmpl"),
        ("pretrain", "mae3d"),
        ("pretrain", "brainmvp"),
        ("pretrain", "simclr3d"),
        ("pretrain", "models-genesis"),
    ]:
        reg.__getattribute__(kind).get(name)  # imports and type-checks the lazy entry
    suite = Suite.from_spec("brain-seg", reg.suite.get("brain-seg"))
    assert [r.name for r in suite.rows] == ["scratch", "MAE-3D", "SimCLR-3D", "Models Genesis", "BrainMVP"]
    assert suite.datasets == ("brainsynth",)
    for name in ("brain-missing-modality", "brainmvp-ablation"):
        assert Suite.from_spec(name, reg.suite.get(name)).rows
    code, out = run_cli(["plugins"], capsys)
    assert code == 0 and "umdbench-brain" in out and "0 plugin(s) failed" not in out


def untrained_dice(work_dir) -> float:
    """Dice of the same strategy before any step, with the same seed, data and evaluation."""
    from umdbench.plan.config import CellSpec, parse_override, resolve
    from umdbench.plan.stage_plan import build_plan
    from umdbench.run.build_data import build_dataset
    from umdbench.run.build_strategy import build_strategy
    from umdbench.run.context import RunContext

    reg = get_registries()
    cell = CellSpec(
        pretrain="none", tune=("seg",), dataset="brainsynth", overrides=tuple(parse_override(o) for o in SMALL)
    )
    run = resolve(cell, reg)
    ctx = RunContext(work_dir, reg)
    stages = build_plan(run, reg, ctx.catalog)
    strategy = build_strategy(stages[0], run, ctx, load_parent=False).eval()
    test_set, spec = build_dataset(stages[-1], run, ctx, "test", training=False)
    metric = reg.metric.get("dice")(hd95=False)
    with torch.no_grad():
        for i in range(len(test_set)):
            batch = spec.preprocess(spec.collate([test_set[i]]))
            metric.process({}, [{**strategy.predict(batch), "seg": batch["seg"]}])
    return metric.compute_metrics(metric.results)["dice"]


def test_scratch_and_mae3d_segmentation_beat_an_untrained_model(tmp_path, capsys):
    budget = [f"tune.0.train.max_iters={TUNE_ITERS}"]
    base = ["run", "--tune", "seg", "--dataset", "brainsynth", "--work-dir", str(tmp_path)]
    code, out = run_cli(base + ["--pretrain", "none", "--cfg-options", *SMALL, *budget], capsys)
    assert code == 0, out
    scratch = metrics_of(out)
    assert set(scratch) >= {"dice", "dice_wt", "dice_tc", "dice_et", "hd95"}
    floor = untrained_dice(tmp_path)
    # measured (seed 0, this budget): untrained 1.6, scratch 27.6, mae3d 27.6; the bound leaves ~11 points
    assert floor < 20 and scratch["dice"] > floor + 15, (floor, scratch)

    pre = [
        "pretrain.train.max_iters=20",
        "pretrain.corpus.options.canvas=32",
        "pretrain.corpus.options.n_train=8",
        "pretrain.block_size=4",
    ]
    code, out = run_cli(base + ["--pretrain", "mae3d", "--cfg-options", *SMALL, *budget, *pre], capsys)
    assert code == 0, out
    assert "pretrain mae3d: training 20 iters" in out and "brainsynth-corpus:train" in out
    mae = metrics_of(out)
    print(f"untrained dice {floor:.2f}\nscratch {scratch}\nmae3d {mae}")  # shown with pytest -rP
    assert mae["dice"] > floor + 15


def test_scan_classification_runs_end_to_end(tmp_path, capsys):
    code, out = run_cli(
        [
            "run",
            "--pretrain",
            "none",
            "--tune",
            "cls",
            "--dataset",
            "brainsynth-grade",
            "--work-dir",
            str(tmp_path),
            "--cfg-options",
            *SMALL,
            "tune.0.train.max_iters=4",
        ],
        capsys,
    )
    assert code == 0, out
    result = metrics_of(out)
    assert set(result) >= {"accuracy", "auc"} and 0.0 <= result["accuracy"] <= 100.0
    # the row keeps each study's class probabilities, which reproduce its AUC: the board can
    # bootstrap the AUC and test it paired
    from umdbench.results.intervals import cell_interval
    from umdbench.results.predictions import seed_matrix
    from umdbench.results.store import ResultsStore

    (row,) = ResultsStore(tmp_path / "results.sqlite").rows()
    assert "prob" in row["predictions"]["fields"]
    scores, index, why = seed_matrix([row], "auc", tmp_path)
    assert why == "" and len(index) == scores.shape[1] > 0
    ci = cell_interval(scores)
    assert ci.mean == pytest.approx(row["metrics"]["auc"], abs=1e-3) and ci.low <= ci.mean <= ci.high


def test_wrong_strategy_for_the_task_is_a_one_line_error(tmp_path, capsys):
    code, out = run_cli(
        [
            "run",
            "--pretrain",
            "none",
            "--tune",
            "cls",
            "--dataset",
            "brainsynth",
            "--work-dir",
            str(tmp_path),
            "--cfg-options",
            *SMALL,
            "tune.0.train.max_iters=1",
        ],
        capsys,
    )
    # refused when the run is planned (Strategy.task_types), naming the strategies that fit
    assert code == 2 and "tuning strategy 'cls'" in out and "fit 'brainsynth'" in out and "seg, seg-tmpl" in out


def test_brainmvp_pretraining_hands_templates_to_seg_tmpl_end_to_end(tmp_path, capsys):
    """brainmvp -> seg-tmpl on brainsynth with one modality dropped from every test study (filled
    from the pre-trained templates); a tiny budget, so only completion and the hand-off are checked."""
    pre = [
        "pretrain.train.max_iters=4",
        "pretrain.train.batch_size=2",
        "pretrain.corpus.options.canvas=32",
        "pretrain.corpus.options.n_train=4",
        "pretrain.contrast_start_frac=0.5",
        "dataset.options.test_drop=1",
        "dataset.options.n_test=2",
        "tune.0.train.max_iters=3",
        "tune.0.train.batch_size=2",
    ]
    code, out = run_cli(
        [
            "run",
            "--pretrain",
            "brainmvp",
            "--tune",
            "seg-tmpl",
            "--dataset",
            "brainsynth",
            "--work-dir",
            str(tmp_path),
            "--cfg-options",
            *SMALL,
            *pre,
        ],
        capsys,
    )
    assert code == 0, out
    assert "pretrain brainmvp: training 4 iters" in out and "loss_contrast" in out  # on from step 2 of 4
    result = metrics_of(out)
    assert set(result) >= {"dice", "dice_wt", "dice_tc", "dice_et"} and 0.0 <= result["dice"] <= 100.0

"""Pictures of BrainMVP's templates (paper Fig. 4) from a tiny trained brainmvp stage: its kept
mmengine checkpoints and its final artifact, three central slices per modality, one PNG."""

import numpy as np
import pytest

from umdbench.cli import main
from umdbench_brain.templates_figure import central_slices, find_stage, render, template_snapshots
from umdbench_brain.templates_figure import main as figure_main

TINY = [
    "data.num_workers=0",
    "data.eval_batch_size=6",
    "model.roi_size=16",
    "dataset.options.canvas=32",
    "dataset.options.n_train=4",
    "dataset.options.n_val=2",
    "dataset.options.n_test=2",
    "pretrain.train.max_iters=4",
    "pretrain.train.batch_size=2",
    "pretrain.corpus.options.canvas=32",
    "pretrain.corpus.options.n_train=4",
    "pretrain.train.checkpoint_interval=2",
    "pretrain.train.keep_checkpoints=2",
    "tune.0.train.max_iters=1",
    "tune.0.train.batch_size=2",
]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    work = tmp_path_factory.mktemp("templates-work")
    assert (
        main(
            [
                "run",
                "--pretrain",
                "brainmvp",
                "--tune",
                "seg-tmpl",
                "--dataset",
                "brainsynth",
                "--work-dir",
                str(work),
                "--cfg-options",
                *TINY,
            ]
        )
        == 0
    )
    return work


def test_snapshots_are_the_kept_checkpoints_then_the_artifact(work):
    stage = find_stage(work)
    assert stage.name.startswith("pretrain-brainmvp-") and find_stage(stage) == stage
    snaps = template_snapshots(stage)
    assert [label for label, _ in snaps] == ["iter 2", "iter 4", "final"]
    assert all(w.shape == (4, 48, 48, 48) for _, w in snaps)  # 4 modalities on the tiny 48^3 canvas
    np.testing.assert_array_equal(snaps[1][1], snaps[2][1])  # the artifact is the last step's state
    assert not np.array_equal(snaps[0][1], snaps[1][1]) and np.abs(snaps[2][1]).sum() > 0  # they were learnt
    assert [label for label, _ in template_snapshots(stage, [2], final=False)] == ["iter 2"]


def test_render_writes_one_png_with_three_views_per_snapshot_and_modality(work, tmp_path):
    from PIL import Image

    out = render(work, tmp_path / "fig" / "templates.png")
    with Image.open(out) as img:
        width, height = img.size
    # 3 snapshots x 3 views columns, 4 modality rows (figsize 1.6 x 9 by 1.7 x 4 + 0.4 inches at 100 dpi)
    assert (width, height) == (1440, 720)
    assert figure_main([str(work), str(tmp_path / "cli.png"), "--checkpoints", "4", "--no-final"]) == 0
    assert (tmp_path / "cli.png").stat().st_size > 1000
    assert figure_main([str(work), str(tmp_path / "no.png"), "--checkpoints", "3"]) == 2
    assert figure_main([str(tmp_path / "empty"), str(tmp_path / "no.png")]) == 2


def test_central_slices_are_the_ras_planes():
    vol = np.zeros((5, 7, 9), np.float32)
    vol[:, :, 4] = 1.0  # the central axial plane (z)
    views = central_slices(vol)
    assert views["axial"].shape == (7, 5) and views["axial"].min() == 1.0
    assert views["coronal"].shape == (9, 5) and views["coronal"].sum() == 5
    assert views["sagittal"].shape == (9, 7) and views["sagittal"].sum() == 7

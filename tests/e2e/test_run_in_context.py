"""`umdbench run` puts its result in context: the split's no-image reference points beside it, a
plain word when it is below question-only, and why a `tiny` number on real data says little."""

import pytest

from tests.support import SHARED
from umdbench.cli import main

FAST = ["--cfg-options", "tune.0.train.max_iters=2", "tune.0.train.batch_size=4", "data.num_workers=0"]


@pytest.mark.realdata
@pytest.mark.skipif(not (SHARED / "slake").is_dir(), reason="needs ../shared/datasets/slake")
def test_a_run_on_slake_prints_the_reference_points_beside_its_result(tmp_path, capsys):
    args = [
        "run",
        "--pretrain",
        "none",
        "--tune",
        "direct",
        "--dataset",
        "slake",
        "--data-root",
        str(SHARED),
        "--work-dir",
        str(tmp_path / "wd"),
        *FAST,
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    result = out[out.index("result:") :]
    assert "question only" in result and "majority answer" in result and "(no image: reference point)" in result
    assert "below question-only" in result  # two steps of a random-init model cannot beat it
    assert "preset tiny (the default)" in result
    # kept in the work dir: the second run reads them instead of training the baseline again
    assert (tmp_path / "wd" / "reference-points.json").is_file()
    assert main(args) == 0
    assert "question only" in capsys.readouterr().out


def test_a_run_on_the_embedded_dataset_has_no_tiny_note(tmp_path, capsys):
    assert (
        main(
            [
                "run",
                "--pretrain",
                "none",
                "--tune",
                "direct",
                "--dataset",
                "medsynth",
                "--work-dir",
                str(tmp_path / "wd"),
                *FAST,
                "dataset.options.n_train=16",
                "dataset.options.n_test=8",
                "dataset.options.n_val=4",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "question only" in out and "note: preset tiny" not in out

"""Bad input ends in the documented one-paragraph error (exit 2), never a traceback: a
decompression-bomb image, a non-UTF-8 annotation file, a garbled artifact.json, a work dir moved
with a half-trained stage, a directory symlink loop, a leaderboard over old or incomplete stores."""

import json
import shutil
import sqlite3

import pytest
from PIL import Image

from tests.e2e.test_data_validation import make_vqa_rad, one_paragraph_error, run
from umdbench.cli import main
from umdbench.data import check as data_check
from umdbench.data.fingerprint import list_images
from umdbench.results.store import SCHEMA_VERSION, ResultsStore


@pytest.fixture
def pixel_limit(monkeypatch):
    """Lower umdbench's pixel limit (the one place it is set) so that a 48x48 image is a 'bomb'."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after the test

    def set_limit(pixels):
        monkeypatch.setattr(data_check, "MAX_IMAGE_PIXELS", pixels)

    return set_limit


# 48x48 = 2304 pixels: over 2x a 1000 limit PIL itself raises DecompressionBombError; between 1x and
# 2x of a 2000 limit PIL would only warn, and umdbench refuses it the same way
@pytest.mark.parametrize("limit", [1000, 2000])
def test_decompression_bomb_is_one_paragraph_naming_the_file(tmp_path, capsys, pixel_limit, limit):
    make_vqa_rad(tmp_path / "data")
    pixel_limit(limit)
    assert main(run(tmp_path / "data", tmp_path / "work")) == 2
    err = one_paragraph_error(capsys)
    assert "synpic" in err and "too large to decode safely" in err and "fix:" in err
    # data check names each such image as a problem (exit 1: problems found), without a traceback
    assert main(["data", "check", "vqa-rad", "--data-root", str(tmp_path / "data")]) == 1
    out = capsys.readouterr().out
    assert "images/synpic0.jpg: image too large to decode safely" in out


def test_non_utf8_annotation_json_is_one_paragraph_in_run_sweep_and_check(tmp_path, capsys):
    folder = make_vqa_rad(tmp_path / "data")
    (folder / "testset.json").write_bytes(
        json.dumps([{"qid": 1, "question": "caf\u00e9?"}]).encode("utf-8").replace(b"\\u00e9", b"\xe9")
    )
    assert main(run(tmp_path / "data", tmp_path / "work")) == 2
    err = one_paragraph_error(capsys)
    assert "testset.json: not UTF-8 text" in err and "fix:" in err

    # a sweep lists the cell as 'data unavailable', naming the file
    assert (
        main(
            [
                "sweep",
                "--suite",
                "table4",
                "--datasets",
                "vqa-rad",
                "--dry-run",
                "--data-root",
                str(tmp_path / "data"),
                "--work-dir",
                str(tmp_path / "work"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "testset.json: not UTF-8 text" in out and "Traceback" not in out

    assert main(["data", "check", "vqa-rad", "--data-root", str(tmp_path / "data")]) == 1
    out = capsys.readouterr().out
    assert "testset.json: not UTF-8 text" in out


def test_melinda_csv_that_is_not_utf8_is_a_data_error(tmp_path):
    from umdbench.api import DataError
    from umdbench_plugins.datasets.melinda import SPLIT_FILES, Melinda

    (tmp_path / "melinda_images").mkdir()
    (tmp_path / SPLIT_FILES["train"]).write_bytes(b"figure_file,caption\nx.jpg,caf\xe9\n")
    with pytest.raises(DataError, match="not UTF-8 text"):
        Melinda(root=tmp_path).records("train")


SMALL = [
    "model.image_size=32",
    "data.num_workers=0",
    "data.eval_batch_size=50",
    "dataset.options.n_train=32",
    "dataset.options.n_val=10",
    "dataset.options.n_test=20",
    "tune.0.train.batch_size=8",
]


def medsynth(work, *options):
    return [
        "run",
        "--pretrain",
        "none",
        "--tune",
        "direct",
        "--dataset",
        "medsynth",
        "--work-dir",
        str(work),
        "--cfg-options",
        *SMALL,
        *options,
    ]


@pytest.mark.slow
@pytest.mark.parametrize("content", [b"", b"{not json", b"\xff\xfe garbage"])
def test_garbled_or_empty_artifact_json_is_one_paragraph(tmp_path, capsys, content):
    work = tmp_path / "work"
    assert main(medsynth(work, "tune.0.train.max_iters=2")) == 0
    (marker,) = work.glob("stages/tune-direct-*/artifact.json")
    marker.write_bytes(content)
    (work / "results.sqlite").unlink()  # the cell must be evaluated again, from the cached stage
    capsys.readouterr()
    assert main(medsynth(work, "tune.0.train.max_iters=2")) == 2
    err = one_paragraph_error(capsys)
    assert str(marker) in err and "Delete the folder" in err


@pytest.mark.slow
def test_a_moved_work_dir_resumes_from_its_own_checkpoint(tmp_path, capsys):
    work = tmp_path / "work"
    opts = ("tune.0.train.max_iters=4", "tune.0.train.checkpoint_interval=2")
    assert main(medsynth(work, *opts)) == 0
    (stage,) = work.glob("stages/tune-direct-*")
    # as if the run had been killed after its last checkpoint: no artifact, no row
    (stage / "artifact.json").unlink()
    (stage / "model.safetensors").unlink()
    (work / "results.sqlite").unlink()
    pointer = stage / "train" / "last_checkpoint"
    assert pointer.read_text().startswith(str(work))  # mmengine writes an absolute path
    moved = tmp_path / "moved"
    shutil.move(str(work), str(moved))
    capsys.readouterr()
    assert main(medsynth(moved, *opts)) == 0
    out = capsys.readouterr().out
    assert "tune direct: resuming" in out
    assert (moved / "stages" / stage.name / "artifact.json").is_file()


@pytest.mark.slow
def test_a_last_checkpoint_naming_a_missing_file_is_one_paragraph(tmp_path, capsys):
    work = tmp_path / "work"
    assert main(medsynth(work, "tune.0.train.max_iters=2")) == 0
    (stage,) = work.glob("stages/tune-direct-*")
    (stage / "artifact.json").unlink()
    (work / "results.sqlite").unlink()
    pointer = stage / "train" / "last_checkpoint"
    pointer.write_text("/nowhere/iter_99.pth")
    capsys.readouterr()
    assert main(medsynth(work, "tune.0.train.max_iters=2")) == 2
    err = one_paragraph_error(capsys)
    assert str(pointer) in err and "iter_99.pth" in err and "fix: delete" in err


def test_a_directory_symlink_loop_does_not_crash_the_fingerprint(tmp_path, capsys):
    folder = make_vqa_rad(tmp_path / "data")
    (folder / "images" / "again").symlink_to(folder / "images", target_is_directory=True)
    names = [name for name, _ in list_images(folder / "images")]
    assert len(names) == len(set(names)) and "synpic0.jpg" in names
    assert (
        main(
            [
                "run",
                "--pretrain",
                "none",
                "--tune",
                "direct",
                "--dataset",
                "vqa-rad",
                "--data-root",
                str(tmp_path / "data"),
                "--work-dir",
                str(tmp_path / "w"),
                "--dry-run",
            ]
        )
        == 0
    )


OLD_SCHEMA = """CREATE TABLE runs (
    cell_key TEXT PRIMARY KEY, suite TEXT, cell_name TEXT, pretrain TEXT NOT NULL, tune TEXT NOT NULL,
    dataset TEXT NOT NULL, preset TEXT NOT NULL, seed INTEGER NOT NULL, metrics TEXT NOT NULL, config TEXT NOT NULL,
    config_hash TEXT NOT NULL, stage_keys TEXT NOT NULL, git_commit TEXT, packages TEXT, data_fingerprint TEXT,
    wall_time_s REAL, device TEXT, created_at TEXT NOT NULL);"""


def old_store(path, n=2):
    """A store in the first layout (no schema version, no skipped column), rows without device/commit."""
    con = sqlite3.connect(path)
    con.executescript(OLD_SCHEMA)
    for seed in range(n):
        con.execute(
            "INSERT INTO runs VALUES (?,NULL,NULL,'mr','direct','medsynth','tiny',?,?,?,'h','[]',?,NULL,'fp',"
            "1.0,NULL,'2024-01-01T00:00:00')",
            (
                f"key{seed}",
                seed,
                json.dumps({"overall": 50.0 + seed}),
                json.dumps({"dataset": {}}),
                "abc123" if seed else None,
            ),
        )
    con.commit()
    con.close()


def test_leaderboard_over_an_old_store_with_null_device_and_commit(tmp_path, capsys):
    store = tmp_path / "results.sqlite"
    old_store(store)
    assert main(["leaderboard", "--store", str(store), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "runs.md").read_text()
    assert "devices: unknown" in text and "commits: abc123, unknown" in text
    migrated = ResultsStore(store)
    assert migrated.schema_version == SCHEMA_VERSION
    rows = migrated.rows()
    assert len(rows) == 2 and all(r["skipped"] is None for r in rows)  # old rows: not recorded
    # a new row goes into the migrated table with its skipped count
    new = dict(rows[0], cell_key="key-new", skipped={"medsynth": 3})
    new.pop("created_at")
    assert migrated.add(new) and migrated.get("key-new")["skipped"] == {"medsynth": 3}


def test_a_store_from_a_newer_umdbench_is_refused_in_one_paragraph(tmp_path, capsys):
    store = tmp_path / "results.sqlite"
    ResultsStore(store)
    con = sqlite3.connect(store)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.commit()
    con.close()
    assert main(["leaderboard", "--store", str(store), "--out", str(tmp_path / "out")]) == 2
    err = one_paragraph_error(capsys)
    assert str(store) in err and "newer umdbench" in err and "fix:" in err


@pytest.mark.slow
@pytest.mark.parametrize("keep", [None, 0, 2])
def test_a_finished_stage_keeps_at_most_keep_checkpoints(tmp_path, capsys, keep):
    work = tmp_path / "work"
    opts = ["tune.0.train.max_iters=6", "tune.0.train.checkpoint_interval=2"]
    if keep is not None:
        opts.append(f"tune.0.train.keep_checkpoints={keep}")
    assert main(medsynth(work, *opts)) == 0
    (train_dir,) = work.glob("stages/tune-direct-*/train")
    kept = sorted(p.name for p in train_dir.glob("iter_*.pth"))
    assert kept == {None: ["iter_6.pth"], 0: [], 2: ["iter_4.pth", "iter_6.pth"]}[keep]
    assert (train_dir / "last_checkpoint").is_file() == bool(kept)

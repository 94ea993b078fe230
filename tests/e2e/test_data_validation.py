"""Data is checked before any training: a bad split stops `umdbench run` in seconds with one
paragraph (exit 2); `dataset.on_error=skip` leaves corrupt images out and the row counts them.

The data is a VQA-RAD-layout copy of a few records built in tmp_path (never the shared datasets).
"""

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from umdbench.cli import main
from umdbench.results.store import ResultsStore

TINY = [
    "model.image_size=32",
    "data.num_workers=0",
    "data.eval_batch_size=16",
    "tune.0.train.max_iters=2",
    "tune.0.train.batch_size=4",
]


def write_image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (48, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=90)


def qa(qid: int, image: str, answer: str = "yes") -> dict:
    return {
        "qid": qid,
        "image_name": image,
        "question": f"is there a finding {qid}?",
        "answer": answer,
        "answer_type": "CLOSED",
        "phrase_type": "freeform",
    }


def make_vqa_rad(root: Path, train=None, test=None) -> Path:
    """``root/vqa_rad`` with 4 training images (8 QA) and 2 test images (4 QA)."""
    folder = root / "vqa_rad"
    for i in range(6):
        write_image(folder / "images" / f"synpic{i}.jpg", i)
    train = train if train is not None else [qa(i, f"synpic{i % 4}.jpg", ("yes", "no")[i % 2]) for i in range(8)]
    test = test if test is not None else [qa(100 + i, f"synpic{4 + i % 2}.jpg", ("yes", "no")[i % 2]) for i in range(4)]
    (folder / "trainset.json").write_text(json.dumps(train))
    (folder / "testset.json").write_text(json.dumps(test))
    return folder


def run(root: Path, work: Path, *extra: str) -> list[str]:
    return [
        "run",
        "--pretrain",
        "none",
        "--tune",
        "direct",
        "--dataset",
        "vqa-rad",
        "--data-root",
        str(root),
        "--work-dir",
        str(work),
        "--cfg-options",
        *TINY,
        *extra,
    ]


def one_paragraph_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("umdbench: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def assert_nothing_trained(work: Path) -> None:
    assert not list(work.glob("stages/*/train")) and not list(work.glob("stages/*/artifact.json"))


@pytest.mark.serial  # bounds its own wall time
def test_corrupt_test_image_fails_before_any_training_in_seconds(tmp_path, capsys):
    folder = make_vqa_rad(tmp_path / "data")
    bad = folder / "images" / "synpic5.jpg"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated JPEG: the header parses, the pixels do not
    started = time.time()
    code = main(run(tmp_path / "data", tmp_path / "work"))
    elapsed = time.time() - started
    assert code == 2
    err = one_paragraph_error(capsys)
    assert "synpic5.jpg" in err and "split 'test'" in err and "record vqa-rad/test/101" in err
    assert "dataset.on_error=skip" in err and "Nothing was trained" in err
    assert elapsed < 30, elapsed
    assert_nothing_trained(tmp_path / "work")


def test_on_error_skip_leaves_corrupt_images_out_and_the_row_counts_them(tmp_path, capsys):
    folder = make_vqa_rad(tmp_path / "data")
    (folder / "images" / "synpic5.jpg").write_bytes(b"not an image at all")
    (folder / "images" / "synpic3.jpg").unlink()  # a missing training image: skipped the same way
    code = main(run(tmp_path / "data", tmp_path / "work", "dataset.on_error=skip"))
    out = capsys.readouterr().out
    assert code == 0, out
    assert "skipped records" in out
    (row,) = ResultsStore(tmp_path / "work" / "results.sqlite").rows()
    # 2 test QA use the corrupt synpic5, 2 training QA the missing synpic3
    assert row["skipped"] == {"vqa-rad": 4}
    result = json.loads(next((tmp_path / "work" / "runs").glob("*/result.json")).read_text())
    assert result["skipped"] == {"vqa-rad": 4}


@pytest.mark.parametrize(
    "case, expected",
    [
        ("empty test", ["no records in split 'test'", "vqa-rad"]),
        ("duplicate id", ["record id 'vqa-rad/test/100' occurs twice", "testset.json", "unique"]),
        ("outside root", ["lies outside the dataset folder", "record vqa-rad/test/100"]),
    ],
)
def test_unusable_split_is_one_paragraph_before_training(tmp_path, capsys, case, expected):
    outside = tmp_path / "data" / "elsewhere.jpg"
    write_image(outside, 9)
    test = {
        "empty test": [],
        "duplicate id": [qa(100, "synpic4.jpg"), qa(100, "synpic5.jpg", "no")],
        "outside root": [qa(100, "../../elsewhere.jpg"), qa(101, "synpic5.jpg", "no")],
    }[case]
    make_vqa_rad(tmp_path / "data", test=test)
    code = main(run(tmp_path / "data", tmp_path / "work"))
    assert code == 2
    err = one_paragraph_error(capsys)
    for text in expected:
        assert text in err, err
    assert "fix:" in err
    assert_nothing_trained(tmp_path / "work")


def test_a_checked_image_is_not_decoded_again(tmp_path, monkeypatch):
    from umdbench.data import images
    from umdbench.data.images import ImageLoader

    write_image(tmp_path / "a.jpg", 1)
    decodes = []
    real = images.decode_resize
    monkeypatch.setattr(images, "decode_resize", lambda path, size: decodes.append(path) or real(path, size))
    assert ImageLoader(32, tmp_path / "cache").check(tmp_path / "a.jpg") is None
    assert ImageLoader(32, tmp_path / "cache").check(tmp_path / "a.jpg") is None  # a new process: the disk cache
    assert len(decodes) == 1
    # and training reads the entry the check wrote
    assert ImageLoader(32, tmp_path / "cache").load(tmp_path / "a.jpg").shape == (3, 32, 32)
    assert len(decodes) == 1

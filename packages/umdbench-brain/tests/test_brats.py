"""BraTS readers on tiny NIfTI fixtures written with nibabel, including broken studies."""

import gzip
import json

import nibabel as nib
import numpy as np
import pytest

from umdbench.api import DataError
from umdbench_brain.brats import BraTS2021, BraTS2023
from umdbench_brain.tasks import SegmentationTask
from umdbench_brain.volumes import load_volume

SIZE = 8


def _write(path, data, affine=None):
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))


def _label(enhancing_code):
    label = np.zeros((SIZE,) * 3, dtype=np.uint8)
    label[1:7, 1:7, 1:7] = 2
    label[2:6, 2:6, 2:6] = enhancing_code
    label[3:5, 3:5, 3:5] = 1
    return label


def make_study(root, case, suffixes, sep, enhancing_code):
    folder = root / case
    folder.mkdir(parents=True)
    rng = np.random.default_rng(len(case))
    for suffix in suffixes:
        _write(folder / f"{case}{sep}{suffix}.nii.gz", rng.uniform(0, 500, (SIZE,) * 3).astype(np.float32))
    _write(folder / f"{case}{sep}seg.nii.gz", _label(enhancing_code))
    return folder


@pytest.fixture
def brats21(tmp_path):
    root = tmp_path / "brats2021"
    for i in range(5):
        make_study(root, f"BraTS2021_{i:05d}", ("flair", "t1", "t1ce", "t2"), "_", 4)
    (root / "splits.json").write_text(
        json.dumps(
            {
                "train": ["BraTS2021_00000", "BraTS2021_00001", "BraTS2021_00002"],
                "val": ["BraTS2021_00003"],
                "test": ["BraTS2021_00004"],
            }
        )
    )
    return root


def test_brats2021_records_and_clean_check(brats21):
    ds = BraTS2021(root=brats21)
    train = ds.records("train")
    assert [r.uid for r in train] == ["BraTS2021_00000", "BraTS2021_00001", "BraTS2021_00002"]
    assert set(train[0].image) == {"t1", "t1c", "t2", "flair"}
    assert train[0].image["t1c"].endswith("BraTS2021_00000_t1ce.nii.gz")
    rep = ds.check(deep=True)
    assert rep.ok, rep.problems
    assert rep.counts == {"train": 3, "val": 1, "test": 1} and "splits.json" in rep.checksums
    fp = ds.fingerprint()
    (brats21 / "BraTS2021_00004" / "extra.txt").write_text("x")
    assert BraTS2021(root=brats21).fingerprint() != fp


def test_brats2023_layout_remaps_enhancing_to_4(tmp_path):
    root = tmp_path / "brats2023"
    for i in range(12):
        make_study(root, f"BraTS-GLI-{i:05d}-000", ("t1c", "t1n", "t2f", "t2w"), "-", 3)
    ds = BraTS2023(root=root)
    recs = [r for s in ds.splits for r in ds.records(s)]
    assert len(recs) == 12 and len(ds.records("train")) >= 4  # hash split covers every study once
    rec = recs[0]
    assert rec.image["flair"].endswith("-t2f.nii.gz") and rec.image["t1"].endswith("-t1n.nii.gz")
    assert ds.check(deep=True).ok
    model = {"modalities": ["t1", "t1c", "t2", "flair"], "roi_size": 8}
    from umdbench.api import DataContext

    ctx = DataContext(
        model_cfg=model, stage_cfg={}, tokenizer=None, label_names=["WT", "TC", "ET"], seed=0, cache_dir=None
    )
    item = SegmentationTask().build_dataset([rec], ctx, training=False)[0]
    assert int(item["seg"][2].sum()) == 4**3 - 2**3  # ET (coded 3 on disk) is found
    assert int(item["seg"][0].sum()) == 6**3 and item["volume"].max() <= 1.0


def test_check_names_study_and_file_for_each_problem(brats21):
    # missing modality file
    (brats21 / "BraTS2021_00000" / "BraTS2021_00000_t2.nii.gz").unlink()
    # shape mismatch within a study
    _write(brats21 / "BraTS2021_00001" / "BraTS2021_00001_t1.nii.gz", np.zeros((SIZE, SIZE, SIZE + 1), np.float32))
    # affine mismatch
    shifted = np.eye(4)
    shifted[0, 3] = 5.0
    _write(brats21 / "BraTS2021_00002" / "BraTS2021_00002_t2.nii.gz", np.zeros((SIZE,) * 3, np.float32), shifted)
    # unexpected label values
    bad = _label(4)
    bad[0, 0, 0] = 7
    _write(brats21 / "BraTS2021_00003" / "BraTS2021_00003_seg.nii.gz", bad)
    # a non-NIfTI file and a truncated one
    (brats21 / "BraTS2021_00004" / "BraTS2021_00004_t1.nii.gz").write_bytes(b"not a nifti file at all")
    t2 = brats21 / "BraTS2021_00004" / "BraTS2021_00004_t2.nii.gz"
    t2.write_bytes(gzip.compress(gzip.decompress(t2.read_bytes())[:600]))
    # an empty study folder
    (brats21 / "BraTS2021_00005").mkdir()

    shallow = BraTS2021(root=brats21).check(deep=False).problems
    problems = BraTS2021(root=brats21).check(deep=True).problems
    text = "\n".join(problems)
    assert "study BraTS2021_00000: file " in text and "BraTS2021_00000_t2.nii.gz (t2) is missing" in text
    assert "BraTS2021_00001_t1.nii.gz has shape (8, 8, 9) but BraTS2021_00001_flair.nii.gz has (8, 8, 8)" in text
    assert "BraTS2021_00002_t2.nii.gz has an affine that differs from BraTS2021_00002_flair.nii.gz's" in text
    assert "BraTS2021_00003_seg.nii.gz (label) has codes [7] outside brats2021's [0, 1, 2, 4]" in text
    assert any(
        "study BraTS2021_00004" in p and "BraTS2021_00004_t1.nii.gz (t1) is not a readable NIfTI" in p for p in problems
    )
    assert any("BraTS2021_00004_t2.nii.gz (t2) cannot be decoded: it is truncated" in p for p in problems)  # deep only
    assert not any("BraTS2021_00004_t2.nii.gz" in p for p in shallow)
    assert "study BraTS2021_00005: folder" in text and "is empty" in text
    assert all("re-copy" in p or "fix" in p or "resample" in p for p in problems)  # every line says what to do


def test_missing_file_raises_or_skips_by_on_error(brats21):
    (brats21 / "BraTS2021_00000" / "BraTS2021_00000_t1ce.nii.gz").unlink()
    with pytest.raises(
        DataError, match=r"study BraTS2021_00000: file .*_t1ce.nii.gz \(t1c\) is missing.*on_error=skip"
    ):
        BraTS2021(root=brats21).records("train")
    ds = BraTS2021(root=brats21, on_error="skip")
    assert [r.uid for r in ds.records("train")] == ["BraTS2021_00001", "BraTS2021_00002"]
    assert len(ds.skipped) == 1


def test_unreadable_volume_error_names_the_file(tmp_path):
    bad = tmp_path / "x.nii.gz"
    bad.write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"record r1 \(t1\): .*x.nii.gz is not a readable NIfTI volume"):
        load_volume(str(bad), "record r1 (t1)")
    with pytest.raises(DataError, match="does not exist"):
        load_volume(str(tmp_path / "absent.nii.gz"), "record r2")


def test_bad_split_file_is_reported(brats21):
    (brats21 / "splits.json").write_text(json.dumps({"train": ["BraTS2021_99999"]}))
    with pytest.raises(DataError, match="BraTS2021_99999"):
        BraTS2021(root=brats21).records("train")
    assert "BraTS2021_99999" in BraTS2021(root=brats21).check().problems[0]


def test_umdbench_run_reads_a_brats_copy_through_the_cli(tmp_path, capsys):
    """NIfTI files -> data loader -> seg -> sliding-window evaluation, via --data-root (2 steps)."""
    from umdbench.cli import main

    root = tmp_path / "data" / "brats2023"
    for i in range(6):
        make_study(root, f"BraTS-MEN-{i:05d}-000", ("t1c", "t1n", "t2f", "t2w"), "-", 3)
    (root / "splits.json").write_text(
        json.dumps(
            {
                "train": [f"BraTS-MEN-{i:05d}-000" for i in range(4)],
                "val": ["BraTS-MEN-00004-000"],
                "test": ["BraTS-MEN-00005-000"],
            }
        )
    )
    code = main(
        [
            "run",
            "--pretrain",
            "none",
            "--tune",
            "seg",
            "--dataset",
            "brats2023",
            "--data-root",
            str(tmp_path / "data"),
            "--work-dir",
            str(tmp_path / "work"),
            "--cfg-options",
            "model.roi_size=16",
            "tune.0.train.max_iters=2",
            "data.num_workers=0",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "result: none / seg / brats2023" in out and "dice_et=" in out

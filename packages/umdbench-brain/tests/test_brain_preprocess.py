"""The released pre-processing of real scans (RAS, 1 mm, foreground crop) on nibabel fixtures."""

import nibabel as nib
import numpy as np
import pytest

from umdbench.api import DataContext, DataError, Record
from umdbench_brain.brats import BraTS2021
from umdbench_brain.tasks import SegmentationTask
from umdbench_brain.volumes import load_study, released_preprocess

MODS = ["t1", "t1c", "t2", "flair"]
LPS_2MM = np.diag([-2.0, -2.0, 2.0, 1.0])  # axis 0 runs right->left, axis 1 anterior->posterior


def _save(path, data, affine):
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return str(path)


def _study(tmp_path, images, label, affine, preprocess="released"):
    paths = {m: _save(tmp_path / f"{m}.nii.gz", a, affine) for m, a in images.items()}
    seg = _save(tmp_path / "seg.nii.gz", label, affine)
    return Record(uid="s0", image=paths, text="", extra={"label": seg, "preprocess": preprocess})


def test_lps_2mm_volume_comes_out_ras_at_1mm_with_the_expected_shape(tmp_path):
    shape = (10, 12, 14)
    img = np.ones(shape, dtype=np.float32)
    img[0, 0, 0] = 100.0  # the most right, most anterior, most inferior voxel (x = y = 0 is the maximum)
    label = np.zeros(shape, dtype=np.uint8)
    label[0, 0, 0] = 4
    channels = {"t1": (img, LPS_2MM), "t2": (img * 2, LPS_2MM)}
    out, lab, affine = released_preprocess(channels, (label, LPS_2MM), "study s0")
    assert nib.aff2axcodes(affine) == ("R", "A", "S")
    assert np.allclose(np.abs(np.diag(affine)[:3]), 1.0)
    # voxel centres span (n - 1) x 2 mm; at 1 mm that is 2n - 1 voxels (nothing is cropped: no zeros)
    expected = tuple(2 * n - 1 for n in shape)
    assert out["t1"].shape == expected and lab.shape == expected and out["t1"].dtype == np.float32
    # after RAS reordering the marker sits at the right (last index) and anterior (last index) end
    peak = np.unravel_index(np.argmax(out["t1"]), expected)
    assert peak == (expected[0] - 1, expected[1] - 1, 0)
    assert np.allclose(out["t2"], out["t1"] * 2)
    assert lab.dtype == np.uint8 and set(np.unique(lab)) == {0, 4}
    assert lab[expected[0] - 1, expected[1] - 1, 0] == 4


def test_foreground_crop_removes_the_zero_margin_over_all_modalities(tmp_path):
    shape = (30, 30, 30)
    a = np.zeros(shape, dtype=np.float32)
    a[8:20, 10:22, 12:18] = 5.0
    b = np.zeros(shape, dtype=np.float32)
    b[6:8, 15, 15] = 3.0  # another modality extends the foreground along axis 0 only
    label = np.zeros(shape, dtype=np.uint8)
    label[10:14, 12:16, 13:16] = 2
    rec = _study(tmp_path, {"t1": a, "flair": b}, label, np.eye(4))
    volume, present, lab = load_study(rec, MODS, with_label=True)
    # union box [6,20) x [10,22) x [12,18) plus the released margin of 1 voxel on each side
    assert volume.shape == (4, 16, 14, 8) and lab.shape == (16, 14, 8)
    assert present.tolist() == [1, 0, 0, 1]
    assert volume[1].max() == 0 and volume[2].max() == 0  # absent modalities stay zero
    assert volume[0, 0].max() == 0 and volume[0, -1].max() == 0  # the margin voxels are background
    assert int((lab == 2).sum()) == 4 * 4 * 3  # the label is cropped with the images, not lost
    assert 0.0 <= volume.min() and volume.max() <= 1.0


def test_labels_stay_in_their_code_set_after_resampling(tmp_path):
    rng = np.random.default_rng(0)
    shape = (12, 12, 12)
    img = rng.uniform(1, 100, shape).astype(np.float32)
    label = rng.choice(np.array([0, 1, 2, 3], dtype=np.uint8), size=shape)  # BraTS 2023 coding
    rec = _study(tmp_path, {m: img for m in MODS}, label, np.diag([1.5, -1.5, 1.5, 1.0]))
    rec.extra["label_map"] = {3: 4}
    _, _, lab = load_study(rec, MODS, with_label=True)
    assert set(np.unique(lab)) <= {0, 1, 2, 4} and 4 in np.unique(lab)
    assert lab.shape == (18, 18, 18)  # ceil((12 - 1) x 1.5 mm) + 1 voxels at 1 mm


def test_none_keeps_the_stored_grid_and_is_a_recorded_deviation(tmp_path):
    img = np.zeros((6, 8, 10), dtype=np.float32)
    img[2:4, 2:4, 2:4] = 1.0
    rec = _study(tmp_path, {"t1": img}, np.zeros((6, 8, 10), np.uint8), LPS_2MM, preprocess="none")
    volume, _, lab = load_study(rec, MODS, with_label=True)
    assert volume.shape == (4, 6, 8, 10) and lab.shape == (6, 8, 10)
    assert BraTS2021(root=tmp_path).deviations() == []
    dev = BraTS2021(root=tmp_path, preprocess="none").deviations()
    assert len(dev) == 1 and "1 mm" in dev[0]
    with pytest.raises(ValueError, match="preprocess='resample'"):
        BraTS2021(root=tmp_path, preprocess="resample")


def test_modalities_off_one_grid_are_a_data_error_naming_the_study(tmp_path):
    img = np.ones((6, 6, 6), dtype=np.float32)
    rec = _study(tmp_path, {"t1": img, "t2": img}, np.zeros((6, 6, 6), np.uint8), np.eye(4))
    _save(tmp_path / "t2.nii.gz", img, np.diag([2.0, 2.0, 2.0, 1.0]))
    with pytest.raises(DataError, match="record s0: the affine of t2 differs"):
        load_study(rec, MODS, with_label=False)


def test_brats_records_are_preprocessed_by_the_segmentation_task(tmp_path):
    case = tmp_path / "brats2021" / "BraTS2021_00000"
    case.mkdir(parents=True)
    img = np.zeros((20, 20, 20), dtype=np.float32)
    img[5:15, 5:15, 5:15] = np.linspace(1, 50, 1000, dtype=np.float32).reshape(10, 10, 10)
    for suffix in ("flair", "t1", "t1ce", "t2"):
        _save(case / f"BraTS2021_00000_{suffix}.nii.gz", img, LPS_2MM)
    label = np.zeros((20, 20, 20), dtype=np.uint8)
    label[8:12, 8:12, 8:12] = 4
    _save(case / "BraTS2021_00000_seg.nii.gz", label, LPS_2MM)
    (tmp_path / "brats2021" / "splits.json").write_text('{"train": ["BraTS2021_00000"], "val": [], "test": []}')
    rec = BraTS2021(root=tmp_path / "brats2021").records("train")[0]
    assert rec.extra["preprocess"] == "released"
    ctx = DataContext(
        model_cfg={"modalities": MODS, "roi_size": 8},
        stage_cfg={},
        tokenizer=None,
        label_names=["WT", "TC", "ET"],
        seed=0,
        cache_dir=None,
    )
    item = SegmentationTask().build_dataset([rec], ctx, training=False)[0]
    # 10 foreground voxels at 2 mm -> 19 at 1 mm, + a bilinear half-value voxel each side (+ at most one
    # voxel of interpolation round-off, ~1e-14, which is nonzero too), + the margin of 1: 23 or 24 of 39
    assert tuple(item["volume_shape"].tolist()) == tuple(item["volume"].shape[1:])
    assert all(23 <= s <= 24 for s in item["volume"].shape[1:]), item["volume"].shape
    et = item["seg"][2].numpy()
    assert et.sum() > 0 and set(np.unique(et)) <= {0, 1}

"""Hostile BraTS copies (24^3 studies in the BraTS 2021 layout, written with nibabel): every broken
study stops `umdbench run` before any stage trains with one paragraph naming the study and the
file (exit 2), or with ``on_error=skip`` is left out and counted in the row; ``umdbench data check``
reports the same; nothing in the data folder changes. The fingerprint covers file contents, so a
label recoded in a same-size file (its mtime set back) changes the cell key.

Each test points ``UMDBENCH_CACHE_DIR`` (the content cache) at its own tmp folder.
"""

import gzip
import hashlib
import json
import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from umdbench.api import DataError
from umdbench.cli import main
from umdbench.results.store import ResultsStore
from umdbench_brain import volcheck
from umdbench_brain.brats import BraTS2021

SIZE = 24
MODS = ("flair", "t1", "t1ce", "t2")
TRAIN = [f"BraTS2021_{i:05d}" for i in range(4)]
VAL = ["BraTS2021_00004"]
TEST = ["BraTS2021_00005", "BraTS2021_00006"]
FAST = [
    "model.roi_size=16",
    "tune.0.train.max_iters=2",
    "tune.0.train.batch_size=2",
    "data.num_workers=0",
    "data.eval_batch_size=2",
]


@pytest.fixture(autouse=True)
def _content_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UMDBENCH_CACHE_DIR", str(tmp_path / "content-cache"))


def save(path: Path, data: np.ndarray, affine=None) -> None:
    """A .nii.gz at gzip level 0: its size depends on the voxel count alone, so a recoded file
    keeps its size (the hostile case of a same-size rewrite)."""
    img = nib.Nifti1Image(data, np.eye(4) if affine is None else affine)
    raw = img.to_bytes()
    path.write_bytes(gzip.compress(raw, compresslevel=0, mtime=0))


def label(enhancing=4) -> np.ndarray:
    lab = np.zeros((SIZE,) * 3, dtype=np.uint8)
    lab[4:20, 4:20, 4:20] = 2
    lab[8:16, 8:16, 8:16] = enhancing
    lab[10:14, 10:14, 10:14] = 1
    return lab


def study(root: Path, case: str, seed: int) -> Path:
    folder = root / case
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for mod in MODS:
        save(folder / f"{case}_{mod}.nii.gz", rng.uniform(1, 500, (SIZE,) * 3).astype(np.float32))
    save(folder / f"{case}_seg.nii.gz", label())
    return folder


def make_copy(data_root: Path, seed: int = 0, splits=None) -> Path:
    root = data_root / "brats2021"
    for n, case in enumerate(TRAIN + VAL + TEST):
        study(root, case, seed * 100 + n)
    (root / "splits.json").write_text(json.dumps(splits or {"train": TRAIN, "val": VAL, "test": TEST}))
    return root


def f(root: Path, case: str, role: str) -> Path:
    return root / case / f"{case}_{role}.nii.gz"


def tree_state(root: Path) -> dict:
    """Every path under the data folder with its bytes' hash and mtime: "nothing changed"."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[str(p)] = ("link", os.readlink(p))
        elif p.is_file():
            out[str(p)] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
    return out


def run_args(data_root: Path, work: Path, *extra: str) -> list[str]:
    return [
        "run",
        "--pretrain",
        "none",
        "--tune",
        "seg",
        "--dataset",
        "brats2021",
        "--data-root",
        str(data_root),
        "--work-dir",
        str(work),
        "--cfg-options",
        *FAST,
        *extra,
    ]


def one_paragraph(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("umdbench: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def nothing_trained(work: Path) -> bool:
    return not list(work.glob("stages/*/train")) and not list(work.glob("stages/*/artifact.json"))


def rows(work: Path) -> list[dict]:
    return ResultsStore(work / "results.sqlite").rows()


# -- each hostile copy: (what to break, text the paragraph must hold) ------------------------------
def _recode_train_labels(root):
    lab = label()
    lab[0, 0, 0], lab[0, 0, 1] = 3, 7
    save(f(root, TRAIN[1], "seg"), lab)
    return TRAIN[1], "seg", "has codes [3, 7] outside brats2021's [0, 1, 2, 4]"


def _nan_voxels(root):
    data = np.asanyarray(nib.load(str(f(root, TEST[0], "t2"))).dataobj).copy()
    data[3, 3, 3], data[4, 4, 4] = np.nan, np.inf
    save(f(root, TEST[0], "t2"), data)
    return TEST[0], "t2", "holds 2 NaN or infinite voxel(s)"


def _blank_modality(root):
    save(f(root, TRAIN[0], "t1ce"), np.zeros((SIZE,) * 3, np.float32))
    return TRAIN[0], "t1ce", "(t1c) is blank (every voxel is 0)"


def _all_modalities_blank(root):
    for mod in MODS:
        save(f(root, TEST[1], mod), np.zeros((SIZE,) * 3, np.float32))
    return TEST[1], "flair", "(flair) is blank"


def _wrong_affine(root):
    shifted = np.eye(4)
    shifted[:3, 3] = [2.0, 0, 0]
    data = np.asanyarray(nib.load(str(f(root, TEST[0], "t1"))).dataobj)
    save(f(root, TEST[0], "t1"), data, shifted)
    return TEST[0], "t1", "has an affine that differs from BraTS2021_00005_flair.nii.gz's by up to 2"


def _shape_mismatch(root):
    save(f(root, TEST[0], "t2"), np.ones((SIZE, SIZE, SIZE - 2), np.float32))
    return TEST[0], "t2", "has shape (24, 24, 22) but BraTS2021_00005_flair.nii.gz has (24, 24, 24)"


def _truncated(root):
    path = f(root, TEST[1], "t1")
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:20000]))
    return TEST[1], "t1", "(t1) cannot be decoded: it is truncated or corrupt"


def _not_gzip(root):
    path = f(root, TEST[0], "flair")
    path.write_bytes(gzip.decompress(path.read_bytes()))  # a plain .nii named .nii.gz
    return TEST[0], "flair", "(flair) is not a readable NIfTI volume"


def _four_d(root):
    save(f(root, TEST[0], "t1"), np.ones((SIZE, SIZE, SIZE, 2), np.float32))
    return TEST[0], "t1", "(t1) is 4-D (shape (24, 24, 24, 2))"


def _huge_header(root):
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.float32)
    hdr.set_data_shape((2000, 2000, 2000))
    hdr["vox_offset"] = 352
    f(root, TEST[0], "t2").write_bytes(gzip.compress(hdr.binaryblock + b"\0" * 4 + os.urandom(7000)))
    return TEST[0], "t2", "declares shape (2000, 2000, 2000) = 8,000,000,000 voxels, over the limit"


def _dangling_symlink(root):
    path = f(root, TEST[0], "seg")
    path.unlink()
    path.symlink_to(root / "nowhere" / "seg.nii.gz")
    return TEST[0], "seg", "(label) is a symlink to"


CASES = {
    "train label codes 3 and 7": _recode_train_labels,
    "NaN and inf voxels": _nan_voxels,
    "blank modality": _blank_modality,
    "all four modalities zero": _all_modalities_blank,
    "wrong affine": _wrong_affine,
    "shape mismatch": _shape_mismatch,
    "truncated": _truncated,
    "not gzip": _not_gzip,
    "4-D volume": _four_d,
    "2000^3 header in 7 KB": _huge_header,
    "dangling symlink": _dangling_symlink,
}


@pytest.mark.serial  # bounds its own wall time
@pytest.mark.parametrize("case", list(CASES))
def test_a_broken_study_stops_run_before_training_and_data_check_names_it(tmp_path, capsys, case):
    data_root = tmp_path / "data"
    root = make_copy(data_root)
    study_name, role, expected = CASES[case](root)
    before = tree_state(root)
    started = time.time()
    assert main(run_args(data_root, tmp_path / "work")) == 2
    err = one_paragraph(capsys)
    assert f"study {study_name}: file {f(root, study_name, role)}" in err, err
    assert expected in err and "fix:" in err and "dataset.on_error=skip" in err and "Nothing was trained" in err, err
    assert time.time() - started < 60
    assert nothing_trained(tmp_path / "work")
    # data check lists the same problem (exit 1), without a traceback
    assert main(["data", "check", "brats2021", "--data-root", str(data_root)]) == 1
    out = capsys.readouterr().out
    assert f"study {study_name}: file {f(root, study_name, role)}" in out and expected in out, out
    assert tree_state(root) == before


def test_a_huge_header_is_refused_before_any_voxel_is_decoded(tmp_path, monkeypatch):
    root = make_copy(tmp_path / "data")
    _huge_header(root)
    decoded = []
    real = volcheck.content_facts
    monkeypatch.setattr(volcheck, "content_facts", lambda path, lab: decoded.append(Path(path).name) or real(path, lab))
    problems = BraTS2021(root=root).check(deep=True).problems
    assert len(problems) == 1 and "over the limit of 268,435,456" in problems[0]
    assert f(root, TEST[0], "t2").name not in decoded and decoded  # the others were decoded


@pytest.mark.parametrize(
    "table, expected",
    [
        (
            {"train": TRAIN, "val": VAL, "test": TEST + [TRAIN[0]]},
            "lists study BraTS2021_00000 under both 'train' and 'test'",
        ),
        ({"train": TRAIN + [TRAIN[2]], "val": VAL, "test": TEST}, "lists study BraTS2021_00002 twice under 'train'"),
        ({"train": TRAIN, "validation": VAL, "test": TEST}, "names split 'validation', which brats2021 does not have"),
    ],
)
def test_splits_json_conflicts_are_refused(tmp_path, capsys, table, expected):
    data_root = tmp_path / "data"
    make_copy(data_root, splits=table)
    assert main(run_args(data_root, tmp_path / "work")) == 2
    err = one_paragraph(capsys)
    assert expected in err and "splits.json" in err, err
    assert nothing_trained(tmp_path / "work")
    assert main(["data", "check", "brats2021", "--data-root", str(data_root)]) == 1
    assert expected in capsys.readouterr().out


def test_on_error_skip_leaves_a_truncated_test_study_out_and_counts_it(tmp_path, capsys):
    data_root = tmp_path / "data"
    root = make_copy(data_root)
    _truncated(root)
    _blank_modality(root)  # and a training study
    assert main(run_args(data_root, tmp_path / "work", "dataset.on_error=skip")) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    assert "skipped records" in out and "brats2021 2" in out
    (row,) = rows(tmp_path / "work")
    assert row["skipped"] == {"brats2021": 2}


def test_recoded_test_labels_in_a_same_size_file_change_the_fingerprint_and_the_cell_key(tmp_path, capsys):
    data_root = tmp_path / "data"
    root = make_copy(data_root)
    work = tmp_path / "work"
    assert main(run_args(data_root, work)) == 0
    first = capsys.readouterr().out
    fp = BraTS2021(root=root).fingerprint()
    path = f(root, TEST[0], "seg")
    st = path.stat()
    recoded = label()
    recoded[recoded == 4] = 1  # enhancing tumour relabelled as core: valid codes, other numbers
    save(path, recoded)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the mtime set back
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    assert BraTS2021(root=root).fingerprint() != fp
    assert main(run_args(data_root, work)) == 0
    second = capsys.readouterr().out
    assert "already in the store" not in second and "result:" in second
    a, b = rows(work)
    assert a["cell_key"] != b["cell_key"] and a["data_fingerprint"] != b["data_fingerprint"]
    assert "result:" in first


def test_another_copy_in_the_same_folder_changes_the_fingerprint_and_a_moved_copy_keeps_it(tmp_path):
    one = make_copy(tmp_path / "a", seed=1)
    other = make_copy(tmp_path / "b", seed=2)
    fp_one = BraTS2021(root=one).fingerprint()
    assert BraTS2021(root=other).fingerprint() != fp_one
    # the other copy (same names, same sizes) put in the first one's place
    one.rename(tmp_path / "a" / "old")
    other.rename(one)
    assert BraTS2021(root=one).fingerprint() != fp_one
    assert BraTS2021(root=tmp_path / "a" / "old").fingerprint() == fp_one  # moved: same content, same fingerprint


def test_the_content_is_hashed_and_decoded_once_per_file_version(tmp_path, monkeypatch):
    from umdbench.data import content

    root = make_copy(tmp_path / "data")
    hashed = []
    real_hash = content.hash_file
    monkeypatch.setattr(content, "hash_file", lambda p: hashed.append(p) or real_hash(p))
    decoded = []
    real_decode = volcheck.content_facts
    monkeypatch.setattr(volcheck, "content_facts", lambda p, lab: decoded.append(p) or real_decode(p, lab))
    BraTS2021(root=root).fingerprint()
    BraTS2021(root=root).records("test")
    n_files, n_decoded = 7 * 5, len(TEST) * 4 + 1  # every study has the same label bytes: decoded once
    assert len(hashed) == n_files and len(decoded) == n_decoded
    content._CACHES.clear()  # as a new process: from the cache file
    BraTS2021(root=root).fingerprint()
    BraTS2021(root=root).records("test")
    assert len(hashed) == n_files and len(decoded) == n_decoded
    save(f(root, TEST[0], "t1"), np.ones((SIZE,) * 3, np.float32))  # one file changes: it alone is read again
    BraTS2021(root=root).records("test")
    assert len(hashed) == n_files + 1 and len(decoded) == n_decoded + 1


def test_records_and_check_agree_and_skip_counts(tmp_path):
    root = make_copy(tmp_path / "data")
    _nan_voxels(root)
    with pytest.raises(DataError, match=r"study BraTS2021_00005: file .*_t2.nii.gz \(t2\) holds 2 NaN"):
        BraTS2021(root=root).records("test")
    ds = BraTS2021(root=root, on_error="skip")
    assert [r.uid for r in ds.records("test")] == [TEST[1]] and len(ds.skipped) == 1
    assert BraTS2021(root=root).check(deep=False).ok  # headers are fine; only the decode sees NaN


def test_a_sweep_over_a_copy_with_an_empty_test_split_reports_it_without_a_traceback(tmp_path, capsys):
    data_root = tmp_path / "data"
    make_copy(data_root, splits={"train": TRAIN, "val": VAL, "test": []})
    suite = tmp_path / "brats_suite.py"
    suite.write_text(
        "from umdbench.hookspecs import hookimpl\n"
        "@hookimpl\n"
        "def umdbench_register(registries):\n"
        "    registries.suite.register('brats-hostile', {'title': 'x', 'datasets': ['brats2021'],\n"
        "        'metrics': ['dice'], 'rows': [{'name': 'scratch', 'pretrain': 'none', 'tune': 'seg'}]})\n"
    )
    code = main(
        [
            "sweep",
            "--plugin-path",
            str(suite),
            "--suite",
            "brats-hostile",
            "--data-root",
            str(data_root),
            "--work-dir",
            str(tmp_path / "work"),
            "--cfg-options",
            *FAST,
        ]
    )
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err and "evaluation failed" not in out.out
    assert "split 'test' has no studies" in out.out and "data unavailable" in out.out
    assert code in (0, 2) and nothing_trained(tmp_path / "work")
    assert main(["data", "check", "brats2021", "--data-root", str(data_root)]) == 1
    assert "has no records in split 'test'" in capsys.readouterr().out

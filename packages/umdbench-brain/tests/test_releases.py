"""Readers of BrainMVP's downstream datasets in their release layouts (BraTS 2023 PED/MET, ISLES22,
MRBrainS13, UPENN-GBM, BraTS 2018 HGG/LGG, ABIDE I) on tiny NIfTI fixtures written with nibabel:
each is listed, passes `data check` on its fixture, is refused in one paragraph naming the study
and the file when broken, and runs one tiny `seg` or `cls` cell through the CLI."""

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from umdbench.api import DataError
from umdbench.cli import main

SIZE = 8
CLS_SHAPE = (16, 16, 16)  # classification reads whole volumes: at least the encoder's total stride
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


def save(path: Path, data: np.ndarray, affine=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def image(rng, shape=(SIZE,) * 3) -> np.ndarray:
    return rng.uniform(1, 500, shape).astype(np.float32)


def brats_label(enhancing: int) -> np.ndarray:
    lab = np.zeros((SIZE,) * 3, dtype=np.uint8)
    lab[1:7, 1:7, 1:7] = 2
    lab[2:6, 2:6, 2:6] = enhancing
    lab[3:5, 3:5, 3:5] = 1
    return lab


def splits(root: Path, cases: list[str]) -> None:
    (root / "splits.json").write_text(json.dumps({"train": cases[:-2], "val": [cases[-2]], "test": [cases[-1]]}))


# -- fixtures in each release's layout: (data root) -> (dataset folder, {study: {role: path}}) ------------
def make_brats23(data_root: Path, kind: str, n: int = 5):
    root = data_root / f"ASNR-MICCAI-BraTS2023-{kind}-Challenge-TrainingData"
    studies = {}
    for i in range(n):
        case = f"BraTS-{kind}-{i:05d}-000"
        rng = np.random.default_rng(i)
        files = {
            m: save(root / case / f"{case}-{s}.nii.gz", image(rng))
            for s, m in (("t1c", "t1c"), ("t1n", "t1"), ("t2f", "flair"), ("t2w", "t2"))
        }
        files["seg"] = save(root / case / f"{case}-seg.nii.gz", brats_label(3))
        studies[case] = files
    splits(root, list(studies))
    return root, studies


def make_isles(data_root: Path, n: int = 5):
    root = data_root / "ISLES-2022"
    studies = {}
    for i in range(1, n + 1):
        case = f"sub-strokecase{i:04d}"
        stem = f"{case}_ses-0001"
        rng = np.random.default_rng(i)
        ses = root / case / "ses-0001"
        files = {
            "dwi": save(ses / "dwi" / f"{stem}_dwi.nii.gz", image(rng)),
            "adc": save(ses / "dwi" / f"{stem}_adc.nii.gz", image(rng)),
        }
        # as released: the FLAIR on its own grid, a JSON sidecar beside each volume
        save(ses / "anat" / f"{stem}_FLAIR.nii.gz", image(rng, (SIZE + 2, SIZE + 2, SIZE - 2)))
        (ses / "dwi" / f"{stem}_dwi.json").write_text("{}")
        mask = np.zeros((SIZE,) * 3, dtype=np.uint8)
        mask[2:5, 3:6, 2:6] = 1
        files["seg"] = save(root / "derivatives" / case / "ses-0001" / f"{stem}_msk.nii.gz", mask)
        studies[case] = files
    splits(root, list(studies))
    return root, studies


def make_mrbrains(data_root: Path, n: int = 5):
    root = data_root / "mrbrains13"
    studies = {}
    for i in range(1, n + 1):
        folder = root / "TrainingData" / str(i)
        rng = np.random.default_rng(i)
        files = {
            m: save(folder / f"{stem}.nii", image(rng))
            for m, stem in (("t1", "T1"), ("t1ir", "T1_IR"), ("flair", "T2_FLAIR"))
        }
        save(folder / "T1_1mm.nii", image(rng, (SIZE + 4,) * 3))  # not read: another grid
        lab = np.zeros((SIZE,) * 3, dtype=np.uint8)
        lab[1:7, 1:7, 1:4] = 1
        lab[1:7, 1:7, 4:7] = 3
        lab[3:5, 3:5, 3:5] = 6
        lab[0, 0, :] = 8
        files["seg"] = save(folder / "LabelsForTraining.nii", lab)
        studies[str(i)] = files
    splits(root, list(studies))
    return root, studies


def make_upenn(data_root: Path, n: int = 5):
    root = data_root / "UPENN-GBM"
    base = root / "NIfTI-files"
    studies = {}
    for i in range(1, n + 2):
        case = f"UPENN-GBM-{i:05d}_11"
        rng = np.random.default_rng(i)
        files = {
            m: save(base / "images_structural" / case / f"{case}_{s}.nii.gz", image(rng))
            for s, m in (("T1", "t1"), ("T1GD", "t1c"), ("T2", "t2"), ("FLAIR", "flair"))
        }
        if i > n:
            continue  # a subject without a revised label: not a study of the manual labels
        files["seg"] = save(base / "images_segm" / f"{case}_segm.nii.gz", brats_label(4))
        studies[case] = files
    splits(root, list(studies))
    return root, studies


def make_brats18(data_root: Path, n: int = 6):
    root = data_root / "MICCAI_BraTS_2018_Data_Training"
    studies = {}
    for i in range(n):
        grade = "HGG" if i % 2 else "LGG"
        case = f"Brats18_{'TCIA' if i % 2 else 'CBICA'}_{i:03d}_1"
        rng = np.random.default_rng(i)
        files = {
            m: save(root / grade / case / f"{case}_{s}.nii.gz", image(rng, CLS_SHAPE))
            for s, m in (("t1", "t1"), ("t1ce", "t1c"), ("t2", "t2"), ("flair", "flair"))
        }
        save(root / grade / case / f"{case}_seg.nii.gz", np.zeros(CLS_SHAPE, np.uint8))  # not read
        studies[case] = files
    names = sorted(studies)
    (root / "splits.json").write_text(json.dumps({"train": names[:4], "val": names[4:5], "test": names[5:]}))
    return root, studies


def make_abide(data_root: Path, n: int = 6):
    root = data_root / "ABIDE"
    rows = ["SITE_ID,SUB_ID,FILE_ID,DX_GROUP,AGE_AT_SCAN"]
    studies = {}
    for i in range(n + 1):
        sub = 50003 + i
        site = "PITT" if i < 3 else "NYU"
        rows.append(f"{site},{sub},{site.title()}_{sub:07d},{1 + i % 2},12.5")
        if i == n:
            continue  # a subject of the table whose site this copy lacks
        rng = np.random.default_rng(i)
        files = {
            "t1": save(
                root / site.title() / f"{sub:07d}" / "session_1" / "anat_1" / "mprage.nii.gz", image(rng, CLS_SHAPE)
            )
        }
        studies[f"{sub:07d}"] = files
    (root / "Phenotypic_V1_0b_preprocessed1.csv").write_text("\n".join(rows) + "\n")
    names = sorted(studies)
    (root / "splits.json").write_text(json.dumps({"train": names[:4], "val": names[4:5], "test": names[5:]}))
    return root, studies


RELEASES = {
    # name: (fixture, tuning strategy, extra --cfg-options, metric keys of the result line)
    "brats2023-ped": (lambda d: make_brats23(d, "PED"), "seg", [], ("dice_wt", "dice_tc", "dice_et")),
    "brats2023-met": (lambda d: make_brats23(d, "MET"), "seg", [], ("dice_wt", "dice_et")),
    "isles22": (make_isles, "seg", ['model.modalities=["t1","t1c","t2","flair","dwi","adc"]'], ("dice_infarct",)),
    "mrbrains13": (
        make_mrbrains,
        "seg",
        ['model.modalities=["t1","t1c","t2","flair","t1ir"]'],
        ("dice_gm", "dice_wm", "dice_csf"),
    ),
    "upenn-gbm": (make_upenn, "seg", [], ("dice_wt",)),
    "brats2018-grade": (make_brats18, "cls", [], ("accuracy", "auc")),
    "abide": (make_abide, "cls", [], ("accuracy", "auc")),
}


def one_paragraph(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("umdbench: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_every_release_reader_is_listed_with_its_task_modalities_and_labels(capsys):
    from umdbench.plugin import get_registries

    assert main(["list", "--kind", "dataset"]) == 0
    out = capsys.readouterr().out
    reg = get_registries()
    for name in RELEASES:
        assert re.search(rf"^\s*{re.escape(name)}\s", out, re.M), name
        cls = reg.dataset.get(name)
        assert cls.task in ("segmentation", "scan-classification") and cls.modalities and cls.root_subdir
        assert set(cls.modalities) <= {"t1", "t1c", "t2", "flair", "dwi", "adc", "t1ir"}
        if cls.task == "segmentation":
            assert cls.region_codes and all(
                set(c) <= set(cls.label_values) | set(cls.label_remap.values()) for c in cls.region_codes.values()
            )
        else:
            assert cls.classes and cls.encoder == "uniformer3d"


@pytest.mark.parametrize("name", list(RELEASES))
def test_data_check_passes_on_the_release_layout_and_records_follow_it(tmp_path, capsys, name):
    make, *_ = RELEASES[name]
    root, studies = make(tmp_path / "data")
    assert main(["data", "check", name, "--data-root", str(tmp_path / "data")]) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    assert name in out
    from umdbench.plugin import get_registries

    ds = get_registries().dataset.get(name)(root=root)
    recs = {r.uid: r for s in ds.splits for r in ds.records(s)}
    assert set(recs) == set(studies)
    for uid, files in studies.items():
        rec = recs[uid]
        assert rec.image == {m: str(p) for m, p in files.items() if m != "seg"}
        if ds.task == "segmentation":
            assert rec.extra["label"] == str(files["seg"]) and rec.extra["region_codes"]
        else:
            assert rec.label in (0, 1) and rec.extra["class"] == ds.label_names()[rec.label]
    fp = ds.fingerprint()
    next(iter(studies.values()))[next(iter(next(iter(studies.values()))))].write_bytes(b"changed")
    assert type(ds)(root=root).fingerprint() != fp


# one broken file per release: (how to break it, the study, what the paragraph says)
def _missing(studies, role, index=0):
    case = sorted(studies)[index]
    path = studies[case][role]
    path.unlink()
    return case, path, f"({'label' if role == 'seg' else role}) is missing"


def _reshaped(studies, role, index=0):
    case = sorted(studies)[index]
    path = studies[case][role]
    save(path, np.ones((SIZE, SIZE, SIZE + 3), np.float32))
    return case, path, "has shape (8, 8, 11)"


BREAK = {
    "brats2023-ped": lambda s: _missing(s, "t2"),
    "brats2023-met": lambda s: _reshaped(s, "t2"),
    "isles22": lambda s: _missing(s, "seg"),
    "mrbrains13": lambda s: _reshaped(s, "flair"),
    "upenn-gbm": lambda s: _missing(s, "t1c"),
    "brats2018-grade": lambda s: _missing(s, "flair"),
    "abide": lambda s: _missing(s, "t1"),
}


@pytest.mark.parametrize("name", list(RELEASES))
def test_a_broken_fixture_is_one_paragraph_naming_study_and_file(tmp_path, capsys, name):
    make, tune, extra, _ = RELEASES[name]
    data_root = tmp_path / "data"
    root, studies = make(data_root)
    case, path, expected = BREAK[name](studies)
    assert main(["data", "check", name, "--data-root", str(data_root)]) == 1
    out = capsys.readouterr().out
    assert f"study {case}: file {path}" in out and expected in out, out
    work = tmp_path / "work"
    assert (
        main(
            [
                "run",
                "--pretrain",
                "none",
                "--tune",
                tune,
                "--dataset",
                name,
                "--data-root",
                str(data_root),
                "--work-dir",
                str(work),
                "--cfg-options",
                *FAST,
                *extra,
            ]
        )
        == 2
    )
    err = one_paragraph(capsys)
    assert f"study {case}: file {path}" in err and expected in err and "Nothing was trained" in err, err
    assert not list(work.glob("**/weights*"))


@pytest.mark.parametrize("name", list(RELEASES))
def test_one_tiny_cell_runs_on_the_release_fixture(tmp_path, capsys, name):
    make, tune, extra, keys = RELEASES[name]
    make(tmp_path / "data")
    code = main(
        [
            "run",
            "--pretrain",
            "none",
            "--tune",
            tune,
            "--dataset",
            name,
            "--data-root",
            str(tmp_path / "data"),
            "--work-dir",
            str(tmp_path / "work"),
            "--cfg-options",
            *FAST,
            *extra,
        ]
    )
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert code == 0, out
    line = re.search(rf"result: none / {tune} / {re.escape(name)}.*", out).group(0)
    assert all(f"{k}=" in line for k in keys), line


def test_isles22_flair_is_read_only_on_request_and_the_release_grid_is_refused(tmp_path):
    from umdbench_brain.releases import ISLES22

    root, studies = make_isles(tmp_path / "data")
    assert "flair" not in ISLES22(root=root).records("train")[0].image
    assert any("DWI and ADC only" in d for d in ISLES22(root=root).deviations())
    problems = ISLES22(root=root, flair=True).check(deep=False).problems
    assert problems and all("_FLAIR.nii.gz has shape (10, 10, 6) but" in p for p in problems)
    # a BIDS copy without the datatype folders reads alike
    case = sorted(studies)[0]
    for p in (root / case / "ses-0001" / "dwi").glob("*.nii.gz"):
        p.rename(root / case / "ses-0001" / p.name)
    assert ISLES22(root=root).records("train")[0].image["dwi"] == str(
        root / case / "ses-0001" / f"{case}_ses-0001_dwi.nii.gz"
    )


def test_a_study_of_another_2023_release_in_the_ped_folder_is_named(tmp_path):
    from umdbench_brain.brats import BraTS2023PED

    root, studies = make_brats23(tmp_path / "data", "PED")
    gli, _ = make_brats23(tmp_path / "other", "GLI", n=2)
    (gli / "BraTS-GLI-00000-000").rename(root / "BraTS-GLI-00000-000")
    (root / "splits.json").unlink()
    problems = BraTS2023PED(root=root).check(deep=True).problems
    assert (
        len(problems) == 1
        and "study BraTS-GLI-00000-000: folder" in problems[0]
        and "BraTS-PED-00001-000" in problems[0]
    )


def test_abide_table_problems_and_absent_sites(tmp_path):
    from umdbench_brain.releases import ABIDE

    root, studies = make_abide(tmp_path / "data")
    ds = ABIDE(root=root)
    assert [d for d in ds.deviations() if "1 subject(s) of the phenotype table have no scan folder" in d]
    assert {r.uid: r.label for s in ds.splits for r in ds.records(s)} == {
        uid: (1 if (int(uid) - 50003) % 2 == 0 else 0) for uid in studies
    }
    table = root / "Phenotypic_V1_0b_preprocessed1.csv"
    table.write_text(table.read_text().replace(",1,12.5", ",3,12.5", 1))
    with pytest.raises(DataError, match=r"Phenotypic_V1_0b_preprocessed1.csv line 2: SUB_ID='50003' DX_GROUP='3'"):
        ABIDE(root=root).records("train")
    assert "line 2" in ABIDE(root=root).check().problems[0]


def test_upenn_labels_option_and_brats18_classes(tmp_path):
    from umdbench_brain.releases import BraTS2018Grade, UPennGBM

    root, studies = make_upenn(tmp_path / "data")
    assert len(UPennGBM(root=root).cases()) == len(studies)  # the unlabelled subject is no study
    with pytest.raises(DataError, match="automated_segm does not exist"):
        UPennGBM(root=root, labels="automated").cases()
    root18, _ = make_brats18(tmp_path / "data")
    ds = BraTS2018Grade(root=root18)
    assert ds.label_names() == ["LGG", "HGG"]
    assert {r.uid: r.label for r in ds.records("train")} == {
        c.name: int(c.parent.name == "HGG") for c in ds.cases() if c.name in {r.uid for r in ds.records("train")}
    }

"""Dataset plugins on the real data in ../shared/datasets (skipped when it is absent)."""

from __future__ import annotations

import collections
import os
from pathlib import Path

import pytest

from umdbench.api import DataError
from umdbench_plugins.datasets.corpus import Corpus
from umdbench_plugins.datasets.medicat import Medicat
from umdbench_plugins.datasets.slake import Slake
from umdbench_plugins.datasets.vqa_med_2019 import VQAMed2019
from umdbench_plugins.datasets.vqa_rad import VQARad

SHARED = Path(os.environ.get("UMDBENCH_SHARED_DATASETS") or Path(__file__).resolve().parents[4] / "shared" / "datasets")
pytestmark = pytest.mark.realdata


def need(sub: str) -> Path:
    path = SHARED / sub
    if not path.is_dir():
        pytest.skip(
            f"real data {path} not found (shared datasets live at ../shared/datasets; "
            f"set UMDBENCH_SHARED_DATASETS to use another copy)"
        )
    return path


def types(recs):
    return dict(collections.Counter(r.answer_type for r in recs))


def test_vqa_rad_mevf():
    ds = VQARad(need("vqa_rad"))
    train, test, val = ds.records("train"), ds.records("test"), ds.records("val")
    assert (len(train), len(test)) == (3064, 451)
    assert [r.uid for r in val] == [r.uid.replace("/test/", "/val/") for r in test]  # val = testset.json
    assert types(train) == {"closed": 1823, "open": 1241}
    assert types(test) == {"closed": 272, "open": 179}
    assert len(ds.label_names()) == 498  # upstream vqa_label_size
    assert len(VQARad(need("vqa_rad"), vocab="train").label_names()) == 461
    assert all(r.label >= 0 for r in test)
    assert all(r.answer == r.answer.lower() for r in train)
    assert len({r.uid for r in train}) == len(train)
    assert ds.fingerprint() == VQARad(need("vqa_rad")).fingerprint()


def test_vqa_rad_train_vocab_marks_unseen():
    ds = VQARad(need("vqa_rad"), vocab="train")
    unseen = [r for r in ds.records("test") if r.label == -1]
    assert unseen and all(r.answer not in ds.label_names() for r in unseen)


def test_vqa_rad_osf_layout():
    ds = VQARad(need("vqa_rad"), layout="osf")
    assert (len(ds.records("train")), len(ds.records("test"))) == (1797, 451)
    assert len(ds.label_names()) == 498


def test_vqa_rad_check_every_image_readable():
    report = VQARad(need("vqa_rad")).check()
    assert report.ok, report.problems[:5]
    assert report.counts == {"train": 3064, "val": 451, "test": 451}
    assert set(report.checksums) == {"trainset.json", "testset.json"}


def test_slake_english():
    ds = Slake(need("slake"))
    sizes = {s: len(ds.records(s)) for s in ds.splits}
    assert sizes == {"train": 4919, "val": 1053, "test": 1061}
    assert types(ds.records("train")) == {"open": 2976, "closed": 1943}
    assert types(ds.records("test")) == {"open": 645, "closed": 416}
    assert len(ds.label_names()) == 222  # upstream vqa_label_size
    assert len(Slake(need("slake"), vocab="train").label_names()) == 218
    all_lang = Slake(need("slake"), lang="all")
    assert len(all_lang.records("train")) == 9835


def test_slake_check_every_image_readable():
    report = Slake(need("slake")).check()
    assert report.ok, report.problems[:5]


def test_vqa_med_2019_counts_and_missing_images():
    root = need("vqa_med_2019")
    ds = VQAMed2019(root, on_error="skip")
    raw = {s: len(ds.raw_records(s)) for s in ds.splits}
    assert raw == {"train": 9600, "val": 1500, "test": 375}  # C4 Abnormality excluded
    assert len(ds.label_names()) == 79  # upstream vqa_label_size
    kept = {s: len(ds.records(s)) for s in ds.splits}
    # only 1,000 of 3,200 train images and no test images exist in the shared copy
    assert kept == {"train": 3000, "val": 1500, "test": 0}
    assert len(ds.skipped) == 6600 + 375
    assert all("not found" in m for m in ds.skipped)
    assert all(r.answer_type == "open" for r in ds.records("val"))
    with_c4 = VQAMed2019(root, include_abnormality=True, verify_images=False)
    assert {s: len(with_c4.records(s)) for s in with_c4.splits} == {"train": 12792, "val": 2000, "test": 500}


def test_vqa_med_2019_missing_image_raises_by_default():
    ds = VQAMed2019(need("vqa_med_2019"))
    with pytest.raises(DataError, match=r"C1_Modality_train\.txt: record vqa-med-2019/train/modality/\d+: image "):
        ds.records("train")


def test_vqa_med_2019_test_alternatives():
    ds = VQAMed2019(need("vqa_med_2019"), verify_images=False)
    multi = [r for r in ds.records("test") if "alternatives" in r.extra]
    assert len(multi) == 9 and all("#" in r.answer for r in multi)
    first = VQAMed2019(need("vqa_med_2019"), verify_images=False, multi_answer="first")
    assert all("#" not in r.answer for r in first.records("test"))


def test_vqa_med_2019_check_reports_missing_images():
    report = VQAMed2019(need("vqa_med_2019")).check(deep=False)
    assert report.counts == {"train": 9600, "val": 1500, "test": 375}
    missing_train = [p for p in report.problems if p.startswith("train/Train_images/")]
    assert len(missing_train) == 2200 and all("missing" in p and "fix:" in p for p in missing_train)


def test_medicat_sample_real():
    root = need("medicat_sample")
    ds = Medicat(root, val_size=1, test_size=1)
    recs = {s: ds.records(s) for s in ds.splits}
    figures = {r.image for rs in recs.values() for r in rs}
    assert len(figures) == 6  # 6 of the 10 sample figures are radiology
    assert sum(len(v) for v in recs.values()) == 11  # captions + inline references with >= 3 words
    assert all(len(r.text.split()) >= 3 for rs in recs.values() for r in rs)
    assert {r.extra["kind"] for rs in recs.values() for r in rs} == {"caption", "reference"}
    # upstream slicing with fewer figures than 2,000: everything lands in test
    default = Medicat(root)
    assert (len(default.records("train")), len(default.records("val")), len(default.records("test"))) == (0, 0, 11)
    assert default.check().ok


def test_corpus_over_real_datasets():
    need("slake"), need("vqa_med_2019"), need("vqa_rad")
    c = Corpus(SHARED)
    train = c.records("train")
    # 4,919 SLAKE + 3,000 VQA-Med train records with images, minus 39 whose image is a VQA-RAD image
    assert len(train) == 4919 + 3000 - 39
    assert sum("left out to avoid leakage" in m for m in c.skipped) == 39
    assert (len(c.records("val")), len(c.records("test"))) == (1053 + 1500 - 18, 1061)
    assert sum("left out to avoid leakage" in m for m in c.skipped) == 39 + 18
    assert all(r.answer is None and r.text for r in train)
    assert train[0].text == "What modality is used to take this image? MRI"
    rad_images = {os.path.basename(r.image) for s in ("train", "test") for r in VQARad(SHARED / "vqa_rad").records(s)}
    assert not any(os.path.basename(r.image) in rad_images for s in c.splits for r in c.records(s))
    no_excl = Corpus(SHARED, exclude_images_of=[])
    assert len(no_excl.records("train")) == 4919 + 3000


def test_vqa_med_2019_incomplete_copy_falls_back_to_val_and_records_it():
    from umdbench.plan.config import CellSpec, resolve
    from umdbench.plugin import get_registries

    root = need("vqa_med_2019")
    ds = VQAMed2019(root, eval_split_fallback="val", train_missing_images="skip")
    # the shared copy: no test images -> the validation split is evaluated; train keeps what exists
    assert [r.uid for r in ds.records("test")] == [r.uid for r in VQAMed2019(root).records("val")]
    assert len(ds.records("train")) == 3000 and not ds.skipped
    assert len(ds.deviations()) == 2 and "replaced by the validation split (1500 questions" in ds.deviations()[0]
    assert "3000 of 9600 training questions" in ds.deviations()[1]
    assert VQAMed2019(root).deviations() == []  # off by default: such a copy stays "data unavailable"
    # the suites turn both on for this dataset only, and the run's config records the deviations
    cell = CellSpec(
        "none",
        ("direct",),
        "vqa-med-2019",
        data_root=str(SHARED),
        overrides=(("dataset.options.eval_split_fallback", "val"), ("dataset.options.train_missing_images", "skip")),
    )
    devs = resolve(cell, get_registries()).config["deviations"]
    assert sum(d.startswith("vqa-med-2019:") for d in devs) == 2
    from umdbench.plan.suites import get_suite

    grid = {p.dataset: dict(p.overrides) for p in get_suite(get_registries(), "table4").grid()}
    assert grid["vqa-med-2019"]["dataset.options.eval_split_fallback"] == "val"
    assert "dataset.options.eval_split_fallback" not in grid["vqa-rad"]

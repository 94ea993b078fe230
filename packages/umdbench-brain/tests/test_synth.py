"""brainsynth: determinism, nested labels, grades, missing modalities, contrasts that need more
than one modality, disjoint streams, and the dataset plugin's records / check / fingerprint."""

import numpy as np
import pytest

from umdbench_brain.synth import MODALITIES, STREAMS, BrainSynth, BrainSynthCorpus, BrainSynthGrade, make_study
from umdbench_brain.volumes import REGION_CODES, region_masks, scale_percentiles, stack_modalities

CANVAS = 32


@pytest.fixture(scope="module")
def studies():
    return [make_study(0, STREAMS["train"], i, CANVAS, missing_rate=0.25) for i in range(24)]


def test_a_study_is_a_pure_function_of_its_seed():
    a, b = make_study(3, 1, 5, CANVAS), make_study(3, 1, 5, CANVAS)
    assert np.array_equal(a["label"], b["label"]) and a["grade"] == b["grade"]
    assert all(np.array_equal(a["image"][m], b["image"][m]) for m in a["image"])
    c = make_study(3, 1, 6, CANVAS)
    assert not np.array_equal(a["image"]["t2"], c["image"].get("t2", np.zeros(1)))


def test_regions_nest_and_grade_decides_enhancement(studies):
    grades = []
    for s in studies:
        wt, tc, et = region_masks(s["label"], ["WT", "TC", "ET"], "t").astype(bool)
        assert wt.sum() > 50 and tc.sum() > 0  # every study has a tumour
        assert not (tc & ~wt).any() and not (et & ~tc).any()  # ET in TC in WT
        assert set(np.unique(s["label"])) <= {0, 1, 2, 4}
        assert bool(et.any()) == bool(s["grade"])  # LGG: no enhancing tumour (empty ET)
        grades.append(s["grade"])
    assert 0.25 < np.mean(grades) < 0.75


def test_some_studies_miss_exactly_one_modality(studies):
    counts = [len(s["image"]) for s in studies]
    assert set(counts) <= {3, 4} and 1 <= counts.count(3) <= 12
    assert make_study(0, 1, 0, CANVAS, missing_rate=0.0)["image"].keys() == set(MODALITIES)


def test_enhancement_needs_t1c_and_t1(studies):
    """On t1c alone the enhancing rim is no brighter than the brightest normal tissue (vessels,
    white matter at the clip level); the t1c - t1 difference separates them."""
    gaps_t1c, gaps_diff = [], []
    for i, s in enumerate(studies):
        if not s["grade"] or len(s["image"]) < 4:
            continue
        vol, present = stack_modalities(s["image"], MODALITIES, "t")
        vol = scale_percentiles(vol, present)
        t1, t1c = vol[0], vol[1]
        et = s["label"] == 4
        # the brightest t1 voxels outside the tumour (vessels and clipped white matter)
        outside = s["label"] == 0
        vessel = outside & (t1 >= np.percentile(t1[outside], 99.5))
        gaps_t1c.append(np.median(t1c[et]) - np.median(t1c[vessel]))
        gaps_diff.append(np.median((t1c - t1)[et]) - np.median((t1c - t1)[vessel]))
    assert gaps_t1c and np.mean(gaps_t1c) < 0.1  # t1c alone: rim and vessels about as bright
    assert np.mean(gaps_diff) > 0.2  # the t1c - t1 difference marks the rim


def test_flair_tells_necrosis_from_csf(studies):
    """Necrosis and CSF are both dark on t1 and bright on t2; only CSF is dark on flair."""
    checked = 0
    for s in studies:
        necro = s["label"] == 1
        if not s["grade"] or necro.sum() < 5 or len(s["image"]) < 4:
            continue
        vol, present = stack_modalities(s["image"], MODALITIES, "t")
        vol = scale_percentiles(vol, present)
        csf = (s["label"] == 0) & (vol[0] < 0.25) & (vol[2] > 0.7)  # csf-like on t1 and t2
        if csf.sum() < 10:
            continue
        assert np.median(vol[3][necro]) > np.median(vol[3][csf]) + 0.3
        checked += 1
    assert checked >= 3


def test_dataset_plugins_records_check_fingerprint():
    ds = BrainSynth(n_train=3, n_val=1, n_test=2, canvas=CANVAS)
    recs = ds.records("train")
    assert [r.uid for r in recs] == ["brainsynth-train-0000", "brainsynth-train-0001", "brainsynth-train-0002"]
    r = recs[0]
    assert isinstance(r.image, dict) and set(r.image) <= set(MODALITIES)
    assert r.extra["label"].shape == (CANVAS,) * 3 and r.label in (0, 1)
    assert ds.label_names() == list(REGION_CODES)
    rep = ds.check()
    assert rep.ok and rep.counts == {"train": 3, "val": 1, "test": 2}
    assert ds.fingerprint() == BrainSynth(n_train=3, n_val=1, n_test=2, canvas=CANVAS).fingerprint()
    assert ds.fingerprint() != BrainSynth(n_train=3, n_val=1, n_test=2, canvas=CANVAS, seed=1).fingerprint()
    grade = BrainSynthGrade(n_train=3, n_val=1, n_test=2, canvas=CANVAS)
    assert [x.label for x in grade.records("train")] == [x.label for x in recs]
    corpus = BrainSynthCorpus(n_train=2, n_val=1, canvas=CANVAS).records("train")
    assert corpus[0].label is None and not np.array_equal(corpus[0].image["t2"], recs[0].image.get("t2"))
    with pytest.raises(ValueError, match="unknown option"):
        BrainSynth(n_tran=3)
    with pytest.raises(ValueError, match="missing_rate"):
        BrainSynth(missing_rate=2)

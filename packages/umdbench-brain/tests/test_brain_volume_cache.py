"""The disk cache of pre-processed studies (StudyLoader): hits never open NIfTI, bad entries are
rebuilt, changed sources miss, and concurrent writers of one entry leave a whole file."""

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import nibabel as nib
import numpy as np
import pytest

from umdbench.api import DataContext, Record
from umdbench_brain.tasks import SegmentationTask, VolumePretrainTask
from umdbench_brain.volumes import StudyLoader

MODS = ["t1", "t1c", "t2", "flair"]


def _study(folder, uid="s0", seed=0, preprocess="released"):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    affine = np.diag([-1.5, 1.5, 1.5, 1.0])
    image = {}
    for m in ("t1", "t2", "flair"):  # t1c absent
        data = np.zeros((14, 14, 14), dtype=np.float32)
        data[2:12, 3:11, 2:12] = rng.uniform(10, 500, (10, 8, 10))
        path = folder / f"{uid}_{m}.nii.gz"
        nib.save(nib.Nifti1Image(data, affine), str(path))
        image[m] = str(path)
    label = np.zeros((14, 14, 14), dtype=np.uint8)
    label[4:9, 5:9, 4:9] = 2
    label[5:8, 6:8, 5:8] = 3
    seg = folder / f"{uid}_seg.nii.gz"
    nib.save(nib.Nifti1Image(label, affine), str(seg))
    return Record(
        uid=uid, image=image, text="", extra={"label": str(seg), "label_map": {3: 4}, "preprocess": preprocess}
    )


@pytest.fixture
def nib_loads(monkeypatch):
    """Counts nibabel.load calls; ``forbid()`` makes any further one fail the test."""
    state = {"n": 0, "forbidden": False}
    real = nib.load

    def counting(*args, **kwargs):
        if state["forbidden"]:
            raise AssertionError("a NIfTI file was opened although the study is cached")
        state["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(nib, "load", counting)
    state["forbid"] = lambda: state.update(forbidden=True)
    return state


def _entries(cache):
    return sorted((cache / "volumes").rglob("*.npz"))


def test_second_pass_reads_the_cache_and_opens_no_nifti(tmp_path, nib_loads):
    rec = _study(tmp_path / "data")
    loader = StudyLoader(MODS, tmp_path / "cache")
    vol1, present1, lab1 = loader.load(rec, with_label=True)
    assert nib_loads["n"] == 4 and loader.misses == 1 and len(_entries(tmp_path / "cache")) == 1
    nib_loads["forbid"]()
    for _ in range(3):  # later epochs, and a fresh loader (a new run / a data-loader worker)
        for again in (loader, StudyLoader(MODS, tmp_path / "cache")):
            vol, present, lab = again.load(rec, with_label=True)
            assert np.array_equal(vol, vol1) and np.array_equal(present, present1) and np.array_equal(lab, lab1)
    assert loader.hits == 3
    assert vol1.dtype == np.float32 and present1.tolist() == [1, 0, 1, 1] and set(np.unique(lab1)) == {0, 2, 4}
    # a study without a cache gives the same values (file-backed volumes are float16-rounded either way)
    nib_loads["forbidden"] = False
    vol0, _, lab0 = StudyLoader(MODS, None).load(rec, with_label=True)
    assert np.array_equal(vol0, vol1) and np.array_equal(lab0, lab1)
    # pre-training reads the same entry (the label is stored whenever the record has one)
    nib_loads["forbid"]()
    _, _, none = StudyLoader(MODS, tmp_path / "cache").load(rec, with_label=False)
    assert none is None


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "other-study"])
def test_unreadable_or_foreign_entries_are_rebuilt_not_trusted(tmp_path, damage):
    rec = _study(tmp_path / "data")
    other = _study(tmp_path / "data", uid="s1", seed=1)
    cache = tmp_path / "cache"
    loader = StudyLoader(MODS, cache)
    good, _, good_label = loader.load(rec, with_label=True)
    entry = loader.entry_path(loader.key(rec))
    raw = entry.read_bytes()
    if damage == "truncate":
        entry.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        entry.write_bytes(b"\x00" * len(raw))
    elif damage == "empty":
        entry.write_bytes(b"")
    else:  # a whole, valid entry of another study under this key (must not be served)
        loader.load(other, with_label=True)
        entry.write_bytes(loader.entry_path(loader.key(other)).read_bytes())
    fresh = StudyLoader(MODS, cache)
    vol, _, lab = fresh.load(rec, with_label=True)
    assert fresh.rebuilt == 1 and fresh.misses == 1
    assert np.array_equal(vol, good) and np.array_equal(lab, good_label)
    with np.load(entry, allow_pickle=False) as npz:  # rewritten whole
        assert str(npz["key"]) == loader.key(rec)


def test_changed_sources_or_settings_get_a_new_key(tmp_path):
    rec = _study(tmp_path / "data")
    loader = StudyLoader(MODS, tmp_path / "cache")
    key = loader.key(rec)
    before, _, _ = loader.load(rec, with_label=True)
    # rewrite one modality with other contents (size and mtime change)
    path = rec.image["t2"]
    data = np.asanyarray(nib.load(path).dataobj) * 0.5 + 7
    nib.save(nib.Nifti1Image(data.astype(np.float64), nib.load(path).affine), path)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert loader.key(rec) != key
    after, _, _ = loader.load(rec, with_label=True)
    assert loader.misses == 2 and not np.array_equal(after, before)
    none = Record(rec.uid, rec.image, "", extra={**rec.extra, "preprocess": "none"})
    assert loader.key(none) != loader.key(rec)
    assert StudyLoader(["flair", "t2", "t1", "t1c"], tmp_path / "cache").key(rec) != loader.key(rec)
    assert len(_entries(tmp_path / "cache")) == 2


def test_unwritable_cache_folder_does_not_break_loading(tmp_path):
    rec = _study(tmp_path / "data")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "volumes").write_text("a file where the cache folder should be")  # mkdir fails (also as root)
    loader = StudyLoader(MODS, cache)
    vol, _, lab = loader.load(rec, with_label=True)
    assert vol.shape[0] == 4 and lab is not None and loader.misses == 1
    assert np.array_equal(StudyLoader(MODS, None).load(rec, with_label=True)[0], vol)


def test_concurrent_writers_of_one_entry_both_leave_a_valid_file(tmp_path, monkeypatch):
    import umdbench_brain.volumes as volumes

    rec = _study(tmp_path / "data")
    cache = tmp_path / "cache"
    # two loaders that miss the same entry at once, as two data-loader workers do. Threads, not
    # processes: a write is a uniquely named temporary file renamed over the entry, the same for
    # two threads as for two processes, and a spawned process would pay ~8 s of imports for it
    both_write = threading.Barrier(2)
    write = volumes.atomic_write_bytes

    def write_together(path, data):
        both_write.wait(timeout=60)  # each has missed and built the entry: they write it at once
        write(path, data)

    monkeypatch.setattr(volumes, "atomic_write_bytes", write_together)

    def load():
        loader = StudyLoader(MODS, cache)
        vol, _, lab = loader.load(rec, with_label=True)
        return loader.misses, float(vol.sum()), int(lab.sum())

    with ThreadPoolExecutor(2) as pool:
        results = [f.result(timeout=300) for f in [pool.submit(load) for _ in range(2)]]
    assert [r[0] for r in results] == [1, 1]  # both missed, so both wrote the entry
    assert len({r[1:] for r in results}) == 1  # every worker got the same study
    entries = _entries(cache)
    assert len(entries) == 1 and not list((cache / "volumes").rglob("*.tmp"))  # no temporary file left over
    fresh = StudyLoader(MODS, cache)
    vol, _, lab = fresh.load(rec, with_label=True)
    assert fresh.hits == 1 and (float(vol.sum()), int(lab.sum())) == results[0][1:]


def test_task_types_cache_under_the_context_cache_dir(tmp_path, nib_loads):
    recs = [_study(tmp_path / "data", uid=f"s{i}", seed=i) for i in range(2)]
    ctx = DataContext(
        model_cfg={"modalities": MODS, "roi_size": 8},
        stage_cfg={},
        tokenizer=None,
        label_names=["WT", "TC", "ET"],
        seed=0,
        cache_dir=tmp_path / "cache",
    )
    seg = SegmentationTask().build_dataset(recs, ctx, training=True)
    first = [seg[i] for i in range(2)]
    assert len(_entries(tmp_path / "cache")) == 2
    nib_loads["forbid"]()
    second = [seg[i] for i in range(2)]  # epoch 2: new random crops, no NIfTI opened
    assert all(a["volume"].shape == b["volume"].shape == (4, 8, 8, 8) for a, b in zip(first, second))
    pre = VolumePretrainTask().build_dataset(recs, ctx, training=True)
    assert pre[0]["volume"].shape == (4, 8, 8, 8)


def test_a_generated_study_is_scaled_once_and_handed_out_as_copies(monkeypatch):
    from umdbench_brain import volumes

    rng = np.random.default_rng(0)
    record = Record(
        uid="g0",
        image={m: rng.random((8, 8, 8)).astype(np.float32) for m in MODS},
        text="",
        extra={"label": rng.integers(0, 3, (8, 8, 8)).astype(np.uint8)},
    )
    scaled = []
    real = volumes.scale_percentiles
    monkeypatch.setattr(volumes, "scale_percentiles", lambda *a: scaled.append(1) or real(*a))
    loader = StudyLoader(MODS)
    volume, present, label = loader.load(record, with_label=True)
    reference = volumes.load_study(record, MODS, with_label=True)
    volume += 1.0  # a caller changes what it was handed
    label[:] = 0
    again = loader.load(record, with_label=True)
    assert len(scaled) == 2  # the study once by the loader, once for the reference above
    for got, want in zip(again, reference):
        np.testing.assert_array_equal(got, want)
    assert loader.load(record, with_label=False)[2] is None and len(scaled) == 3  # another entry
    assert (loader.hits, loader.misses) == (0, 0)  # the disk cache's counts are for files only

    full = StudyLoader(MODS)
    full.MEMORY_BYTES = 0  # nothing fits: scaled again at every load
    full.load(record, with_label=True), full.load(record, with_label=True)
    assert len(scaled) == 5
